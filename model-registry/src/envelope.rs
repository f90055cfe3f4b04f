//! The signed envelope around every trusted document: `{"signed": {...}, "signatures": [{"keyid", "sig"}]}`.
//!
//! Signatures are checked over the canonical JSON of `signed` exactly as it arrived (kept as a JSON value),
//! never over a re-serialisation of our own types, so a field we do not know cannot slip past a signature;
//! typed parsing with `deny_unknown_fields` happens only after the signatures count.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_protocol::KeyId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::canonical::to_canonical;
use crate::keys::{KeyError, KeyPair, PublicKey};
use crate::root::RoleKeys;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub signed: serde_json::Value,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub keyid: KeyId,
    pub sig: String,
}

/// Why one signature did not count towards a threshold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureProblem {
    #[error("key {0} is not one of this role's keys")]
    NotInRole(KeyId),
    #[error("key {0} is listed by the role but missing from the root's keys")]
    UnknownKey(KeyId),
    #[error("key {0} signed twice; counted once")]
    Duplicate(KeyId),
    #[error("key {keyid}: {problem}")]
    Invalid { keyid: KeyId, problem: KeyError },
}

/// The outcome of counting signatures for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdCount {
    pub valid: Vec<KeyId>,
    pub threshold: u32,
    pub rejected: Vec<SignatureProblem>,
}

impl ThresholdCount {
    pub fn met(&self) -> bool {
        self.valid.len() as u64 >= u64::from(self.threshold)
    }
}

impl Envelope {
    /// An unsigned envelope around `signed`.
    pub fn new<T: Serialize>(signed: &T) -> Result<Self, serde_json::Error> {
        Ok(Self { signed: serde_json::to_value(signed)?, signatures: Vec::new() })
    }

    /// The bytes signatures are made over.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        to_canonical(&self.signed)
    }

    /// Adds `key`'s signature, replacing an earlier one by the same key, so several people can each sign.
    pub fn sign(&mut self, key: &KeyPair) -> Result<(), serde_json::Error> {
        let sig = key.sign_hex(&self.signed_bytes()?);
        self.signatures.retain(|s| s.keyid != key.key_id());
        self.signatures.push(Signature { keyid: key.key_id(), sig });
        Ok(())
    }

    /// Counts the distinct keys of `role` (looked up in `keys`) whose signature over `signed` is valid.
    pub fn count(&self, keys: &BTreeMap<KeyId, PublicKey>, role: &RoleKeys) -> ThresholdCount {
        let mut out = ThresholdCount { valid: Vec::new(), threshold: role.threshold, rejected: Vec::new() };
        let message = match self.signed_bytes() {
            Ok(m) => m,
            // Not canonicalisable (a float somewhere): nothing can have signed it.
            Err(_) => return out,
        };
        let mut seen = BTreeSet::new();
        for sig in &self.signatures {
            if !role.keyids.contains(&sig.keyid) {
                out.rejected.push(SignatureProblem::NotInRole(sig.keyid));
                continue;
            }
            let Some(key) = keys.get(&sig.keyid) else {
                out.rejected.push(SignatureProblem::UnknownKey(sig.keyid));
                continue;
            };
            // Distinct keys by their material, not their ids (a root validates that no key is listed twice;
            // this holds even for one that did not).
            if !seen.insert(key.keyval.public.to_ascii_lowercase()) {
                out.rejected.push(SignatureProblem::Duplicate(sig.keyid));
                continue;
            }
            match key.verifies(&message, &sig.sig) {
                Ok(()) => out.valid.push(sig.keyid),
                Err(problem) => out.rejected.push(SignatureProblem::Invalid { keyid: sig.keyid, problem }),
            }
        }
        out
    }

    /// The `signed` part as a typed document.
    pub fn typed<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.signed)
    }

    /// The `_type` field of `signed`, if it has one.
    pub fn doc_type(&self) -> Option<&str> {
        self.signed.get("_type").and_then(|t| t.as_str())
    }
}
