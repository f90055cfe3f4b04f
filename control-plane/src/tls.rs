//! TLS for the control plane: the server's own certificate (given, or self-signed at first start), the
//! built-in device CA that signs client certificates at enrollment, and the rustls configuration that accepts
//! both plain TLS (people, enrollment) and mutual TLS (devices) on one port.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgefleet_protocol::DeviceId;
use model_registry::fsutil::write_file_atomic;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("making a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("certificate signing request: {0}")]
    Csr(String),
    #[error(
        "{path} is missing, and devices enrolled with the device CA it belongs to; a new CA would orphan every one \
         of them. Restore the CA's certificate and key (device-ca.crt, device-ca.key) from backup"
    )]
    CaMissing { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_owned(), source }
}

/// SHA-256 of a certificate's DER, as lowercase hex: what operators pin.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    model_registry::fsutil::write_secret_atomic(path, bytes)
        .map_err(|e| TlsError::Io { path: path.to_owned(), source: e.source })
}

fn in_days(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    // A failing OS RNG at this point is not recoverable in any useful way; fall back to time-derived bytes.
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&(time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64).to_be_bytes());
    }
    // Positive, and no leading zero byte that DER's minimal encoding would strip: the serial read back from a
    // presented certificate is then the very hex stored at issue.
    b[0] = (b[0] & 0x3f) | 0x40;
    SerialNumber::from_slice(&b)
}

/// The server's certificate chain and key.
#[derive(Debug)]
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate.
    pub fingerprint: String,
    pub cert_path: PathBuf,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read_to_string(path).map_err(io(path))?;
    pem_certs(&pem, path)
}

/// The certificates of PEM text; `path` names where it came from, in errors.
fn pem_certs(pem: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_owned(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_owned(), message: "no certificate in file".into() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(io(path))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Pem { path: path.to_owned(), message: e.to_string() })?
        .ok_or_else(|| TlsError::Pem { path: path.to_owned(), message: "no private key in file".into() })
}

/// A new self-signed server certificate (SAN localhost, 127.0.0.1), as (certificate PEM, key PEM).
pub fn self_signed_server_pem() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, "edgefleet-server");
    params.not_before = in_days(-1);
    params.not_after = in_days(3650);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl ServerIdentity {
    /// Uses `cert` and `key` as given, or else `<data>/tls/server.{crt,key}`, made self-signed the first time.
    pub fn load_or_create(data_dir: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Self, TlsError> {
        let (cert_path, key_path) = match (cert, key) {
            (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
            _ => {
                let dir = data_dir.join("tls");
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
                if !c.exists() || !k.exists() {
                    let (cert, key) = self_signed_server_pem()?;
                    write_secret(&k, key.as_bytes())?;
                    write_file_atomic(&c, cert.as_bytes())
                        .map_err(|e| TlsError::Io { path: c.clone(), source: e.source })?;
                }
                (c, k)
            }
        };
        let chain = read_certs(&cert_path)?;
        let key = read_key(&key_path)?;
        let fingerprint = fingerprint(&chain[0]);
        Ok(Self { chain, key, fingerprint, cert_path })
    }

    /// From PEM text (shared through the database); the certificate is also written to `cert_path`, for people
    /// and devices to pin.
    pub fn from_pem(cert_pem: &str, key_pem: &str, cert_path: &Path) -> Result<Self, TlsError> {
        let chain = pem_certs(cert_pem, cert_path)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| TlsError::Pem { path: cert_path.to_owned(), message: e.to_string() })?
            .ok_or_else(|| TlsError::Pem { path: cert_path.to_owned(), message: "no private key".into() })?;
        if let Some(dir) = cert_path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        write_file_atomic(cert_path, cert_pem.as_bytes())
            .map_err(|e| TlsError::Io { path: cert_path.to_owned(), source: e.source })?;
        let fingerprint = fingerprint(&chain[0]);
        Ok(Self { chain, key, fingerprint, cert_path: cert_path.to_owned() })
    }
}

/// The device CA: issues client certificates whose common name is the device id.
pub struct DeviceCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as stored and handed to devices.
    pub pem: String,
    pub der: CertificateDer<'static>,
}

