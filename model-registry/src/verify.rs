//! The one place trust decisions are made. A device calls [`Verifier::desired_state`] with its trusted root, its
//! last-seen state and the clock; the server and the CLI call [`Verifier::release`]; a root update walks
//! [`update_root`]. Each answers a verified value or a [`Refusal`] that names the defence that fired.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use edgefleet_protocol::{DeviceId, IdError, KeyId, ModelName, ReleaseVersion, VariantId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::artifact::ArtifactError;
use crate::envelope::{Envelope, ThresholdCount};
use crate::limits::Limits;
use crate::manifest::{DesiredState, ReleaseManifest};
use crate::root::{DocType, Role, Root};

/// The defences of DESIGN.md's trust table, plus plain malformed input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Defence {
    /// A document not signed by a threshold of the right role's keys.
    ArbitraryModel,
    /// A release below the security floor, or an older root.
    Rollback,
    /// An expired document, or a desired state that is not newer than the last one accepted.
    Freeze,
    /// More bytes than were signed for.
    EndlessData,
    /// Bytes, documents or names that belong elsewhere: digests, types, devices, models, variants.
    MixAndMatch,
    /// A root update not signed by a threshold of both the old and the new root keys.
    KeyCompromise,
    /// A name that is not a safe identifier.
    PathTricks,
    /// Input that is not a well-formed document at all.
    Malformed,
}

impl fmt::Display for Defence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Defence::ArbitraryModel => "arbitrary-model",
            Defence::Rollback => "rollback",
            Defence::Freeze => "freeze",
            Defence::EndlessData => "endless-data",
            Defence::MixAndMatch => "mix-and-match",
            Defence::KeyCompromise => "key-compromise",
            Defence::PathTricks => "path-tricks",
            Defence::Malformed => "malformed",
        })
    }
}

/// Why a document or artifact was refused. Every variant says which defence fired ([`Refusal::defence`]).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{document} is larger than the limit of {limit} bytes")]
    TooLarge { document: &'static str, limit: u64 },
    #[error("{document} is not a valid document: {message}")]
    Malformed { document: &'static str, message: String },
    #[error("{document} has `_type` {found:?} where {expected:?} was expected")]
    WrongType { document: &'static str, expected: &'static str, found: String },
    #[error("{document} field `{field}`: {source}")]
    InvalidName { document: &'static str, field: String, source: IdError },
    #[error("{document} is signed by {valid} valid {role} key(s) of the trusted root; {threshold} needed{}",
        rejected_text(.rejected))]
    Threshold { document: &'static str, role: Role, valid: usize, threshold: u32, rejected: Vec<String> },
    #[error("root version {found} cannot follow the trusted version {trusted}; only {} can", .trusted + 1)]
    RootVersion { trusted: u64, found: u64 },
    #[error("{document} expired at {expires} (now {now})")]
    Expired { document: &'static str, expires: DateTime<Utc>, now: DateTime<Utc> },
    #[error("desired state sequence {sequence} is not above the last accepted {last_accepted}")]
    Replayed { sequence: u64, last_accepted: u64 },
    #[error(
        "desired state sequence {sequence} jumps more than {MAX_SEQUENCE_JUMP} past the last accepted \
         {last_accepted}: taken, it would leave no sequence for the real server"
    )]
    SequenceJump { sequence: u64, last_accepted: u64 },
    #[error("release {version} of {model} is below the security floor {floor} this device has seen")]
    BelowFloor { model: ModelName, version: ReleaseVersion, floor: ReleaseVersion },
    #[error("desired state is for device {found}, not {expected}")]
    WrongDevice { expected: DeviceId, found: DeviceId },
    #[error("desired state assigns model {assigned} but its release manifest is for {manifest}")]
    ModelMismatch { assigned: ModelName, manifest: ModelName },
    #[error("release {version} of {model} has no variant {variant}")]
    UnknownVariant { model: ModelName, version: ReleaseVersion, variant: VariantId },
    #[error("desired state names model {0} twice")]
    DuplicateModel(ModelName),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

fn rejected_text(rejected: &[String]) -> String {
    if rejected.is_empty() { String::new() } else { format!(" (not counted: {})", rejected.join("; ")) }
}

impl Refusal {
    pub fn defence(&self) -> Defence {
        match self {
            Refusal::TooLarge { .. } => Defence::EndlessData,
            Refusal::Malformed { .. } | Refusal::DuplicateModel(_) => Defence::Malformed,
            Refusal::WrongType { .. }
            | Refusal::WrongDevice { .. }
            | Refusal::ModelMismatch { .. }
            | Refusal::UnknownVariant { .. } => Defence::MixAndMatch,
            Refusal::InvalidName { .. } => Defence::PathTricks,
            Refusal::Threshold { role: Role::Root, .. } => Defence::KeyCompromise,
            Refusal::Threshold { .. } => Defence::ArbitraryModel,
            Refusal::RootVersion { trusted, found } if found <= trusted => Defence::Rollback,
            Refusal::RootVersion { .. } => Defence::KeyCompromise,
            Refusal::Expired { .. } | Refusal::Replayed { .. } | Refusal::SequenceJump { .. } => Defence::Freeze,
            Refusal::BelowFloor { .. } => Defence::Rollback,
            Refusal::Artifact(e) => e.defence(),
        }
    }
}

/// The most a desired-state sequence may move past the last accepted one. A server adds one per document (a
/// few dozen a day at most); a compromised one that could send `u64::MAX` would leave the real one no sequence
/// a device would take again. 2^32 is centuries of documents, and leaves the sequence space for ever.
pub const MAX_SEQUENCE_JUMP: u64 = 1 << 32;

/// What a device remembers between documents, persisted by the device after each accepted one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastSeen {
    /// The sequence of the last desired-state document accepted.
    #[serde(default)]
    pub desired_sequence: Option<u64>,
    /// Per model, the highest `security_floor` seen in any accepted release.
    #[serde(default)]
    pub floors: BTreeMap<ModelName, ReleaseVersion>,
}

