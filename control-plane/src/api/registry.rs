//! The registry: blobs (streamed in with their digest checked, served with Range, ETag and immutable caching)
//! and releases (verified against the server's trust root; every blob present; versions only go up).

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgefleet_protocol::api::{
    LlmWindowStats, ModelSummary, ModelTelemetry, ReleaseSummary, ReleaseWindow, RouteWindowStats, VariantInfo,
    WindowStats,
};
use edgefleet_protocol::telemetry::ROUTE_REASONS;
use edgefleet_protocol::{ModelName, ReleaseVersion, Sha256Digest};
use futures_util::TryStreamExt;
use model_registry::artifact::ArtifactRef;
use model_registry::{ByteRange, Envelope, LastSeen, ReleaseManifest, Verifier};
use tokio_util::io::{ReaderStream, StreamReader};

use super::{ApiError, ApiResult, Authorized, Principal, Publisher, Source, Viewer};
use crate::state::{AppState, now_ms, rfc3339};
use crate::store::{ClassStats, Publish, ReleaseRow};

fn digest(s: &str) -> ApiResult<Sha256Digest> {
    s.parse().map_err(|e: edgefleet_protocol::IdError| ApiError::bad_request("invalid_digest", e.to_string()))
}

pub(super) fn model_name(s: &str) -> ApiResult<ModelName> {
    s.parse().map_err(|e: edgefleet_protocol::IdError| ApiError::bad_request("invalid_name", e.to_string()))
}

fn release_version(s: &str) -> ApiResult<ReleaseVersion> {
    s.parse().map_err(|e: edgefleet_protocol::IdError| ApiError::bad_request("invalid_version", e.to_string()))
}

/// `PUT /api/v1/blobs/{sha256}`: the body must be exactly the blob, with a Content-Length.
pub async fn put_blob(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Publisher>,
    source: Source,
    Path(d): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let sha256 = digest(&d)?;
    let size: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::new(StatusCode::LENGTH_REQUIRED, "length_required", "send a Content-Length"))?;
    if size > state.config.max_blob_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{size} bytes is over the blob limit of {} bytes", state.config.max_blob_bytes),
        ));
    }
    // A blob already stored is still read and checked (answering before the body is read breaks clients that
    // are still sending); clients that want to skip uploads ask with HEAD first.
    let existed = state.blobs.has(&sha256).await? == Some(size);
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let stored = state.blobs.put(Box::pin(reader), Some(ArtifactRef { sha256, size }), size).await?;
    if existed {
        return Ok((StatusCode::OK, Json(serde_json::json!({"sha256": sha256, "size": size, "stored": false})))
            .into_response());
    }
    state.audit(&who, &source, "blob.upload", &sha256.to_string(), serde_json::json!({"size": stored.size})).await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({"sha256": sha256, "size": size, "stored": true}))).into_response())
}

/// Parses a single `bytes=` range against a blob of `total` bytes. `None`: serve the whole blob.
fn parse_range(h: &str, total: u64) -> Result<Option<ByteRange>, ()> {
    let spec = h.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Ok(None); // Multiple ranges: answer the whole blob, as RFC 9110 allows.
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let range = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            ByteRange { start: total.saturating_sub(n), end: None }
        }
        (s, "") => ByteRange { start: s.parse().map_err(|_| ())?, end: None },
        (s, e) => {
            let (s, e): (u64, u64) = (s.parse().map_err(|_| ())?, e.parse().map_err(|_| ())?);
            if e < s {
                return Err(());
            }
            ByteRange { start: s, end: Some((e + 1).min(total)) }
        }
    };
    if range.start >= total {
        return Err(());
    }
    Ok(Some(range))
}

/// `GET /api/v1/blobs/{sha256}` (and HEAD): Range, ETag, and `Cache-Control: immutable`.
pub async fn get_blob(
    State(state): State<AppState>,
    who: Principal,
    Path(d): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    who.require_viewer_or_device()?;
    let sha256 = digest(&d)?;
    let etag = format!("\"{sha256}\"");
    let total = state.blobs.has(&sha256).await?.ok_or_else(|| ApiError::not_found(format!("blob {sha256}")))?;
    let mut resp_headers = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).map_err(|e| ApiError::internal(&e));
    resp_headers.insert(header::ETAG, hv(&etag)?);
    resp_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    resp_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, resp_headers).into_response());
    }
    if state.config.blob_downloads == crate::blobs::Downloads::Redirect
        && let Some(url) =
            state.blobs.presign(&sha256, Duration::from_secs(state.config.blob_redirect_secs.max(1))).await?
    {
        // The bytes from the object store itself; the client keeps its Range header across the redirect and
        // checks the bytes against the signed digest as ever. The redirect is for this client only.
        let mut redirect = HeaderMap::new();
        redirect.insert(header::LOCATION, hv(&url)?);
        redirect.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
        return Ok((StatusCode::TEMPORARY_REDIRECT, redirect).into_response());
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(h) => match parse_range(h, total) {
            Ok(r) => r,
            Err(()) => {
                resp_headers.insert(header::CONTENT_RANGE, hv(&format!("bytes */{total}"))?);
                let e = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    format!("range {h:?} does not fit a blob of {total} bytes"),
                );
                return Ok((resp_headers, e).into_response());
            }
        },
    };
    let read = state.blobs.get_range(&sha256, range).await?;
    resp_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp_headers.insert(header::CONTENT_LENGTH, hv(&read.len.to_string())?);
    let status = if range.is_some() {
        resp_headers.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {}-{}/{}", read.start, read.start + read.len.max(1) - 1, read.total))?,
        );
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    Ok((status, resp_headers, Body::from_stream(ReaderStream::new(read.reader))).into_response())
}

