//! OLPC canonical JSON, the byte form every signature is made over (the same form TUF implementations such as
//! tough use). Canonical JSON has no floating-point numbers, so signed documents carry none.

use serde::Serialize;

/// The canonical JSON of `value`. Fails only for values canonical JSON cannot express (floats).
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    value.serialize(&mut ser)?;
    Ok(out)
}
