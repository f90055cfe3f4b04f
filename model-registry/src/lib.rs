//! `model-registry`: what a release *is* and how to trust it. Keys and roles, root rotation, release manifests,
//! desired-state documents, the one verification entry point ([`Verifier`]), streaming zstd with digests and
//! caps, golden vectors, and the [`BlobStore`] trait.
//!
//! Invariant: this crate knows nothing of devices' hardware, rollouts, HTTP, SQL or ONNX Runtime. It decides
//! whether bytes can be trusted; others decide what to do with them.

pub mod artifact;
pub mod blob;
pub mod canonical;
pub mod envelope;
pub mod fsutil;
pub mod golden;
pub mod keys;
pub mod limits;
pub mod manifest;
pub mod root;
pub mod routing;
pub mod verify;

pub use artifact::{ArtifactError, ArtifactRef, StreamCheck, compress, decompress_verified};
pub use blob::{BlobError, BlobStore, ByteRange, FsBlobStore, MemBlobStore, PutCheck};
pub use edgefleet_protocol::{DeviceId, IdError, KeyId, ModelName, ReleaseVersion, Sha256Digest, VariantId};
pub use envelope::{Envelope, Signature};
pub use golden::{GoldenReport, GoldenVectors, HostTensor, Tolerance};
pub use keys::{KeyPair, PublicKey};
pub use limits::Limits;
pub use manifest::{
    DesiredState, ElementType, LlmSpec, ModelAssignment, ModelFormat, Precision, ReleaseManifest, Requirements,
    TensorSpec, Variant,
};
pub use root::{DocType, Role, Root};
pub use verify::{
    Defence, LastSeen, Refusal, VerifiedDesiredState, VerifiedRelease, Verifier, update_root, update_root_chain,
};