impl std::fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceCa")
    }
}

impl DeviceCa {
    /// Loads `<data>/ca/device-ca.{crt,key}`; makes a new CA only when neither exists and `may_create` (the
    /// fleet has no enrolled device yet). Anything else — one of the two lost, or both lost while devices hold
    /// certificates it issued — is refused: a new CA would silently orphan every enrolled device.
    pub fn load_or_create(data_dir: &Path, may_create: bool) -> Result<Self, TlsError> {
        let dir = data_dir.join("ca");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let (cert_path, key_path) = Self::files(data_dir);
        let (has_cert, has_key) = (cert_path.exists(), key_path.exists());
        if has_cert != has_key || (!has_cert && !may_create) {
            let missing = if has_cert { &key_path } else { &cert_path };
            return Err(TlsError::CaMissing { path: missing.clone() });
        }
        if !has_cert {
            let (cert, key) = Self::generate_pem()?;
            write_secret(&key_path, key.as_bytes())?;
            write_file_atomic(&cert_path, cert.as_bytes())
                .map_err(|e| TlsError::Io { path: cert_path.clone(), source: e.source })?;
        }
        Self::from_files(&cert_path, &key_path)
    }

    /// Where a data directory keeps the CA: (certificate, key).
    pub fn files(data_dir: &Path) -> (PathBuf, PathBuf) {
        let dir = data_dir.join("ca");
        (dir.join("device-ca.crt"), dir.join("device-ca.key"))
    }

    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read_to_string(cert_path).map_err(io(cert_path))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(io(key_path))?;
        Self::from_pem(&pem, &key_pem, cert_path)
    }

    /// A new CA, as (certificate PEM, key PEM).
    pub fn generate_pem() -> Result<(String, String), TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "edgefleet device CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = in_days(-1);
        params.not_after = in_days(3650);
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// From PEM text; `origin` names where it came from, in errors.
    pub fn from_pem(pem: &str, key_pem: &str, origin: &Path) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        // rcgen signs with a Certificate value; rebuilding it from the stored CA keeps subject and key id, so
        // certificates it issues chain to the stored CA certificate.
        let cert = CertificateParams::from_ca_cert_pem(pem)?.self_signed(&key)?;
        let der = pem_certs(pem, origin)?.remove(0);
        Ok(Self { cert, key, pem: pem.to_owned(), der })
    }

    /// Signs a client certificate for `device` from its CSR (the subject the CSR asks for is replaced).
    /// Answers the certificate PEM and its serial (hex).
    pub fn issue(&self, csr_pem: &str, device: &DeviceId, days: i64) -> Result<(String, String), TlsError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| TlsError::Csr(e.to_string()))?;
        let serial = random_serial();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device.as_str());
        csr.params.distinguished_name = dn;
        csr.params.subject_alt_names = Vec::new();
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.not_before = in_days(-1);
        csr.params.not_after = in_days(days);
        csr.params.serial_number = Some(serial.clone());
        let cert = csr.signed_by(&self.cert, &self.key)?;
        Ok((cert.pem(), hex::encode(serial.as_ref())))
    }
}

/// A rustls server configuration: the server identity, client certificates optional but, when presented,
/// required to chain to the device CA (a certificate from any other CA fails the handshake).
pub fn server_config(identity: &ServerIdentity, ca: &DeviceCa) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).map_err(TlsError::Rustls)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the TLS layer learnt about a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The common name, which the device CA sets to the device id.
    pub common_name: String,
    pub serial: String,
}

/// Reads the common name and serial of a (verified) client certificate.
pub fn client_cert(der: &[u8]) -> Option<ClientCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(ClientCert { common_name: cn, serial: hex::encode(cert.raw_serial()) })
}
