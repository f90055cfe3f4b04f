//! Content-addressed blob storage. Blobs are immutable and named by their SHA-256; a put streams, checks the
//! digest and size as bytes arrive, and makes the blob visible only once it is whole and verified.
//!
//! [`FsBlobStore`] keeps blobs under `<root>/sha256/<first two hex>/<hex>` with atomic writes;
//! [`MemBlobStore`] keeps them in memory for tests. The control plane's S3-compatible store (through
//! `object_store`) implements the same trait with [`PutCheck`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use edgefleet_protocol::Sha256Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::artifact::{ArtifactError, ArtifactRef, Measure, StreamCheck};

pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// A byte range `start..end` (end exclusive); `end: None` means to the end of the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: Option<u64>,
}

/// A read of (part of) a blob.
pub struct BlobRead {
    /// The whole blob's size.
    pub total: u64,
    /// The first byte this read returns.
    pub start: u64,
    /// How many bytes it returns.
    pub len: u64,
    pub reader: BlobReader,
}

impl fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobRead({}..{} of {})", self.start, self.start + self.len, self.total)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is not in the store")]
    NotFound(Sha256Digest),
    #[error("range {start}..{end} is outside blob of {total} bytes")]
    Range { start: u64, end: u64, total: u64 },
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A remote store (S3) failed or could not be reached.
    #[error("object store: {0}")]
    Remote(String),
}

#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Stores `src`. With `expected`, the stream must be exactly that blob (cut off past its size, refused on
    /// a digest mismatch); without, it is measured and capped at `limit` bytes. Answers what was stored.
    async fn put(&self, src: BlobReader, expected: Option<ArtifactRef>, limit: u64) -> Result<ArtifactRef, BlobError>;

    /// Reads a blob, or a range of it.
    async fn get_range(&self, digest: &Sha256Digest, range: Option<ByteRange>) -> Result<BlobRead, BlobError>;

    /// The blob's size, if the store has it.
    async fn has(&self, digest: &Sha256Digest) -> Result<Option<u64>, BlobError>;

    /// Removes a blob; answers whether it was there.
    async fn delete(&self, digest: &Sha256Digest) -> Result<bool, BlobError>;

    /// A URL from which a client may fetch the blob itself for `ttl` (a presigned object-store URL), where the
    /// store can hand one out.
    async fn presign(&self, _digest: &Sha256Digest, _ttl: std::time::Duration) -> Result<Option<String>, BlobError> {
        Ok(None)
    }

    /// Whether the store answers (for `/readyz`).
    async fn health(&self) -> Result<(), BlobError> {
        Ok(())
    }
}

/// Resolves a range against a blob's size.
fn resolve(range: Option<ByteRange>, total: u64) -> Result<(u64, u64), BlobError> {
    let Some(r) = range else { return Ok((0, total)) };
    let end = r.end.unwrap_or(total);
    if r.start > end || end > total {
        return Err(BlobError::Range { start: r.start, end, total });
    }
    Ok((r.start, end - r.start))
}

/// The check a put runs over its bytes: against the signed reference when there is one, else measured and capped.
#[derive(Debug)]
pub enum PutCheck {
    Signed(StreamCheck, ArtifactRef),
    Unsigned(Measure),
}

impl PutCheck {
    pub fn new(expected: Option<ArtifactRef>, limit: u64) -> Self {
        match expected {
            Some(e) => Self::Signed(StreamCheck::new("blob", e), e),
            None => Self::Unsigned(Measure::new("blob", limit)),
        }
    }

    /// Checks the next chunk, before it is written anywhere.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        match self {
            Self::Signed(c, _) => c.update(chunk),
            Self::Unsigned(m) => m.update(chunk),
        }
    }

    /// The blob the stream was, once it ended.
    pub fn finish(self) -> Result<ArtifactRef, ArtifactError> {
        match self {
            Self::Signed(c, e) => c.finish().map(|()| e),
            Self::Unsigned(m) => Ok(m.finish()),
        }
    }
}

/// Copies `src` into `sink`, checking every chunk before it is written.
async fn pump(
    mut src: BlobReader,
    sink: &mut (dyn AsyncWrite + Unpin + Send),
    expected: Option<ArtifactRef>,
    limit: u64,
    sink_path: &Path,
) -> Result<ArtifactRef, BlobError> {
    let mut check = PutCheck::new(expected, limit);
    let mut buf = vec![0u8; 128 << 10];
    let io_err = |source| BlobError::Io { path: sink_path.to_owned(), source };
    loop {
        let n = src.read(&mut buf).await.map_err(|source| ArtifactError::Read { what: "blob upload", source })?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n])?;
        sink.write_all(&buf[..n]).await.map_err(io_err)?;
    }
    sink.flush().await.map_err(io_err)?;
    Ok(check.finish()?)
}

// === FsBlobStore ===

