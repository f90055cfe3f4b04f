//! Artifacts: digests and sizes checked while bytes flow, zstd compression and verified decompression.
//!
//! Nothing here reads an artifact whole into memory. A stream is cut off the moment it passes its signed size
//! (endless data), and its digest is compared the moment it ends (mix-and-match, truncation).

use std::io::{self, Read, Write};
use std::sync::mpsc;

use edgefleet_protocol::Sha256Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::verify::Defence;

/// A blob as a signed document names it: its SHA-256 and its exact size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// Why an artifact stream was refused. `what` names the stream ("zstd artifact", "raw model", an upload).
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{what} is longer than its signed size of {expected} bytes; cut off there")]
    TooLong { what: &'static str, expected: u64 },
    #[error("{what} ended after {got} of its signed {expected} bytes")]
    TooShort { what: &'static str, expected: u64, got: u64 },
    #[error("{what} has sha256 {actual}, not the signed {expected}")]
    Digest { what: &'static str, expected: Sha256Digest, actual: Sha256Digest },
    #[error("{what} is larger than the limit of {limit} bytes")]
    OverLimit { what: &'static str, limit: u64 },
    #[error("{what} is not a valid zstd stream: {source}")]
    Zstd { what: &'static str, source: io::Error },
    #[error("reading {what}: {source}")]
    Read { what: &'static str, source: io::Error },
    #[error("writing {what}: {source}")]
    Write { what: &'static str, source: io::Error },
}

impl ArtifactError {
    pub fn defence(&self) -> Defence {
        match self {
            ArtifactError::TooLong { .. } | ArtifactError::OverLimit { .. } => Defence::EndlessData,
            ArtifactError::TooShort { .. } | ArtifactError::Digest { .. } => Defence::MixAndMatch,
            // Not an attack the table names: input that cannot be decoded or read at all.
            ArtifactError::Zstd { .. } | ArtifactError::Read { .. } | ArtifactError::Write { .. } => Defence::Malformed,
        }
    }
}

// === StreamCheck ===

/// Checks a stream against a signed [`ArtifactRef`] chunk by chunk: a chunk that would pass the signed size is
/// refused before it is hashed or used.
#[derive(Debug, Clone)]
pub struct StreamCheck {
    what: &'static str,
    expected: ArtifactRef,
    hasher: Sha256,
    seen: u64,
}

impl StreamCheck {
    pub fn new(what: &'static str, expected: ArtifactRef) -> Self {
        Self { what, expected, hasher: Sha256::new(), seen: 0 }
    }

    /// Continues a check over bytes already on disk (a resumed download): feed them through `update` first.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        let after = self.seen + chunk.len() as u64;
        if after > self.expected.size {
            return Err(ArtifactError::TooLong { what: self.what, expected: self.expected.size });
        }
        self.hasher.update(chunk);
        self.seen = after;
        Ok(())
    }

    pub fn finish(self) -> Result<(), ArtifactError> {
        judge(self.what, &self.expected, self.seen, self.hasher)
    }
}

/// The verdict at the end of a stream: exactly the signed size, and the signed digest.
fn judge(what: &'static str, expected: &ArtifactRef, seen: u64, hasher: Sha256) -> Result<(), ArtifactError> {
    if seen != expected.size {
        return Err(ArtifactError::TooShort { what, expected: expected.size, got: seen });
    }
    let actual = Sha256Digest::from_hasher(hasher);
    if actual != expected.sha256 {
        return Err(ArtifactError::Digest { what, expected: expected.sha256, actual });
    }
    Ok(())
}

/// Measures an unsigned stream (an upload, a file being packed) with a size cap.
#[derive(Debug, Clone)]
pub struct Measure {
    what: &'static str,
    limit: u64,
    hasher: Sha256,
    size: u64,
}

impl Measure {
    pub fn new(what: &'static str, limit: u64) -> Self {
        Self { what, limit, hasher: Sha256::new(), size: 0 }
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(ArtifactError::OverLimit { what: self.what, limit: self.limit });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    pub fn finish(self) -> ArtifactRef {
        ArtifactRef { sha256: Sha256Digest::from_hasher(self.hasher), size: self.size }
    }
}

// === readers and writers ===

/// A reader that checks everything it passes on against a signed artifact and fails at the first byte too many.
#[derive(Debug)]
pub struct CheckedReader<R> {
    inner: R,
    check: Option<StreamCheck>,
}

impl<R: Read> CheckedReader<R> {
    pub fn new(inner: R, check: StreamCheck) -> Self {
        Self { inner, check: Some(check) }
    }

    /// The check, to be finished once the reader reached its end.
    pub fn into_check(self) -> Option<StreamCheck> {
        self.check
    }
}

impl<R: Read> Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(check) = &mut self.check {
            check.update(&buf[..n]).map_err(io::Error::other)?;
        }
        Ok(n)
    }
}

/// A writer that measures what passes through it.
#[derive(Debug)]
struct MeasuringWriter<W> {
    inner: W,
    measure: Measure,
}

impl<W: Write> Write for MeasuringWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.measure.update(&buf[..n]).map_err(io::Error::other)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Turns an I/O error that carries an [`ArtifactError`] (raised inside an adapter) back into it.
fn unwrap_io(e: io::Error, otherwise: impl FnOnce(io::Error) -> ArtifactError) -> ArtifactError {
    if e.get_ref().is_some_and(|inner| inner.is::<ArtifactError>()) {
        // The check above makes this downcast succeed.
        match e.into_inner().map(|inner| inner.downcast::<ArtifactError>()) {
            Some(Ok(artifact)) => *artifact,
            Some(Err(other)) => otherwise(io::Error::other(other)),
            None => otherwise(io::Error::other("unknown")),
        }
    } else {
        otherwise(e)
    }
}

const CHUNK: usize = 256 << 10;

/// Compresses `raw` into `out` with zstd at `level`, streaming, and answers the raw and compressed refs.
/// `limit` caps the raw size.
pub fn compress<R: Read, W: Write>(
    raw: R,
    out: W,
    level: i32,
    limit: u64,
) -> Result<(ArtifactRef, ArtifactRef), ArtifactError> {
    let mut raw_measure = Measure::new("model file", limit);
    let writer = MeasuringWriter { inner: out, measure: Measure::new("zstd artifact", u64::MAX) };
    let mut encoder = zstd::stream::write::Encoder::new(writer, level)
        .map_err(|source| ArtifactError::Write { what: "zstd", source })?;
    // Frames carry their content size where known, and a checksum so corruption shows even before the digest.
    encoder.include_checksum(true).map_err(|source| ArtifactError::Write { what: "zstd", source })?;
    let mut raw = raw;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = raw.read(&mut buf).map_err(|source| ArtifactError::Read { what: "model file", source })?;
        if n == 0 {
            break;
        }
        raw_measure.update(&buf[..n])?;
        encoder
            .write_all(&buf[..n])
            .map_err(|e| unwrap_io(e, |source| ArtifactError::Write { what: "zstd artifact", source }))?;
    }
    let writer = encoder.finish().map_err(|source| ArtifactError::Write { what: "zstd artifact", source })?;
    Ok((raw_measure.finish(), writer.measure.finish()))
}

/// Decompresses `compressed` into `out`, checking the compressed bytes against `zstd` and the decompressed ones
/// against `raw` as they flow. Output stops at the first byte past the signed raw size. On error, what was
/// written to `out` must be discarded by the caller (write to a temporary file; rename only on success).
///
/// Sizes are checked inline, before a byte is used; the two SHA-256 digests are computed on a second thread
/// fed with copies of each chunk, so hashing overlaps decompression (BENCHMARKS.md has the numbers).
pub fn decompress_verified<R: Read, W: Write>(
    compressed: R,
    mut out: W,
    zstd: &ArtifactRef,
    raw: &ArtifactRef,
) -> Result<(), ArtifactError> {
    std::thread::scope(|scope| {
        let (work_tx, work_rx) = mpsc::sync_channel::<Chunk>(PIPELINE_DEPTH);
        let (spare_tx, spare_rx) = mpsc::channel::<Vec<u8>>();
        let hasher = scope.spawn(move || {
            let (mut z, mut r) = (Sha256::new(), Sha256::new());
            for chunk in work_rx {
                let (h, buf) = match chunk {
                    Chunk::Zstd(b) => (&mut z, b),
                    Chunk::Raw(b) => (&mut r, b),
                };
                h.update(&buf);
                // The main thread may have finished; a spare buffer nobody takes is simply dropped.
                let _ = spare_tx.send(buf);
            }
            (z, r)
        });
        let feed = Feed { tx: work_tx, spares: spare_rx };
        let counted = Counted { inner: compressed, feed: &feed, signed: zstd.size, seen: 0 };
        let result = (|| {
            let mut decoder = zstd::stream::read::Decoder::new(counted)
                .map_err(|source| ArtifactError::Zstd { what: "zstd artifact", source })?;
            let mut seen_raw = 0u64;
            let decode_error = loop {
                // Stale contents are fine: the decoder overwrites what it reports; only growth is zeroed.
                let mut buf = feed.buffer();
                buf.resize(CHUNK, 0);
                let n = match decoder.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => match unwrap_io(e, |source| ArtifactError::Zstd { what: "zstd artifact", source }) {
                        // A corrupt stream: read on, so the digest can say whether these are the signed bytes.
                        e @ ArtifactError::Zstd { .. } => break Some(e),
                        other => return Err(other),
                    },
                };
                if n == 0 {
                    break None;
                }
                seen_raw += n as u64;
                if seen_raw > raw.size {
                    return Err(ArtifactError::TooLong { what: "decompressed model", expected: raw.size });
                }
                buf.truncate(n);
                out.write_all(&buf).map_err(|source| ArtifactError::Write { what: "decompressed model", source })?;
                feed.send(Chunk::Raw(buf));
            };
            // The decoder stops at the end of the zstd frame (or at an error); the bytes after it are still
            // read and counted, up to the signed size.
            let mut rest = decoder.finish();
            io::copy(&mut rest, &mut io::sink())
                .map_err(|e| unwrap_io(e, |source| ArtifactError::Read { what: "zstd artifact", source }))?;
            Ok((rest.into_inner().seen, seen_raw, decode_error))
        })();
        drop(feed);
        let (z, r) = hasher.join().map_err(|_| ArtifactError::Read {
            what: "zstd artifact",
            source: io::Error::other("the hashing thread panicked"),
        })?;
        let (seen_zstd, seen_raw, decode_error) = result?;
        // Bytes that are not the signed ones are named as such, before what a decoder made of them.
        judge("zstd artifact", zstd, seen_zstd, z)?;
        if let Some(e) = decode_error {
            return Err(e);
        }
        judge("decompressed model", raw, seen_raw, r)
    })
}

const PIPELINE_DEPTH: usize = 8;

enum Chunk {
    Zstd(Vec<u8>),
    Raw(Vec<u8>),
}

/// The main thread's end of the hashing pipeline: sends chunks, and reuses buffers the hasher is done with.
struct Feed {
    tx: mpsc::SyncSender<Chunk>,
    spares: mpsc::Receiver<Vec<u8>>,
}

impl Feed {
    /// A buffer to reuse; its contents are stale and must be overwritten or cleared.
    fn buffer(&self) -> Vec<u8> {
        self.spares.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK))
    }

    fn send(&self, chunk: Chunk) {
        // The hasher only stops when this side is dropped, so a send cannot fail while we hold `self`.
        let _ = self.tx.send(chunk);
    }
}

