//! Bytes from the server into a slot: downloads into `downloads/<sha256>.partial`, resumed with HTTP Range and
//! checked against the signed size and digest while they stream; staging, decompressed and verified while it
//! streams into the inactive slot through a temporary file, fsync and rename. `PausePoint` is the crash tests'
//! hook into both.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::bail;
use model_registry::Variant;
use model_registry::artifact::{ArtifactRef, StreamCheck, decompress_verified};
use model_registry::fsutil::{sync_dir, write_atomic};

use crate::layout::Layout;

/// A test hook for crash tests: the named point in an install where the daemon stops (prints
/// `edgefleet-daemon paused at <point>` and waits forever, still serving), so a test can kill -9 it exactly
/// there. Set by `EDGEFLEET_PAUSE_AT`; off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PausePoint {
    /// After part of the model blob is written to its partial file.
    Download,
    /// Halfway through decompressing into the slot's temporary file.
    Decompress,
    /// After the model file is renamed into its slot, before it is loaded or committed.
    Renamed,
}

fn announce_pause(at: PausePoint) {
    println!("edgefleet-daemon paused at {}", format!("{at:?}").to_lowercase());
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

pub(crate) async fn pause_if(pause: Option<PausePoint>, at: PausePoint) {
    if pause == Some(at) {
        announce_pause(at);
        std::future::pending::<()>().await;
    }
}

/// Counts the bytes written through it and pauses the writing thread at half of `total` if asked to.
struct Tripwire<W> {
    inner: W,
    written: u64,
    at: Option<u64>,
}

impl<W: Write> Write for Tripwire<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if self.at.is_some_and(|at| self.written >= at) {
            self.inner.flush()?;
            announce_pause(PausePoint::Decompress);
            loop {
                std::thread::park();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// How the reason of a download whose bytes missed their digest begins (the reconciler fetches it again).
pub const BAD_DOWNLOAD: &str = "downloaded bytes do not match the signed digest";

/// A download whose bytes are not the signed ones (as opposed to one that could not finish).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotSigned(pub String);

/// Downloads `r` from the server into its partial file, resuming with Range from what is there, and checks
/// size and digest as it goes. Answers the path of the complete, verified file.
pub async fn download(
    client: &reqwest::Client,
    redirects: &crate::identity::Redirects,
    server: &str,
    layout: &Layout,
    r: &ArtifactRef,
    pause: Option<PausePoint>,
) -> anyhow::Result<PathBuf> {
    let path = layout.partial(r);
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let mut check = StreamCheck::new("download", *r);
    // Re-hash what a previous run left (a partial file survives restarts), then ask for the rest.
    let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(&path)?;
    let mut have = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    file.seek(std::io::SeekFrom::Start(0))?;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if check.update(&buf[..n]).is_err() {
            // Longer than signed: the partial is not the signed blob; start over.
            drop(file);
            std::fs::remove_file(&path)?;
            return Box::pin(download(client, redirects, server, layout, r, pause)).await;
        }
        have += n as u64;
    }
    if have < r.size {
        let range = format!("bytes={have}-");
        let mut resp = client.get(format!("{server}/api/v1/blobs/{}", r.sha256)).header("range", &range).send().await?;
        if resp.status().is_redirection() {
            let target =
                redirect_target(&resp, redirects.allow_http).map_err(|e| anyhow::anyhow!("blob {}: {e}", r.sha256))?;
            tracing::debug!(blob = %r.sha256, host = target.host_str().unwrap_or_default(), "downloading from the object store");
            resp = redirects.client.get(target).header("range", &range).send().await?;
        }
        let status = resp.status().as_u16();
        if status != 206 && !(status == 200 && have == 0) {
            bail!("blob {}: server answered {status} to a range request", r.sha256);
        }
        if have > 0 {
            tracing::info!(blob = %r.sha256, have, of = r.size, "resuming a partial download");
        }
        while let Some(chunk) = resp.chunk().await? {
            check.update(&chunk).map_err(|e| NotSigned(format!("blob {}: {e}", r.sha256)))?;
            file.write_all(&chunk)?;
            if have == 0 {
                file.sync_all()?;
                pause_if(pause, PausePoint::Download).await;
            }
        }
        file.sync_all()?;
    }
    match check.finish() {
        Ok(()) => Ok(path),
        Err(e) => {
            // Wrong bytes are never resumed from: remove them, so the next try starts clean.
            let _ = std::fs::remove_file(&path);
            Err(NotSigned(format!("blob {}: {e}", r.sha256)).into())
        }
    }
}

/// Where a redirect answer points, if it may be followed: an absolute https URL (or http where allowed).
fn redirect_target(resp: &reqwest::Response, allow_http: bool) -> Result<reqwest::Url, String> {
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("the server answered {} without a Location", resp.status()))?;
    let url = reqwest::Url::parse(location).map_err(|e| format!("the server redirected to an invalid URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_http => Ok(url),
        scheme => Err(format!(
            "the server redirected to a {scheme} URL on {}; only https is followed (--blob-allow-http allows http)",
            url.host_str().unwrap_or("?")
        )),
    }
}

/// Decompresses a verified download into the slot (`model.onnx` or `model.gguf`; temporary file, fsync, rename,
/// fsync dir).
pub fn stage(
    zstd_file: &Path,
    variant: &Variant,
    slot_dir: &Path,
    pause: Option<PausePoint>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(slot_dir)?;
    // A run killed while decompressing leaves its temporary file behind; it is never loaded, only removed.
    for entry in std::fs::read_dir(slot_dir)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            std::fs::remove_file(entry.path())?;
        }
    }
    let dest = slot_dir.join(variant.format.file_name());
    write_atomic(&dest, |f| -> anyhow::Result<()> {
        let src = std::io::BufReader::with_capacity(256 << 10, std::fs::File::open(zstd_file)?);
        let at = (pause == Some(PausePoint::Decompress)).then_some(variant.raw.size / 2);
        decompress_verified(src, Tripwire { inner: f, written: 0, at }, &variant.zstd, &variant.raw)?;
        Ok(())
    })?;
    sync_dir(slot_dir)?;
    Ok(dest)
}