impl LastSeen {
    /// Remembers an accepted desired state: its sequence, and the floors of its releases.
    pub fn record(&mut self, accepted: &VerifiedDesiredState) {
        self.desired_sequence = Some(accepted.state.sequence);
        for release in &accepted.releases {
            self.record_release(&release.manifest);
        }
    }

    pub fn record_release(&mut self, manifest: &ReleaseManifest) {
        self.record_floor(&manifest.model, manifest.security_floor);
    }

    /// Raises `model`'s floor to `floor` (a floor never falls).
    pub fn record_floor(&mut self, model: &ModelName, floor: ReleaseVersion) {
        let at = self.floors.entry(model.clone()).or_insert(floor);
        *at = (*at).max(floor);
    }
}

/// A release whose signatures met the `release` threshold of the trusted root.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedRelease {
    pub manifest: ReleaseManifest,
    pub envelope: Envelope,
    pub signed_by: Vec<KeyId>,
}

/// A desired state signed by the fleet key, fresh, newer than the last, for this device, and whose every
/// release verified.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedDesiredState {
    pub state: DesiredState,
    /// One per entry of `state.models`, in the same order.
    pub releases: Vec<VerifiedRelease>,
}

/// Verification against one trusted root, one last-seen state and one moment.
#[derive(Debug, Clone, Copy)]
pub struct Verifier<'a> {
    pub root: &'a Root,
    pub last_seen: &'a LastSeen,
    pub now: DateTime<Utc>,
    pub limits: &'a Limits,
}

impl<'a> Verifier<'a> {
    pub fn new(root: &'a Root, last_seen: &'a LastSeen, now: DateTime<Utc>, limits: &'a Limits) -> Self {
        Self { root, last_seen, now, limits }
    }

    fn root_fresh(&self) -> Result<(), Refusal> {
        if self.root.expires <= self.now {
            return Err(Refusal::Expired { document: "trusted root", expires: self.root.expires, now: self.now });
        }
        Ok(())
    }

    /// Verifies release manifest bytes: size, signatures (a threshold of `release` keys), names, structure and
    /// the device's security floor.
    pub fn release(&self, bytes: &[u8]) -> Result<VerifiedRelease, Refusal> {
        let envelope = parse_envelope("release manifest", bytes, self.limits.max_manifest_bytes)?;
        self.release_envelope(envelope)
    }

