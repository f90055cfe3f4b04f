//! `root.json`: the keys and thresholds of the three roles, and how a device walks from the root it was
//! provisioned with to the newest one (version N+1 signed by a threshold of version N's root keys and of its
//! own). A key left out of a new root no longer counts for anything: that is revocation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use edgefleet_protocol::KeyId;
use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;

/// The three roles of DESIGN.md's trust model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Offline keys that sign `root.json`.
    Root,
    /// ML engineers' keys that sign release manifests.
    Release,
    /// The control plane's online key that signs desired-state documents.
    Fleet,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Root => "root",
            Role::Release => "release",
            Role::Fleet => "fleet",
        })
    }
}

/// The `_type` of a signed document, so that one kind can never be passed off as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DocType {
    #[serde(rename = "root")]
    Root,
    #[serde(rename = "release")]
    Release,
    #[serde(rename = "desired-state")]
    DesiredState,
}

impl DocType {
    pub fn as_str(self) -> &'static str {
        match self {
            DocType::Root => "root",
            DocType::Release => "release",
            DocType::DesiredState => "desired-state",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    pub keyids: Vec<KeyId>,
    pub threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub root: RoleKeys,
    pub release: RoleKeys,
    pub fleet: RoleKeys,
}

impl Roles {
    pub fn get(&self, role: Role) -> &RoleKeys {
        match role {
            Role::Root => &self.root,
            Role::Release => &self.release,
            Role::Fleet => &self.fleet,
        }
    }

    pub fn get_mut(&mut self, role: Role) -> &mut RoleKeys {
        match role {
            Role::Root => &mut self.root,
            Role::Release => &mut self.release,
            Role::Fleet => &mut self.fleet,
        }
    }
}

/// The signed part of `root.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    #[serde(rename = "_type")]
    pub doc_type: DocType,
    pub spec_version: String,
    pub version: u64,
    pub expires: DateTime<Utc>,
    pub keys: BTreeMap<KeyId, PublicKey>,
    pub roles: Roles,
}

/// Why a root is not well formed, whatever its signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("`_type` is {0:?}, not \"root\"")]
    Type(DocType),
    #[error("spec_version {0:?} is not supported (expected \"1\")")]
    SpecVersion(String),
    #[error("version must be at least 1")]
    Version,
    #[error("key listed under id {listed} has id {actual}")]
    KeyIdMismatch { listed: KeyId, actual: KeyId },
    #[error("role {role} names key {keyid}, which is not in `keys`")]
    MissingKey { role: Role, keyid: KeyId },
    #[error("role {role} has threshold {threshold} but {keys} distinct keys")]
    Threshold { role: Role, threshold: u32, keys: usize },
    #[error("key {keyid}: {problem}")]
    BadKey { keyid: KeyId, problem: crate::keys::KeyError },
    #[error("keys {first} and {second} are the same ed25519 key")]
    DuplicateKey { first: KeyId, second: KeyId },
}

pub const SPEC_VERSION: &str = "1";

impl Root {
    /// A first root (version 1) from the given keys and thresholds.
    pub fn new(expires: DateTime<Utc>, roles: [(Role, Vec<PublicKey>, u32); 3]) -> Result<Self, RootError> {
        let mut keys = BTreeMap::new();
        let empty = RoleKeys { keyids: Vec::new(), threshold: 1 };
        let mut out_roles = Roles { root: empty.clone(), release: empty.clone(), fleet: empty };
        for (role, role_keys, threshold) in roles {
            let slot = out_roles.get_mut(role);
            slot.threshold = threshold;
            for key in role_keys {
                let id = key.key_id();
                if !slot.keyids.contains(&id) {
                    slot.keyids.push(id);
                }
                keys.insert(id, key);
            }
        }
        let root = Self {
            doc_type: DocType::Root,
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires,
            keys,
            roles: out_roles,
        };
        root.validate()?;
        Ok(root)
    }

    /// Checks the structure: key ids match their keys, every role names known keys, thresholds are reachable.
    pub fn validate(&self) -> Result<(), RootError> {
        if self.doc_type != DocType::Root {
            return Err(RootError::Type(self.doc_type));
        }
        if self.spec_version != SPEC_VERSION {
            return Err(RootError::SpecVersion(self.spec_version.clone()));
        }
        if self.version == 0 {
            return Err(RootError::Version);
        }
        // One key, one id: every key in its canonical spelling and no key twice, so a threshold of n always
        // means n different keys.
        let mut material: BTreeMap<[u8; 32], KeyId> = BTreeMap::new();
        for (listed, key) in &self.keys {
            let actual = key.key_id();
            if *listed != actual {
                return Err(RootError::KeyIdMismatch { listed: *listed, actual });
            }
            let bytes =
                key.verifying_key().map_err(|problem| RootError::BadKey { keyid: *listed, problem })?.to_bytes();
            if let Some(first) = material.insert(bytes, *listed) {
                return Err(RootError::DuplicateKey { first, second: *listed });
            }
        }
        for role in [Role::Root, Role::Release, Role::Fleet] {
            let r = self.roles.get(role);
            for keyid in &r.keyids {
                if !self.keys.contains_key(keyid) {
                    return Err(RootError::MissingKey { role, keyid: *keyid });
                }
            }
            let distinct = r.keyids.iter().collect::<BTreeSet<_>>().len();
            if r.threshold == 0 || r.threshold as usize > distinct {
                return Err(RootError::Threshold { role, threshold: r.threshold, keys: distinct });
            }
        }
        Ok(())
    }

    /// The next version: same keys and roles, version + 1, a new expiry. Callers then add, remove (revoke) and
    /// re-threshold keys before it is signed by the old and the new root keys.
    pub fn next_version(&self, expires: DateTime<Utc>) -> Self {
        Self { version: self.version + 1, expires, ..self.clone() }
    }

    /// Adds `key` to `role` (and to `keys`).
    pub fn add_key(&mut self, role: Role, key: PublicKey) {
        let id = key.key_id();
        self.keys.insert(id, key);
        let r = self.roles.get_mut(role);
        if !r.keyids.contains(&id) {
            r.keyids.push(id);
        }
    }

    /// Removes `keyid` from every role and from `keys`: from this root on, its signatures count for nothing.
    pub fn revoke_key(&mut self, keyid: &KeyId) -> bool {
        let mut found = self.keys.remove(keyid).is_some();
        for role in [Role::Root, Role::Release, Role::Fleet] {
            let r = self.roles.get_mut(role);
            let before = r.keyids.len();
            r.keyids.retain(|k| k != keyid);
            found |= r.keyids.len() != before;
        }
        found
    }
}
