//! Size limits enforced while bytes arrive, before anything is parsed or written in full.

use serde::{Deserialize, Serialize};

/// Caps on documents and artifacts. A signed size is always the tighter bound for an artifact; these caps stop
/// unsigned input (an upload, a document not yet verified) from costing unbounded memory, disk or time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// `root.json`: 512 KiB. A root lists a few dozen keys at most.
    pub max_root_bytes: u64,
    /// A release manifest: 1 MiB, enough for hundreds of variants.
    pub max_manifest_bytes: u64,
    /// A desired-state document, which embeds whole manifests: 8 MiB.
    pub max_desired_state_bytes: u64,
    /// A model file, raw (decompressed): 8 GiB.
    pub max_model_bytes: u64,
    /// A golden-vector file: 256 MiB.
    pub max_golden_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_root_bytes: 512 << 10,
            max_manifest_bytes: 1 << 20,
            max_desired_state_bytes: 8 << 20,
            max_model_bytes: 8 << 30,
            max_golden_bytes: 256 << 20,
        }
    }
}