    pub fn release_envelope(&self, envelope: Envelope) -> Result<VerifiedRelease, Refusal> {
        const DOC: &str = "release manifest";
        self.root_fresh()?;
        check_type(DOC, &envelope, DocType::Release)?;
        let count = envelope.count(&self.root.keys, &self.root.roles.release);
        check_threshold(DOC, Role::Release, &count)?;
        check_names(DOC, &envelope.signed)?;
        let manifest: ReleaseManifest = typed(DOC, &envelope)?;
        manifest.validate().map_err(|e| Refusal::Malformed { document: DOC, message: e.to_string() })?;
        if let Some(floor) = self.last_seen.floors.get(&manifest.model)
            && manifest.version < *floor
        {
            return Err(Refusal::BelowFloor { model: manifest.model, version: manifest.version, floor: *floor });
        }
        Ok(VerifiedRelease { manifest, envelope, signed_by: count.valid })
    }

    /// Verifies a desired-state document for `device`: fleet signatures, freshness, sequence, then every
    /// release inside it and that each assigned variant exists in its release.
    pub fn desired_state(&self, bytes: &[u8], device: &DeviceId) -> Result<VerifiedDesiredState, Refusal> {
        const DOC: &str = "desired state";
        let envelope = parse_envelope(DOC, bytes, self.limits.max_desired_state_bytes)?;
        self.root_fresh()?;
        check_type(DOC, &envelope, DocType::DesiredState)?;
        check_threshold(DOC, Role::Fleet, &envelope.count(&self.root.keys, &self.root.roles.fleet))?;
        check_names(DOC, &envelope.signed)?;
        let state: DesiredState = typed(DOC, &envelope)?;
        if &state.device != device {
            return Err(Refusal::WrongDevice { expected: device.clone(), found: state.device });
        }
        if state.expires <= self.now {
            return Err(Refusal::Expired { document: DOC, expires: state.expires, now: self.now });
        }
        if let Some(last) = self.last_seen.desired_sequence
            && state.sequence <= last
        {
            return Err(Refusal::Replayed { sequence: state.sequence, last_accepted: last });
        }
        let last = self.last_seen.desired_sequence.unwrap_or(0);
        if state.sequence - last > MAX_SEQUENCE_JUMP {
            return Err(Refusal::SequenceJump { sequence: state.sequence, last_accepted: last });
        }
        let mut models = BTreeSet::new();
        let mut releases = Vec::with_capacity(state.models.len());
        for assignment in &state.models {
            if !models.insert(&assignment.model) {
                return Err(Refusal::DuplicateModel(assignment.model.clone()));
            }
            let release = self.release_envelope(assignment.release.clone())?;
            let m = &release.manifest;
            if m.model != assignment.model {
                return Err(Refusal::ModelMismatch { assigned: assignment.model.clone(), manifest: m.model.clone() });
            }
            for v in std::iter::once(&assignment.variant).chain(&assignment.measure) {
                if m.variant(v).is_none() {
                    return Err(Refusal::UnknownVariant {
                        model: m.model.clone(),
                        version: m.version,
                        variant: v.clone(),
                    });
                }
            }
            if assignment.measure.len() > m.variants.len() {
                return Err(Refusal::Malformed {
                    document: DOC,
                    message: format!(
                        "{} names {} variants to measure; its release has {}",
                        m.model,
                        assignment.measure.len(),
                        m.variants.len()
                    ),
                });
            }
            releases.push(release);
        }
        Ok(VerifiedDesiredState { state, releases })
    }
}

/// One step of root rotation: `next` must be version `trusted.version + 1`, well formed, and signed by a
/// threshold of `trusted`'s root keys and of its own. Expiry is checked by the caller on the last root of a
/// chain ([`update_root_chain`]), as TUF does, so an old intermediate root does not block a walk forward.
pub fn update_root(trusted: &Root, next: &[u8], limits: &Limits) -> Result<Root, Refusal> {
    const DOC: &str = "root";
    let envelope = parse_envelope(DOC, next, limits.max_root_bytes)?;
    check_type(DOC, &envelope, DocType::Root)?;
    let root: Root = typed(DOC, &envelope)?;
    // The version first, so that an old root replayed is named a rollback rather than a signature failure.
    if root.version != trusted.version + 1 {
        return Err(Refusal::RootVersion { trusted: trusted.version, found: root.version });
    }
    check_threshold(DOC, Role::Root, &envelope.count(&trusted.keys, &trusted.roles.root))?;
    root.validate().map_err(|e| Refusal::Malformed { document: DOC, message: e.to_string() })?;
    check_threshold(DOC, Role::Root, &envelope.count(&root.keys, &root.roles.root))?;
    Ok(root)
}

