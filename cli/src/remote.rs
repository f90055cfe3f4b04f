//! Talking to the control plane: the saved login (server URL, API token, and how to trust the server's
//! certificate: a CA file or a pinned SHA-256 fingerprint), a blocking HTTPS client, and server errors turned
//! into messages that say what the server said.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use reqwest::blocking::{Client, RequestBuilder, Response};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What `edgefleet login` saves (mode 0600: it holds a token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub server: String,
    pub token: String,
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// Where the login lives: `EDGEFLEET_CLI_CONFIG`, else `$XDG_CONFIG_HOME/edgefleet/login.json`, else
/// `$HOME/.config/edgefleet/login.json`.
pub fn login_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EDGEFLEET_CLI_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither EDGEFLEET_CLI_CONFIG, XDG_CONFIG_HOME nor HOME is set")?;
    Ok(base.join("edgefleet").join("login.json"))
}

pub fn save_login(login: &Login) -> anyhow::Result<PathBuf> {
    let path = login_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bytes = serde_json::to_vec_pretty(login)?;
    model_registry::fsutil::write_secret_atomic(&path, &bytes)?;
    Ok(path)
}

pub fn load_login() -> anyhow::Result<Login> {
    let path = login_path()?;
    let bytes = std::fs::read(&path)
        .with_context(|| format!("not logged in ({} is missing): run `edgefleet login` first", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not a valid login file", path.display()))
}

/// Accepts exactly the server certificate whose SHA-256 is pinned (signatures still checked).
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = hex::encode(Sha256::digest(end_entity.as_ref()));
        if got.eq_ignore_ascii_case(&self.fingerprint) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {got} is not the pinned {}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn read_ca(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.with_context(|| format!("{}: not PEM", path.display()))?)?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate in it", path.display());
    }
    Ok(roots)
}

/// The TLS configuration a login asks for.
pub fn tls_config(ca_cert: Option<&Path>, fingerprint: Option<&str>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    Ok(match (ca_cert, fingerprint) {
        (Some(ca), _) => builder.with_root_certificates(read_ca(ca)?).with_no_client_auth(),
        (None, Some(fp)) => {
            let fp = fp.trim().replace(':', "").to_ascii_lowercase();
            anyhow::ensure!(
                fp.len() == 64 && fp.chars().all(|c| c.is_ascii_hexdigit()),
                "--fingerprint must be 64 hex characters"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint: fp, provider }))
                .with_no_client_auth()
        }
        (None, None) => bail!("say how to trust the server: --ca-cert FILE or --fingerprint SHA256"),
    })
}

/// An authenticated client for one server.
#[derive(Debug)]
pub struct Remote {
    pub base: String,
    token: String,
    client: Client,
}

impl Remote {
    pub fn new(login: &Login) -> anyhow::Result<Self> {
        let tls = tls_config(login.ca_cert.as_deref(), login.fingerprint.as_deref())?;
        let client = Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(std::time::Duration::from_secs(600))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self { base: login.server.trim_end_matches('/').to_owned(), token: login.token.clone(), client })
    }

    pub fn from_saved() -> anyhow::Result<Self> {
        Self::new(&load_login()?)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}/api/v1{path}", self.base)).bearer_auth(&self.token)
    }

    /// Sends, and turns a non-success answer into an error carrying the server's code and message.
    pub fn send(&self, req: RequestBuilder) -> anyhow::Result<Response> {
        let resp = req.send().map_err(|e| anyhow::anyhow!("{}: {}", self.base, error_chain(&e)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        match serde_json::from_str::<edgefleet_protocol::api::ErrorBody>(&text) {
            Ok(body) => bail!("server refused ({} {}): {}", status.as_u16(), body.error.code, body.error.message),
            Err(_) => bail!("server answered {status}: {}", text.chars().take(300).collect::<String>()),
        }
    }

    pub fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.send(self.request(reqwest::Method::GET, path))?.json()?)
    }

    pub fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let resp = self.send(self.request(method, path).json(body))?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(serde_json::Value::Null);
        }
        Ok(resp.json()?)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.dedup();
    parts.join(": ")
}
