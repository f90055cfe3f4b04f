//! `POST /v1/metrics`: the OTLP/HTTP metrics receiver, for devices (mutual TLS). Protobuf
//! (`application/x-protobuf`) or OTLP JSON (`application/json`). A device over its rate gets 429 before its
//! body is read; a body over the size limit 413; one that does not decode 400; points that are refused are
//! counted by reason and named in the answer's `partial_success`, as OTLP prescribes.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;

use super::{ApiError, ApiResult, DeviceCaller};
use crate::state::{AppState, now_ms};
use crate::telemetry::{ensure_loaded, otlp};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

fn encoding(headers: &HeaderMap) -> ApiResult<Encoding> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ct = ct.split(';').next().unwrap_or("").trim();
    match ct {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send OTLP as application/x-protobuf or application/json",
        )),
    }
}

fn malformed(state: &AppState, what: String) -> ApiError {
    state.ingest.counters.exports_malformed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ApiError::bad_request("malformed_otlp", what)
}

pub async fn export(
    State(state): State<AppState>,
    DeviceCaller(id): DeviceCaller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let now = now_ms();
    if let Err(wait) = state.ingest.admit(&id, now) {
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("device {id} sends exports faster than the server takes them; retry in {wait} s"),
        )
        .into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return Ok(resp);
    }
    let enc = encoding(&headers)?;
    if headers.get(header::CONTENT_ENCODING).is_some_and(|v| v != "identity") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            "send OTLP uncompressed (no Content-Encoding)",
        ));
    }
    let limit = state.config.telemetry_max_export_bytes;
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("an export may be at most {limit} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| too_large())?;
    let req = match enc {
        Encoding::Protobuf => ExportMetricsServiceRequest::decode(bytes.as_ref())
            .map_err(|e| malformed(&state, format!("not an OTLP metrics export: {e}")))?,
        Encoding::Json => serde_json::from_slice::<ExportMetricsServiceRequest>(&bytes)
            .map_err(|e| malformed(&state, format!("not an OTLP metrics export: {e}")))?,
    };
    ensure_loaded(&state, &id).await?;
    // What the server told this device to run (its current document and the one before), never what the export
    // says it runs: one device cannot put numbers under a release its plan does not name.
    let told = super::devices::told_releases(&state, &id).await?;
    let decoded = otlp::decode(&req, &id, (now.max(0) as u64).saturating_mul(1_000_000));
    let applied = state.ingest.apply(&id, decoded, |m, r| told.iter().any(|(tm, tr)| tm == m && *tr == r), now);
    let partial_success = (!applied.refused.is_empty()).then(|| {
        let mut reasons: Vec<&str> = applied.refused.iter().map(|(r, _)| r.as_str()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        let first = &applied.refused[0].1;
        ExportMetricsPartialSuccess {
            rejected_data_points: applied.refused.len() as i64,
            error_message: format!("refused: {} (first: {first})", reasons.join(", ")),
        }
    });
    if let Some(p) = &partial_success {
        tracing::debug!(device = %id, refused = p.rejected_data_points, why = %p.error_message, "OTLP points refused");
    }
    let answer = ExportMetricsServiceResponse { partial_success };
    Ok(match enc {
        Encoding::Protobuf => {
            ([(header::CONTENT_TYPE, "application/x-protobuf")], answer.encode_to_vec()).into_response()
        }
        Encoding::Json => {
            let body = serde_json::to_vec(&answer).map_err(|e| ApiError::internal(&e))?;
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    })
}
