//! Validated identifiers. Each is parsed from text exactly once (`FromStr`, and serde goes through the same
//! parser), so a value of these types is always safe to put in a path, a URL or a SQL parameter.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Why a piece of text is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must be 1 to {max} characters, got {len}")]
    Length { kind: &'static str, max: usize, len: usize },
    #[error("{kind} must be 64 hex characters, got {len}")]
    HexLength { kind: &'static str, len: usize },
    #[error("{kind} {value:?} contains {found:?}; allowed are lowercase letters, digits and . _ - (not first)")]
    Character { kind: &'static str, value: String, found: char },
    #[error("{kind} {value:?} contains \"..\"")]
    DotDot { kind: &'static str, value: String },
    #[error("{kind} {value:?} is not lowercase hexadecimal")]
    Hex { kind: &'static str, value: String },
    #[error("release version must be a whole number of at least 1, got {value:?}")]
    Version { value: String },
}

// === Sha256Digest ===

/// A SHA-256 digest, written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest of `data`, in one call; streams use [`sha2::Sha256`] and [`Sha256Digest::from_hasher`].
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn parse(kind: &'static str, s: &str) -> Result<Self, IdError> {
        if s.len() != 64 {
            return Err(IdError::HexLength { kind, len: s.len() });
        }
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(IdError::Hex { kind, value: s.to_owned() });
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| IdError::Hex { kind, value: s.to_owned() })?;
        Ok(Self(out))
    }
}

impl FromStr for Sha256Digest {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse("sha256 digest", s)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

// === KeyId ===

/// A key id: the SHA-256 of the canonical JSON of a public key (computed in `model-registry`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Sha256Digest);

impl KeyId {
    pub const fn from_digest(d: Sha256Digest) -> Self {
        Self(d)
    }

    /// The first 12 hex characters, for humans.
    pub fn short(&self) -> String {
        self.0.to_hex()[..12].to_owned()
    }
}

impl FromStr for KeyId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Sha256Digest::parse("key id", s).map(Self)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.short())
    }
}

// === names ===

/// Checks a name that may become a path component: 1 to `max` characters of `[a-z0-9._-]`, starting with a
/// letter or digit, and never containing `..`. This refuses `/`, `\`, NUL, `.`, `..` and absolute paths.
fn check_name(kind: &'static str, max: usize, s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > max {
        return Err(IdError::Length { kind, max, len: s.chars().count() });
    }
    for (i, c) in s.chars().enumerate() {
        let ok = c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(IdError::Character { kind, value: s.to_owned(), found: c });
        }
    }
    if s.contains("..") {
        return Err(IdError::DotDot { kind, value: s.to_owned() });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                check_name($kind, $max, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A model's name, such as `magika`. Safe as a path component.
    ModelName,
    "model name",
    64
);
name_type!(
    /// A variant's id within a release, such as `cpu-int8` or `hexagon-v73-int8`. Safe as a path component.
    VariantId,
    "variant id",
    64
);
name_type!(
    /// A device's id, chosen at enrollment. Safe as a path component.
    DeviceId,
    "device id",
    128
);

// === ReleaseVersion ===

/// A release version: a whole number, at least 1, that only goes up per model.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ReleaseVersion(u64);

impl ReleaseVersion {
    pub fn new(v: u64) -> Result<Self, IdError> {
        if v == 0 {
            return Err(IdError::Version { value: v.to_string() });
        }
        Ok(Self(v))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for ReleaseVersion {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let v = s.parse::<u64>().map_err(|_| IdError::Version { value: s.to_owned() })?;
        Self::new(v)
    }
}

impl fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for ReleaseVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ReleaseVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        Self::new(v).map_err(serde::de::Error::custom)
    }
}

// === serde through FromStr ===

macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_via_str!(Sha256Digest, KeyId, ModelName, VariantId, DeviceId);

/// JSON schemas of the ids, for the control plane's OpenAPI document: strings with their patterns (the
/// serde forms above), release versions integers.
#[cfg(feature = "openapi")]
mod schemas {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

    macro_rules! string_schema {
        ($($t:ty => $pattern:literal, $what:literal;)*) => {$(
            impl utoipa::PartialSchema for $t {
                fn schema() -> RefOr<Schema> {
                    ObjectBuilder::new().schema_type(Type::String).pattern(Some($pattern)).description(Some($what)).into()
                }
            }
            impl utoipa::ToSchema for $t {}
        )*};
    }

    string_schema! {
        super::Sha256Digest => "^[0-9a-f]{64}$", "SHA-256, lowercase hex";
        super::KeyId => "^[0-9a-f]{64}$", "A key's id: SHA-256 of its public key, lowercase hex";
        super::ModelName => "^[a-z0-9][a-z0-9._-]{0,63}$", "A model's name (no `..`)";
        super::VariantId => "^[a-z0-9][a-z0-9._-]{0,63}$", "A variant's id within a release (no `..`)";
        super::DeviceId => "^[a-z0-9][a-z0-9._-]{0,127}$", "A device's id (no `..`)";
    }

    impl utoipa::PartialSchema for super::ReleaseVersion {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .description(Some("A release version: an integer from 1, only going up"))
                .into()
        }
    }
    impl utoipa::ToSchema for super::ReleaseVersion {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_path_tricks() {
        for bad in ["", "../etc", "a/b", "a\\b", "..", ".hidden", "a..b", "Magika", "a b", "a\0b", "/abs", "é"] {
            assert!(bad.parse::<ModelName>().is_err(), "{bad:?} was accepted");
        }
        for good in ["magika", "silero-vad", "m.v2", "a_b", "x1"] {
            assert_eq!(good.parse::<ModelName>().map(|n| n.to_string()), Ok(good.to_owned()));
        }
        assert!("a".repeat(65).parse::<VariantId>().is_err());
        assert!("a".repeat(128).parse::<DeviceId>().is_ok());
    }

    #[test]
    fn digests_are_lowercase_hex_of_32_bytes() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(d.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d.to_string().parse::<Sha256Digest>(), Ok(d));
        assert!(d.to_string().to_uppercase().parse::<Sha256Digest>().is_err());
        assert!("abc".parse::<Sha256Digest>().is_err());
        assert!("zz".repeat(32).parse::<KeyId>().is_err());
    }

    #[test]
    fn serde_goes_through_validation() {
        assert!(serde_json::from_str::<ModelName>("\"../x\"").is_err());
        assert!(serde_json::from_str::<ReleaseVersion>("0").is_err());
        assert_eq!(serde_json::from_str::<ReleaseVersion>("7").map(ReleaseVersion::get).ok(), Some(7));
    }
}