/// Counts compressed bytes against the signed size as the decoder pulls them, and passes copies to the hasher.
struct Counted<'a, R> {
    inner: R,
    feed: &'a Feed,
    signed: u64,
    seen: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if self.seen > self.signed {
            return Err(io::Error::other(ArtifactError::TooLong { what: "zstd artifact", expected: self.signed }));
        }
        if n > 0 {
            let mut copy = self.feed.buffer();
            copy.clear();
            copy.extend_from_slice(&buf[..n]);
            self.feed.send(Chunk::Zstd(copy));
        }
        Ok(n)
    }
}

/// Checks a whole stream against `expected`, reading it in chunks.
pub fn verify_stream<R: Read>(what: &'static str, mut reader: R, expected: &ArtifactRef) -> Result<(), ArtifactError> {
    let mut check = StreamCheck::new(what, *expected);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut buf).map_err(|source| ArtifactError::Read { what, source })?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n])?;
    }
    check.finish()
}

/// Measures a whole stream, with a cap.
pub fn measure_stream<R: Read>(what: &'static str, mut reader: R, limit: u64) -> Result<ArtifactRef, ArtifactError> {
    let mut m = Measure::new(what, limit);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut buf).map_err(|source| ArtifactError::Read { what, source })?;
        if n == 0 {
            break;
        }
        m.update(&buf[..n])?;
    }
    Ok(m.finish())
}
