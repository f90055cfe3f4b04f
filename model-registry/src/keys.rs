//! Ed25519 keys: public keys as they appear in `root.json`, key ids, and private key files on disk.
//!
//! A private key file is JSON (`{"keytype":"ed25519","private":"<hex seed>"}`), created with mode 0600 and
//! refused on load if group or others can read it, as ssh does.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use edgefleet_protocol::{KeyId, Sha256Digest};
use serde::{Deserialize, Serialize};

use crate::canonical::to_canonical;

/// A public key as listed in a root: `{"keytype":"ed25519","scheme":"ed25519","keyval":{"public":"<hex>"}}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    pub keytype: KeyType,
    pub scheme: KeyType,
    pub keyval: KeyVal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Ed25519,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyVal {
    pub public: String,
}

impl PublicKey {
    pub fn from_verifying_key(key: &VerifyingKey) -> Self {
        Self {
            keytype: KeyType::Ed25519,
            scheme: KeyType::Ed25519,
            keyval: KeyVal { public: hex::encode(key.as_bytes()) },
        }
    }

    /// The key id: SHA-256 of this key's canonical JSON.
    pub fn key_id(&self) -> KeyId {
        // A PublicKey has no floats, so canonical JSON cannot fail.
        let bytes = to_canonical(self).unwrap_or_default();
        KeyId::from_digest(Sha256Digest::of(&bytes))
    }

    /// The ed25519 key, or why the hex in `keyval.public` is not one. Only the canonical spelling counts
    /// (lowercase hex): the key id hashes the spelling, so an uppercase copy of a key would have an id of its
    /// own and could be counted twice toward one threshold.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        if self.keyval.public.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(KeyError::PublicHex);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&self.keyval.public, &mut bytes).map_err(|_| KeyError::PublicHex)?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotOnCurve)
    }

    /// Whether `sig` (hex) is this key's signature over `message`.
    pub fn verifies(&self, message: &[u8], sig_hex: &str) -> Result<(), KeyError> {
        let key = self.verifying_key()?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(sig_hex, &mut sig).map_err(|_| KeyError::SignatureHex)?;
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig)).map_err(|_| KeyError::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id().short())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("public key is not 32 bytes of lowercase hex")]
    PublicHex,
    #[error("public key is not a valid ed25519 point")]
    NotOnCurve,
    #[error("signature is not 64 bytes of hex")]
    SignatureHex,
    #[error("signature does not match the signed bytes")]
    BadSignature,
}

/// A private signing key with its public half and key id.
pub struct KeyPair {
    signing: SigningKey,
    public: PublicKey,
    id: KeyId,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({})", self.id.short())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateKeyFile {
    keytype: KeyType,
    private: String,
}

/// Why a key file could not be written or read. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("no randomness from the operating system")]
    Random,
    #[error("{path}: already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: permissions {mode:o} let others read this private key; run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: not an edgefleet private key file: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: the private key is not 32 bytes of hex")]
    Seed { path: PathBuf },
    #[error("{path}: not an edgefleet public key file: {source}")]
    PublicParse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {source}")]
    Public { path: PathBuf, source: KeyError },
}

impl KeyPair {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<Self, KeyFileError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| KeyFileError::Random)?;
        Ok(Self::from_seed(&seed))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let public = PublicKey::from_verifying_key(&signing.verifying_key());
        let id = public.key_id();
        Self { signing, public, id }
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn key_id(&self) -> KeyId {
        self.id
    }

    /// The signature over `message`, as hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.signing.sign(message).to_bytes())
    }

    /// Writes the private key to `path`, created new with mode 0600 (never overwriting an existing file).
    pub fn write_private(&self, path: &Path) -> Result<(), KeyFileError> {
        let body = PrivateKeyFile { keytype: KeyType::Ed25519, private: hex::encode(self.signing.to_bytes()) };
        let json = serde_json::to_vec_pretty(&body).unwrap_or_default();
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists { path: path.to_owned() },
            _ => KeyFileError::Io { path: path.to_owned(), source },
        })?;
        file.write_all(&json)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(|source| KeyFileError::Io { path: path.to_owned(), source })
    }

    /// Reads a private key file, refusing one that group or others can read.
    pub fn read_private(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source| KeyFileError::Io { path: path.to_owned(), source };
        let meta = fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions { path: path.to_owned(), mode });
            }
        }
        let _ = meta;
        let bytes = fs::read(path).map_err(io)?;
        let file: PrivateKeyFile =
            serde_json::from_slice(&bytes).map_err(|source| KeyFileError::Parse { path: path.to_owned(), source })?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&file.private, &mut seed).map_err(|_| KeyFileError::Seed { path: path.to_owned() })?;
        Ok(Self::from_seed(&seed))
    }
}

/// Reads a public key file (the JSON of a [`PublicKey`]), checking that it holds a valid ed25519 key.
pub fn read_public(path: &Path) -> Result<PublicKey, KeyFileError> {
    let bytes = fs::read(path).map_err(|source| KeyFileError::Io { path: path.to_owned(), source })?;
    let key: PublicKey =
        serde_json::from_slice(&bytes).map_err(|source| KeyFileError::PublicParse { path: path.to_owned(), source })?;
    key.verifying_key().map_err(|source| KeyFileError::Public { path: path.to_owned(), source })?;
    Ok(key)
}
