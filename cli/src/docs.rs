//! Reading and writing the JSON documents the CLI works on, with errors that name the file, and never a
//! half-written file (temp, fsync, rename).

use std::path::Path;

use anyhow::{Context, bail};
use model_registry::fsutil::{read_capped, write_file_atomic};
use model_registry::{Envelope, PublicKey, Root};
use serde::Serialize;

/// Reads a signed envelope from `path`, at most `limit` bytes.
pub fn read_envelope(path: &Path, limit: u64) -> anyhow::Result<Envelope> {
    let bytes = read_capped(path, limit).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not a signed edgefleet document", path.display()))
}

/// Reads a root.json without judging its signatures (`trust show` and `trust sign` report those).
pub fn read_root(path: &Path) -> anyhow::Result<(Envelope, Root)> {
    let env = read_envelope(path, model_registry::Limits::default().max_root_bytes)?;
    let root: Root = env.typed().with_context(|| format!("{}: not a valid root", path.display()))?;
    root.validate().with_context(|| format!("{}: not a valid root", path.display()))?;
    Ok((env, root))
}

fn pretty<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes `value` as JSON to a new file `path`, refusing to overwrite.
pub fn write_new<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if path.exists() {
        bail!("{}: already exists; refusing to overwrite", path.display());
    }
    write_file_atomic(path, &pretty(value)?)?;
    Ok(())
}

/// Replaces `path` with `value` as JSON, atomically.
pub fn replace<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    write_file_atomic(path, &pretty(value)?)?;
    Ok(())
}

/// Reads a public key from a public key file, or the public half of a private key file.
pub fn read_any_public(path: &Path) -> anyhow::Result<PublicKey> {
    match model_registry::keys::read_public(path) {
        Ok(k) => Ok(k),
        Err(public_err) => match model_registry::KeyPair::read_private(path) {
            Ok(pair) => Ok(pair.public().clone()),
            Err(_) => Err(public_err.into()),
        },
    }
}
