//! The device's identity over its life: enrollment (a key made here, a certificate from the server's device
//! CA), the HTTPS client that presents it, and renewal well before expiry, without an operator.
//!
//! Renewal: once a third of the certificate's lifetime is left, a new key is made and the server signs a
//! certificate for it (`POST /api/v1/device/renew`, with the current certificate). The new pair is written
//! beside the old (`device.key.new`, `device.crt.new`, the key 0600 from its first byte) and then renamed over
//! it, key first. A daemon that dies anywhere in between finishes the renaming at its next start
//! ([`finish_renewal`]); one that died before the certificate was stored keeps the old pair, which the server
//! accepts until the new certificate is first used. Enrollment stores its pair the same way.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use edgefleet_protocol::DeviceId;
use edgefleet_protocol::api::{EnrollResponse, HardwareProfile};
use model_registry::fsutil::{sync_dir, write_file_atomic, write_secret_atomic};

use crate::layout::Layout;

/// A device's HTTPS client: the server's certificate as trust anchor, the device's certificate once enrolled.
pub fn http_client(
    server_ca: &Path,
    identity: Option<(&Path, &Path)>,
    read_timeout: Duration,
) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(server_ca).with_context(|| format!("reading {}", server_ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let tls = match identity {
        Some((cert, key)) => {
            let chain = rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice()).collect::<Result<Vec<_>, _>>()?;
            let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?
                .with_context(|| format!("{}: no private key", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        // Nothing the server says moves this client (and its certificate) elsewhere: a blob redirect is
        // followed by `Redirects`, on its own terms.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        // No total timeout (a large model on a slow link may take long); a connection silent for
        // `read_timeout` is dropped, and the download resumes from its partial file on the next pass.
        .read_timeout(read_timeout)
        .build()?)
}

/// How blob downloads the server redirects (to a presigned object-store URL) are fetched: by a client of
/// their own, which presents no device certificate and trusts the server's CA and the `--blob-ca` bundle;
/// plain HTTP only where allowed. The bytes are checked against the signed digests either way.
#[derive(Debug, Clone)]
pub struct Redirects {
    pub client: reqwest::Client,
    pub allow_http: bool,
}

impl Redirects {
    pub fn new(
        server_ca: &Path,
        extra_ca: Option<&Path>,
        allow_http: bool,
        read_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for path in std::iter::once(server_ca).chain(extra_ca) {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(c?)?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(read_timeout)
            .build()?;
        Ok(Self { client, allow_http })
    }

    /// For tests and tools that never see a redirect.
    pub fn none() -> Self {
        Self { client: reqwest::Client::new(), allow_http: false }
    }
}

/// Enrolls once: a key pair made here (kept 0600), a CSR, the one-time token; the certificate is stored.
pub async fn enroll(
    layout: &Layout,
    server: &str,
    anonymous: &reqwest::Client,
    token: &str,
    device: &DeviceId,
    hardware: &HardwareProfile,
) -> anyhow::Result<()> {
    if layout.cert().exists() && layout.key().exists() {
        return Ok(());
    }
    let dir = layout.key().parent().map(Path::to_owned).unwrap_or_default();
    std::fs::create_dir_all(&dir)?;
    let (key, csr) = key_and_csr()?;
    let resp = anonymous
        .post(format!("{server}/api/v1/enroll"))
        .json(&serde_json::json!({"token": token, "device_id": device, "csr_pem": csr, "hardware": hardware}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("enrollment refused ({}): {}", resp.status(), crate::capped::text(resp).await);
    }
    let enrolled: EnrollResponse =
        serde_json::from_slice(&crate::capped::body(resp, crate::capped::SMALL_BYTES, "enrollment answer").await?)?;
    store_pair(layout, &key, &enrolled.certificate_pem)
}

/// A new device key and a certificate request for it (the server sets the subject).
fn key_and_csr() -> anyhow::Result<(rcgen::KeyPair, String)> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

/// Stores a key and its certificate: both beside the pair in use first, then renamed into place (see
/// [`finish_renewal`]), so a stop at any point leaves one whole pair or the other.
fn store_pair(layout: &Layout, key: &rcgen::KeyPair, cert_pem: &str) -> anyhow::Result<()> {
    cert_lifetime(cert_pem).context("the certificate the server issued")?;
    let (key_path, cert_path) = pending(layout);
    write_secret_atomic(&key_path, key.serialize_pem().as_bytes())?;
    write_file_atomic(&cert_path, cert_pem.as_bytes())?;
    finish_renewal(layout)
}

/// The validity of the certificate in `pem`: (not before, not after), unix seconds.
fn cert_lifetime(pem: &str) -> anyhow::Result<(i64, i64)> {
    let params = rcgen::CertificateParams::from_ca_cert_pem(pem).context("reading the device certificate")?;
    Ok((params.not_before.unix_timestamp(), params.not_after.unix_timestamp()))
}

/// From when (unix seconds) the certificate in `pem` is due for renewal: once a third of its lifetime is left
/// (or fewer than `days_left` days, when given). An unreadable certificate is an error, not a renewal.
pub fn renew_from(pem: &str, days_left: Option<f64>) -> anyhow::Result<i64> {
    let (start, end) = cert_lifetime(pem)?;
    Ok(end - days_left.map_or((end - start) / 3, |d| (d * 86_400.0) as i64))
}

/// Whether the certificate in `pem` is due for renewal at `now` (unix seconds); see [`renew_from`].
pub fn renewal_due(pem: &str, now: i64, days_left: Option<f64>) -> anyhow::Result<bool> {
    Ok(now >= renew_from(pem, days_left)?)
}

/// The paths a renewal writes before it renames them into place.
fn pending(layout: &Layout) -> (std::path::PathBuf, std::path::PathBuf) {
    (layout.key().with_extension("key.new"), layout.cert().with_extension("crt.new"))
}

/// Finishes storing a pair (an enrollment's or a renewal's) that a crash interrupted: a new certificate that was stored is moved into place (with its key,
/// if that was not moved yet); a new key without its certificate is dropped (the old pair still works).
pub fn finish_renewal(layout: &Layout) -> anyhow::Result<()> {
    let (key, cert) = pending(layout);
    if cert.exists() {
        if key.exists() {
            std::fs::rename(&key, layout.key())?;
        }
        std::fs::rename(&cert, layout.cert())?;
        sync_dir(layout.cert().parent().unwrap_or(Path::new(".")))?;
        tracing::info!("finished a certificate renewal interrupted by a stop");
    } else if key.exists() {
        std::fs::remove_file(&key)?;
    }
    Ok(())
}

/// Renews the device's certificate through `client` (which presents the current one) and stores the new pair.
pub async fn renew(layout: &Layout, server: &str, client: &reqwest::Client) -> anyhow::Result<()> {
    let (key, csr) = key_and_csr()?;
    let resp = client
        .post(format!("{server}/api/v1/device/renew"))
        .json(&serde_json::json!({ "csr_pem": csr }))
        .send()
        .await
        .context("certificate renewal")?;
    if !resp.status().is_success() {
        bail!("certificate renewal refused ({}): {}", resp.status(), crate::capped::text(resp).await);
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&crate::capped::body(resp, crate::capped::SMALL_BYTES, "renewal answer").await?)?;
    let pem = answer["certificate_pem"].as_str().context("the renewal answer has no certificate")?;
    store_pair(layout, &key, pem)
}
