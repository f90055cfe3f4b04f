//! Files are never overwritten in place: write a temporary file in the same directory, fsync it, rename it over
//! the target, fsync the directory. A crash at any point leaves either the old file or the new one, whole.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why an atomic write failed; names the target file.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Writes `path` atomically with whatever `fill` writes. On error nothing is left behind: the temporary file is
/// removed and any previous `path` is untouched.
pub fn write_atomic<E>(path: &Path, fill: impl FnOnce(&mut File) -> Result<(), E>) -> Result<(), E>
where
    E: From<WriteError>,
{
    let err = |source| WriteError { path: path.to_owned(), source };
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(err)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut().flush().and_then(|()| tmp.as_file().sync_all()).map_err(err)?;
    // Temporary files are created 0600; the documents written here are not secrets (private keys are written
    // by `KeyPair::write_private`, never through this function).
    #[cfg(unix)]
    tmp.as_file().set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    sync_dir(dir).map_err(err)?;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic(path, |f| f.write_all(bytes).map_err(|source| WriteError { path: path.to_owned(), source }))
}

/// Flushes a directory's entries (a rename) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Reads a file of at most `limit` bytes, refusing larger ones before reading them.
pub fn read_capped(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let len = fs::metadata(path)?.len();
    if len > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{len} bytes is over the limit of {limit}")));
    }
    fs::read(path)
}
