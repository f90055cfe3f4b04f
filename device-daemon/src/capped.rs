//! Bodies from the server read with a cap enforced while they arrive: a `Content-Length` over the cap is
//! refused before a byte is read, and a body that grows past it (chunked, or lying about its length) is cut
//! off at the cap. Nothing the server sends costs the device more memory than the cap of what it is.

use anyhow::bail;

/// Caps for what is not a signed document: enrollment answers, error texts, the roots index.
pub const SMALL_BYTES: u64 = 64 << 10;

/// The body of `resp`, at most `limit` bytes; `what` names it in the error.
pub async fn body(mut resp: reqwest::Response, limit: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    if let Some(len) = resp.content_length()
        && len > limit
    {
        bail!("{what}: the server announced {len} bytes, over the limit of {limit}");
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            bail!("{what}: more than the limit of {limit} bytes; cut off");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The body of a refusal, for an error message: at most [`SMALL_BYTES`], lossily decoded, never an error.
pub async fn text(resp: reqwest::Response) -> String {
    match body(resp, SMALL_BYTES, "error text").await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => e.to_string(),
    }
}