/// Variant details and signers, read from the stored (already verified) manifest.
fn manifest_details(r: &ReleaseRow) -> (Vec<VariantInfo>, Vec<String>) {
    let Ok(envelope) = serde_json::from_str::<Envelope>(&r.manifest) else { return Default::default() };
    let signers = envelope.signatures.iter().map(|s| s.keyid.to_string()).collect();
    let Ok(m) = envelope.typed::<ReleaseManifest>() else { return (Vec::new(), signers) };
    let variants = m
        .variants
        .iter()
        .map(|v| VariantInfo {
            id: v.id.clone(),
            precision: v.precision.to_string(),
            format: serde_json::to_value(v.format).ok().and_then(|f| f.as_str().map(String::from)).unwrap_or_default(),
            size_bytes: v.raw.size,
            download_bytes: v.zstd.size,
            execution_providers: v.requirements.execution_providers.clone(),
            arch: v.requirements.arch.clone(),
            soc: v.requirements.soc.clone(),
        })
        .collect();
    (variants, signers)
}

fn summary(r: &ReleaseRow) -> ReleaseSummary {
    let (variant_details, signed_by) = manifest_details(r);
    ReleaseSummary {
        variant_details,
        signed_by,
        model: r.model.clone(),
        version: r.version,
        security_floor: r.security_floor,
        description: r.description.clone(),
        variants: r.variants.iter().filter_map(|v| v.parse().ok()).collect(),
        published_at: rfc3339(r.published_at),
        published_by: r.published_by.clone(),
    }
}

/// `POST /api/v1/releases`: the body is the signed manifest envelope.
pub async fn publish(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Publisher>,
    source: Source,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ReleaseSummary>)> {
    let trust = state.trust();
    let verified = Verifier::new(&trust.root, &LastSeen::default(), chrono::Utc::now(), &state.limits)
        .release(&body)
        .map_err(|r| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "release_refused",
            format!("refused by the {} defence: {r}", r.defence()),
        )
    })?;
    let m = &verified.manifest;
    let mut missing = Vec::new();
    for v in &m.variants {
        for (what, r) in [("model", &v.zstd), ("golden vectors", &v.golden)] {
            if state.blobs.has(&r.sha256).await? != Some(r.size) {
                missing.push(format!("{} {what} {} ({} bytes)", v.id, r.sha256, r.size));
            }
        }
    }
    if !missing.is_empty() {
        return Err(ApiError::conflict("missing_blob", format!("upload these blobs first: {}", missing.join("; "))));
    }
    let row = ReleaseRow {
        model: m.model.clone(),
        version: m.version,
        security_floor: m.security_floor,
        description: m.description.clone(),
        variants: m.variants.iter().map(|v| v.id.to_string()).collect(),
        manifest: serde_json::to_string(&verified.envelope).map_err(|e| ApiError::internal(&e))?,
        published_at: now_ms(),
        published_by: who.actor(),
    };
    match state.store.publish_release(&row).await? {
        Publish::Stored => {}
        Publish::NotNewer { latest } => {
            return Err(ApiError::conflict(
                "version_not_newer",
                format!("{} already has release {latest}; versions only go up", m.model),
            ));
        }
    }
    state
        .audit(
            &who,
            &source,
            "release.publish",
            &format!("{}/{}", m.model, m.version),
            serde_json::json!({"signed_by": verified.signed_by, "variants": row.variants}),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(summary(&row))))
}

pub async fn list_models(State(state): State<AppState>, _: Authorized<Viewer>) -> ApiResult<Json<Vec<ModelSummary>>> {
    let rows = state.store.list_models().await?;
    Ok(Json(
        rows.into_iter()
            .map(|(model, latest_version, n)| ModelSummary { model, latest_version, releases: n as u64 })
            .collect(),
    ))
}

