//! Wire types shared by `edgefleet-server`, `edgefleet-daemon` and the `edgefleet` CLI: validated identifiers
//! that are parsed once at the edge and passed inward, and the API version.
//!
//! Invariant: this crate does no I/O and knows nothing of tokio, axum, sqlx, ort or files.

pub mod api;
pub mod ids;
pub mod llm_golden;
pub mod rollout;
pub mod telemetry;
pub mod tensor;

pub use ids::{DeviceId, IdError, KeyId, ModelName, ReleaseVersion, Sha256Digest, VariantId};

/// The REST API's version prefix, `/api/v1`.
pub const API_VERSION: &str = "v1";
