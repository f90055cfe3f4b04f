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

/// Writes `path` atomically with whatever `fill` writes, readable by all (mode 0644): documents, not secrets.
/// On error nothing is left behind: the temporary file is removed and any previous `path` is untouched.
pub fn write_atomic<E>(path: &Path, fill: impl FnOnce(&mut File) -> Result<(), E>) -> Result<(), E>
where
    E: From<WriteError>,
{
    write_atomic_mode(path, 0o644, fill)
}

/// [`write_atomic`] with the final file's unix mode. The temporary file is created 0600 and holds every byte
/// before it is given `mode` and renamed into place, so a secret (`mode` 0600) is never readable by others,
/// not while it is written and not after a crash at any point.
pub fn write_atomic_mode<E>(path: &Path, mode: u32, fill: impl FnOnce(&mut File) -> Result<(), E>) -> Result<(), E>
where
    E: From<WriteError>,
{
    let err = |source| WriteError { path: path.to_owned(), source };
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(err)?;
    #[cfg(unix)]
    tmp.as_file().set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(err)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut().flush().and_then(|()| tmp.as_file().sync_all()).map_err(err)?;
    #[cfg(unix)]
    tmp.as_file().set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(err)?;
    #[cfg(not(unix))]
    let _ = mode;
    tmp.persist(path).map_err(|e| err(e.error))?;
    sync_dir(dir).map_err(err)?;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic(path, |f| f.write_all(bytes).map_err(|source| WriteError { path: path.to_owned(), source }))
}

/// Writes a secret (a private key, a token) to `path` atomically with mode 0600 from its first byte on.
pub fn write_secret_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_mode(path, 0o600, |f| {
        f.write_all(bytes).map_err(|source| WriteError { path: path.to_owned(), source })
    })
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

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn a_secret_is_0600_while_written_and_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("device.key");
        // While its bytes are written, the file that will become the secret is readable by its owner only.
        write_atomic_mode(&path, 0o600, |f| {
            assert_eq!(f.metadata().expect("metadata").permissions().mode() & 0o777, 0o600);
            f.write_all(b"secret").map_err(|source| WriteError { path: path.clone(), source })
        })
        .expect("write");
        assert_eq!(mode(&path), 0o600);
        // Replacing a secret keeps it 0600; a crash mid-write (the fill fails) leaves the old one, whole.
        write_secret_atomic(&path, b"secret 2").expect("rewrite");
        assert_eq!((mode(&path), fs::read(&path).expect("read")), (0o600, b"secret 2".to_vec()));
        let failed: Result<(), WriteError> = write_atomic_mode(&path, 0o600, |_| {
            Err(WriteError { path: path.clone(), source: io::Error::other("crash") })
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&path).expect("read"), b"secret 2");
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1, "no temporary file left behind");
        // Documents stay readable by all.
        let doc = dir.path().join("state.json");
        write_file_atomic(&doc, b"{}").expect("doc");
        assert_eq!(mode(&doc), 0o644);
    }
}