/// Walks from `trusted` through each root of `chain` in order, then checks the newest is not expired.
pub fn update_root_chain(
    trusted: &Root,
    chain: &[impl AsRef<[u8]>],
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<Root, Refusal> {
    let mut current = trusted.clone();
    for next in chain {
        current = update_root(&current, next.as_ref(), limits)?;
    }
    if current.expires <= now {
        return Err(Refusal::Expired { document: "root", expires: current.expires, now });
    }
    Ok(current)
}

/// Checks a root as provisioned (the first a device trusts): well formed and signed by a threshold of its own
/// root keys. Whether to trust it at all is the provisioning step's decision, not this function's.
pub fn self_signed_root(bytes: &[u8], limits: &Limits) -> Result<Root, Refusal> {
    const DOC: &str = "root";
    let envelope = parse_envelope(DOC, bytes, limits.max_root_bytes)?;
    check_type(DOC, &envelope, DocType::Root)?;
    let root: Root = typed(DOC, &envelope)?;
    root.validate().map_err(|e| Refusal::Malformed { document: DOC, message: e.to_string() })?;
    check_threshold(DOC, Role::Root, &envelope.count(&root.keys, &root.roles.root))?;
    Ok(root)
}

// === helpers ===

/// Parses an envelope, refusing it before parsing if it is over `limit` bytes.
pub fn parse_envelope(document: &'static str, bytes: &[u8], limit: u64) -> Result<Envelope, Refusal> {
    if bytes.len() as u64 > limit {
        return Err(Refusal::TooLarge { document, limit });
    }
    serde_json::from_slice(bytes).map_err(|e| Refusal::Malformed { document, message: e.to_string() })
}

fn check_type(document: &'static str, envelope: &Envelope, expected: DocType) -> Result<(), Refusal> {
    match envelope.doc_type() {
        Some(t) if t == expected.as_str() => Ok(()),
        other => Err(Refusal::WrongType {
            document,
            expected: expected.as_str(),
            found: other.unwrap_or("(none)").to_owned(),
        }),
    }
}

fn check_threshold(document: &'static str, role: Role, count: &ThresholdCount) -> Result<(), Refusal> {
    if count.met() {
        return Ok(());
    }
    Err(Refusal::Threshold {
        document,
        role,
        valid: count.valid.len(),
        threshold: count.threshold,
        rejected: count.rejected.iter().map(ToString::to_string).collect(),
    })
}

fn typed<T: DeserializeOwned>(document: &'static str, envelope: &Envelope) -> Result<T, Refusal> {
    envelope.typed().map_err(|e| Refusal::Malformed { document, message: e.to_string() })
}

/// Names that may reach a path (`model`, variant ids, `device`) are checked on their own before typed parsing,
/// so that a bad name is refused as a path trick rather than as generic malformed JSON.
fn check_names(document: &'static str, signed: &serde_json::Value) -> Result<(), Refusal> {
    fn check<T: std::str::FromStr<Err = IdError>>(
        document: &'static str,
        field: String,
        v: Option<&serde_json::Value>,
    ) -> Result<(), Refusal> {
        match v.and_then(|v| v.as_str()) {
            Some(s) => s.parse::<T>().map(drop).map_err(|source| Refusal::InvalidName { document, field, source }),
            None => Ok(()),
        }
    }
    check::<ModelName>(document, "model".into(), signed.get("model"))?;
    check::<DeviceId>(document, "device".into(), signed.get("device"))?;
    let variants = signed.get("variants").and_then(|v| v.as_array()).map(Vec::as_slice).unwrap_or_default();
    for (i, v) in variants.iter().enumerate() {
        check::<VariantId>(document, format!("variants[{i}].id"), v.get("id"))?;
    }
    let models = signed.get("models").and_then(|v| v.as_array()).map(Vec::as_slice).unwrap_or_default();
    for (i, m) in models.iter().enumerate() {
        check::<ModelName>(document, format!("models[{i}].model"), m.get("model"))?;
        check::<VariantId>(document, format!("models[{i}].variant"), m.get("variant"))?;
        let measure = m.get("measure").and_then(|v| v.as_array()).map(Vec::as_slice).unwrap_or_default();
        for (j, v) in measure.iter().enumerate() {
            check::<VariantId>(document, format!("models[{i}].measure[{j}]"), Some(v))?;
        }
    }
    Ok(())
}