pub async fn list_releases(
    State(state): State<AppState>,
    _: Authorized<Viewer>,
    Path(model): Path<String>,
) -> ApiResult<Json<Vec<ReleaseSummary>>> {
    let rows = state.store.list_releases(&model_name(&model)?).await?;
    Ok(Json(rows.iter().map(summary).collect()))
}

#[derive(Debug, serde::Deserialize)]
pub struct TelemetryQuery {
    /// From when (ms since the epoch); default: the last 24 hours.
    pub since: Option<i64>,
}

/// `GET /api/v1/models/{model}/telemetry[?since=MS]`: per window, release and device class, what the devices
/// reported (requests, errors, latency quantiles, energy per inference where a sensor exists, installs);
/// oldest first, at most 10,000 rows.
pub async fn telemetry(
    State(state): State<AppState>,
    _: Authorized<Viewer>,
    Path(model): Path<String>,
    axum::extract::Query(q): axum::extract::Query<TelemetryQuery>,
) -> ApiResult<Json<ModelTelemetry>> {
    let model = model_name(&model)?;
    let since = q.since.unwrap_or_else(|| now_ms() - 86_400_000);
    let rows = state.store.release_history(&model, since, 10_000).await?;
    let window = state.config.telemetry_window_secs;
    let windows = rows
        .into_iter()
        .map(|(start, c)| ReleaseWindow {
            window_start: rfc3339(start),
            release: c.release,
            stats: window_stats(&c, window),
            device_class: c.class,
        })
        .collect();
    Ok(Json(ModelTelemetry { model, window_secs: state.config.telemetry_window_secs, windows }))
}

/// A group's numbers as the API shows them.
pub(super) fn window_stats(c: &ClassStats, window_secs: u64) -> WindowStats {
    let ms = |q: f64| crate::telemetry::quantile(&c.buckets, q).map(|s| s * 1e3);
    let jpi = c.stats.joules_per_inference;
    WindowStats {
        requests: c.stats.requests,
        errors: c.stats.errors,
        p50_ms: ms(0.5),
        p95_ms: c.stats.p95_ms,
        p99_ms: ms(0.99),
        joules_per_inference: jpi,
        watts: jpi.map(|j| j * c.stats.energy_inferences as f64 / window_secs.max(1) as f64),
        installs: c.stats.installs,
        install_failures: c.stats.install_failures,
        llm: {
            let l = &c.stats.llm;
            (l.ttft_requests > 0 || l.tokens_out > 0).then(|| LlmWindowStats {
                ttft_p50_ms: l.ttft_p50_ms,
                ttft_p95_ms: l.ttft_p95_ms,
                tpot_p95_ms: l.tpot_p95_ms,
                tokens_per_second: l.tpot_p50_ms.filter(|ms| *ms > 0.0).map(|ms| 1000.0 / ms),
                prompt_tokens: l.tokens_in,
                output_tokens: l.tokens_out,
                joules_per_token: l.joules_per_token,
            })
        },
        route: {
            let r = &c.stats.route;
            (r.requests > 0 || r.cloud_errors > 0).then(|| RouteWindowStats {
                requests: r.requests,
                local: r.requests - r.cloud.min(r.requests),
                cloud: r.cloud,
                cloud_share: r.cloud_share().unwrap_or(0.0),
                by_reason: ROUTE_REASONS
                    .iter()
                    .zip(r.by_reason)
                    .filter(|(_, n)| *n > 0)
                    .map(|(name, n)| ((*name).to_owned(), n))
                    .collect(),
                cloud_errors: r.cloud_errors,
                cloud_bytes_sent: r.cloud_bytes,
                cloud_p50_ms: r.cloud_p50_ms,
                cloud_p95_ms: r.cloud_p95_ms,
            })
        },
    }
}

/// `GET /api/v1/models/{model}/releases/{version}`: the signed manifest, as published.
pub async fn get_release(
    State(state): State<AppState>,
    who: Principal,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    who.require_viewer_or_device()?;
    let (model, version) = (model_name(&model)?, release_version(&version)?);
    let row = state
        .store
        .get_release(&model, version)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("release {version} of {model}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], row.manifest).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |h: &str| parse_range(h, 100);
        assert_eq!(r("bytes=0-9"), Ok(Some(ByteRange { start: 0, end: Some(10) })));
        assert_eq!(r("bytes=90-"), Ok(Some(ByteRange { start: 90, end: None })));
        assert_eq!(r("bytes=-10"), Ok(Some(ByteRange { start: 90, end: None })));
        assert_eq!(r("bytes=95-200"), Ok(Some(ByteRange { start: 95, end: Some(100) })));
        assert_eq!(r("bytes=0-1,5-6"), Ok(None));
        for bad in ["bytes=100-", "bytes=5-1", "bytes=-0", "items=0-1", "bytes=x-1"] {
            assert_eq!(r(bad), Err(()), "{bad}");
        }
    }
}