#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// A store under `root`, created if missing. Temporary files of interrupted puts are removed.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        let tmp = root.join("tmp");
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| BlobError::Io { path, source }
        };
        if tokio::fs::try_exists(&tmp).await.map_err(err(&tmp))? {
            tokio::fs::remove_dir_all(&tmp).await.map_err(err(&tmp))?;
        }
        tokio::fs::create_dir_all(&tmp).await.map_err(err(&tmp))?;
        tokio::fs::create_dir_all(root.join("sha256")).await.map_err(err(&root))?;
        Ok(Self { root })
    }

    /// Where a blob lives. The digest is a validated type, so this never escapes the root.
    pub fn path_of(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
        move |source| BlobError::Io { path: path.to_owned(), source }
    }
}

async fn sync_dir(dir: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || crate::fsutil::sync_dir(&dir)).await.map_err(io::Error::other)?
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, src: BlobReader, expected: Option<ArtifactRef>, limit: u64) -> Result<ArtifactRef, BlobError> {
        let mut name = [0u8; 16];
        getrandom::fill(&mut name)
            .map_err(|e| BlobError::Io { path: self.root.clone(), source: io::Error::other(e.to_string()) })?;
        let tmp = self.root.join("tmp").join(hex::encode(name));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(Self::io(&tmp))?;
        let result = async {
            let stored = pump(src, &mut file, expected, limit, &tmp).await?;
            file.sync_all().await.map_err(Self::io(&tmp))?;
            drop(file);
            let dest = self.path_of(&stored.sha256);
            let dir = dest.parent().map(Path::to_owned).unwrap_or_else(|| self.root.clone());
            tokio::fs::create_dir_all(&dir).await.map_err(Self::io(&dir))?;
            tokio::fs::rename(&tmp, &dest).await.map_err(Self::io(&dest))?;
            sync_dir(dir.clone()).await.map_err(Self::io(&dir))?;
            Ok(stored)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn get_range(&self, digest: &Sha256Digest, range: Option<ByteRange>) -> Result<BlobRead, BlobError> {
        let path = self.path_of(digest);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobError::NotFound(*digest)),
            Err(e) => return Err(BlobError::Io { path, source: e }),
        };
        let total = file.metadata().await.map_err(Self::io(&path))?.len();
        let (start, len) = resolve(range, total)?;
        file.seek(io::SeekFrom::Start(start)).await.map_err(Self::io(&path))?;
        Ok(BlobRead { total, start, len, reader: Box::pin(file.take(len)) })
    }

    async fn has(&self, digest: &Sha256Digest) -> Result<Option<u64>, BlobError> {
        let path = self.path_of(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::Io { path, source: e }),
        }
    }

    async fn delete(&self, digest: &Sha256Digest) -> Result<bool, BlobError> {
        let path = self.path_of(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BlobError::Io { path, source: e }),
        }
    }

    async fn health(&self) -> Result<(), BlobError> {
        let dir = self.root.join("sha256");
        tokio::fs::read_dir(&dir).await.map(drop).map_err(Self::io(&dir))
    }
}

// === MemBlobStore ===

/// Blobs in memory, for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct MemBlobStore {
    blobs: Arc<RwLock<HashMap<Sha256Digest, Arc<Vec<u8>>>>>,
}

impl MemBlobStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, digest: &Sha256Digest) -> Option<Arc<Vec<u8>>> {
        self.blobs.read().unwrap_or_else(|p| p.into_inner()).get(digest).cloned()
    }
}

#[async_trait]
impl BlobStore for MemBlobStore {
    async fn put(&self, src: BlobReader, expected: Option<ArtifactRef>, limit: u64) -> Result<ArtifactRef, BlobError> {
        let mut data = Vec::new();
        let stored = pump(src, &mut data, expected, limit, Path::new("memory")).await?;
        self.blobs.write().unwrap_or_else(|p| p.into_inner()).insert(stored.sha256, Arc::new(data));
        Ok(stored)
    }

    async fn get_range(&self, digest: &Sha256Digest, range: Option<ByteRange>) -> Result<BlobRead, BlobError> {
        let data = self.get(digest).ok_or(BlobError::NotFound(*digest))?;
        let total = data.len() as u64;
        let (start, len) = resolve(range, total)?;
        let slice = data[start as usize..(start + len) as usize].to_vec();
        Ok(BlobRead { total, start, len, reader: Box::pin(io::Cursor::new(slice)) })
    }

    async fn has(&self, digest: &Sha256Digest) -> Result<Option<u64>, BlobError> {
        Ok(self.get(digest).map(|d| d.len() as u64))
    }

    async fn delete(&self, digest: &Sha256Digest) -> Result<bool, BlobError> {
        Ok(self.blobs.write().unwrap_or_else(|p| p.into_inner()).remove(digest).is_some())
    }
}
