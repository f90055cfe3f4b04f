//! Artifacts: digests and sizes checked while bytes flow, zstd compression and verified decompression.
//!
//! Nothing here reads an artifact whole into memory. A stream is cut off the moment it passes its signed size
//! (endless data), and its digest is compared the moment it ends (mix-and-match, truncation).

use std::io::{self, Read, Write};

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
        if self.seen != self.expected.size {
            return Err(ArtifactError::TooShort { what: self.what, expected: self.expected.size, got: self.seen });
        }
        let actual = Sha256Digest::from_hasher(self.hasher);
        if actual != self.expected.sha256 {
            return Err(ArtifactError::Digest { what: self.what, expected: self.expected.sha256, actual });
        }
        Ok(())
    }
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
pub fn decompress_verified<R: Read, W: Write>(
    compressed: R,
    mut out: W,
    zstd: &ArtifactRef,
    raw: &ArtifactRef,
) -> Result<(), ArtifactError> {
    let checked = CheckedReader::new(compressed, StreamCheck::new("zstd artifact", *zstd));
    let mut decoder = zstd::stream::read::Decoder::new(checked)
        .map_err(|source| ArtifactError::Zstd { what: "zstd artifact", source })?;
    let mut raw_check = StreamCheck::new("decompressed model", *raw);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(n) => n,
            Err(e) => return Err(unwrap_io(e, |source| ArtifactError::Zstd { what: "zstd artifact", source })),
        };
        if n == 0 {
            break;
        }
        raw_check.update(&buf[..n])?;
        out.write_all(&buf[..n]).map_err(|source| ArtifactError::Write { what: "decompressed model", source })?;
    }
    // The decoder stops at the end of the zstd frame; trailing bytes after it must still be read and counted.
    let mut reader = decoder.finish();
    io::copy(&mut reader, &mut io::sink())
        .map_err(|e| unwrap_io(e, |source| ArtifactError::Read { what: "zstd artifact", source }))?;
    if let Some(check) = reader.into_inner().into_check() {
        check.finish()?;
    }
    raw_check.finish()
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
