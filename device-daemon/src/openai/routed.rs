//! One request to a language model, routed and answered: the signals are read, [`crate::route::before`]
//! decides, and either a cloud tier answers (its answer passed on in the shape the client asked for) or the
//! local model generates. With a cascade in the policy, the local model drafts its first tokens first; a draft
//! below the confidence bar is dropped and the cloud answers. A cloud tier that fails leaves the answer to the
//! local model, flagged `cloud_failed`: never an error, unless the policy is `cloud_only`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgefleet_runtime::llm::GenRequest;
use model_registry::routing::{RouteMode, RoutingPolicy};
use serde_json::{Value, json};

use super::run::{Run, Utf8Pieces, event, sse};
use super::{ApiError, Checked, Input, Kind, OpenAiState, engine, lease, not_found, route_headers};
use crate::cloud::{CloudAnswer, CloudFailure, Tier as CloudTier};
use crate::route::{self, Reason, Signals, Tier};
use crate::serving::Lease;

/// A request, parsed and checked, before it is routed.
pub(in crate::openai) struct Ask {
    pub kind: Kind,
    pub model: String,
    /// The client's body as it came, for a cloud tier.
    pub body: Bytes,
    pub checked: Checked,
    pub input: Input,
}

impl Ask {
    fn path(&self) -> &'static str {
        match self.kind {
            Kind::Chat => "chat/completions",
            Kind::Completion => "completions",
        }
    }
}

fn header_u32(headers: &HeaderMap, name: &str) -> Option<u32> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

pub(in crate::openai) async fn answer(
    state: &OpenAiState,
    headers: &HeaderMap,
    ask: Ask,
) -> Result<Response, ApiError> {
    let mut lease = lease(state, &ask.model).await?;
    // A cloud tier answers everything itself; a device follows the signed policy of the model's release.
    let policy = if state.routing.cloud_role { None } else { state.models.policy(&ask.model) };
    if lease.is_none() && policy.is_none() {
        return Err(not_found(&ask.model));
    }
    let policy = policy.unwrap_or_else(|| Arc::new(RoutingPolicy::local()));
    let mut tokens = lease.as_ref().map(|l| ask.input.tokens(engine(l))).transpose()?;
    let tier = if policy.private { None } else { state.routing.tiers.first_of(&policy.tiers) };
    let signals = Signals {
        prompt_tokens: tokens.as_ref().map(|t| t.len() as u32),
        prefill_tokens_per_sec: lease.as_ref().and_then(|l| l.served.prefill_rate()),
        request_ttft_slo_ms: header_u32(headers, "x-edgefleet-ttft-slo-ms"),
        // Read only when a rule judges it: a file read per request costs what the rest of routing does.
        battery_percent: (policy.rules.min_battery_percent.is_some())
            .then_some(state.routing.battery.as_deref())
            .flatten()
            .and_then(crate::power::battery_percent),
        local_ready: lease.is_some(),
        queue_depth: lease.as_ref().map_or(0, |l| engine(l).inflight() as u32),
        requested: match headers.get("x-edgefleet-route").and_then(|v| v.to_str().ok()) {
            Some("local") => Some(Tier::Local),
            Some("cloud") => Some(Tier::Cloud),
            _ => None,
        },
        cloud_configured: tier.is_some(),
    };
    let decision = route::before(&policy, &signals);
    let timeout = Duration::from_millis(policy.cloud_timeout_ms.into());
    // The local release in force, which route telemetry is counted against.
    let local = lease.as_ref().map(|l| (l.served.release.get(), l.served.variant.to_string()));
    let local = local.as_ref().map(|(r, v)| (*r, v.as_str()));
    let mut reason = decision.reason;
    if let (Tier::Cloud, Some(tier)) = (decision.tier, tier) {
        // The local release is not held while the cloud answers: a swap that drains it need not wait.
        drop((lease.take(), tokens.take()));
        match ask_cloud(tier, &ask, local, timeout).await {
            Ok(a) => return Ok(cloud_response(a, &ask, local, decision.reason, None)),
            Err(f) if policy.mode == RouteMode::CloudOnly => {
                return Err(ApiError {
                    status: StatusCode::BAD_GATEWAY,
                    kind: "server_error",
                    code: Some("cloud_failed"),
                    param: None,
                    message: format!("this model is answered in the cloud only, and the cloud failed: {}", f.why),
                    retry_after: Some(1),
                });
            }
            Err(_) => {
                reason = Reason::CloudFailed;
                lease = super::lease(state, &ask.model).await?;
                tokens = lease.as_ref().map(|l| ask.input.tokens(engine(l))).transpose()?;
            }
        }
    }
    let (Some(lease), Some(tokens)) = (lease, tokens) else {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            code: Some("model_not_ready"),
            param: Some("model"),
            message: format!("{} is not ready on this device yet, and no cloud tier may answer", ask.model),
            retry_after: Some(5),
        });
    };
    let cascade = policy.rules.confidence.filter(|_| reason == Reason::Rules).zip(tier);
    let mut run = start(lease, ask.kind, tokens, &ask.checked, cascade.is_some(), reason)?;
    if let Some((confidence, tier)) = cascade {
        let logprobs = run.draft(confidence.tokens).await;
        run.confidence = route::reading(&confidence, &logprobs);
        if !route::confident(&confidence, &logprobs) {
            match ask_cloud(tier, &ask, local, timeout).await {
                Ok(a) => {
                    let run_confidence = run.confidence;
                    // The draft is dropped (its sequence freed) and not counted as an answer of this release.
                    run.recorded = true;
                    drop(run);
                    return Ok(cloud_response(a, &ask, local, Reason::LowConfidence, run_confidence));
                }
                Err(_) => run.reason = Reason::CloudFailed,
            }
        }
    }
    respond(run, ask.checked.stream, ask.checked.include_usage).await
}

/// Sends the request to `tier` and counts what it cost.
async fn ask_cloud(
    tier: &CloudTier,
    ask: &Ask,
    local: Option<(u64, &str)>,
    timeout: Duration,
) -> Result<CloudAnswer, CloudFailure> {
    let request: Value = serde_json::from_slice(&ask.body).unwrap_or(Value::Null);
    let result = tier.ask(ask.path(), request, timeout).await;
    match &result {
        Ok(a) => crate::telemetry::cloud_call(&ask.model, local, &tier.name, a.bytes_sent, Some(a.latency)),
        Err(f) => {
            tracing::warn!(model = %ask.model, tier = %tier.name, why = %f.why, "the cloud tier failed; answering locally");
            crate::telemetry::cloud_call(&ask.model, local, &tier.name, f.bytes_sent, None);
        }
    }
    result
}

/// A cloud tier's answer, in the shape the client asked for: the tier's JSON as it came, or (for `stream`) as
/// server-sent events carrying the whole text in one chunk.
fn cloud_response(
    a: CloudAnswer,
    ask: &Ask,
    local: Option<(u64, &str)>,
    reason: Reason,
    confidence: Option<f32>,
) -> Response {
    crate::telemetry::routed(&ask.model, local, Tier::Cloud.as_str(), reason.as_str());
    let route = route_headers(Tier::Cloud, reason, confidence);
    if !ask.checked.stream {
        let mut r = Json(a.body).into_response();
        r.headers_mut().extend(route);
        return r;
    }
    let b = &a.body;
    let choice = &b["choices"][0];
    let text = choice["message"]["content"].as_str().or(choice["text"].as_str()).unwrap_or_default();
    let finish = choice["finish_reason"].as_str().unwrap_or("stop");
    let (object, delta, end) = match ask.kind {
        Kind::Chat => (
            "chat.completion.chunk",
            json!({"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}),
            json!({"index": 0, "delta": {}, "finish_reason": finish}),
        ),
        Kind::Completion => (
            "text_completion",
            json!({"index": 0, "text": text, "finish_reason": null}),
            json!({"index": 0, "text": "", "finish_reason": finish}),
        ),
    };
    let chunk = |choices: Value| {
        event(
            &json!({"id": b["id"], "object": object, "created": b["created"], "model": b["model"], "choices": choices}),
        )
    };
    let mut events = vec![chunk(json!([delta])), chunk(json!([end]))];
    if ask.checked.include_usage && b["usage"].is_object() {
        events.push(event(&json!({"id": b["id"], "object": object, "created": b["created"], "model": b["model"],
            "choices": [], "usage": b["usage"]})));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let body = Body::from_stream(futures_util::stream::iter(events.into_iter().map(Ok::<_, std::io::Error>)));
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r.headers_mut().extend(route);
    r
}

/// Starts a local generation, or answers why it cannot start.
fn start(
    lease: Lease,
    kind: Kind,
    prompt: Vec<i32>,
    c: &Checked,
    logprobs: bool,
    reason: Reason,
) -> Result<Run, ApiError> {
    let started = Instant::now();
    let e = engine(&lease);
    let context = e.config.context_length;
    let prompt_len = prompt.len() as u32;
    if prompt_len >= context {
        return Err(ApiError::invalid(
            Some("messages"),
            format!("the prompt is {prompt_len} tokens; this model's context holds {context}, answer included"),
        )
        .code("context_length_exceeded"));
    }
    let room = context - prompt_len;
    let max_tokens = match c.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                format!("max_tokens {m} and a prompt of {prompt_len} tokens exceed the context of {context}"),
            )
            .code("context_length_exceeded"));
        }
        Some(m) => m,
        None => room,
    };
    let request = GenRequest { prompt, max_tokens, sampling: c.sampling, logprobs };
    let submitted = e.submit(request).map_err(|err| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "server_error",
        code: None,
        param: None,
        message: err.to_string(),
        retry_after: Some(1),
    })?;
    let Some(submitted) = submitted else {
        return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            code: Some("queue_full"),
            param: None,
            message: format!(
                "every sequence of {} is busy and its queue of {} is full; try again shortly",
                lease.served.model, e.config.queue
            ),
            retry_after: Some(1),
        });
    };
    Ok(Run {
        id: format!("{}-{:016x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, rand_u64()),
        created: chrono::Utc::now().timestamp(),
        kind,
        started,
        first_at: None,
        last_at: None,
        text: Utf8Pieces::default(),
        held: String::new(),
        stop: c.stop.clone(),
        events: submitted.events,
        drafted: Default::default(),
        usage: (prompt_len, 0),
        finished: None,
        recorded: false,
        reason,
        confidence: None,
        lease,
    })
}

/// Answers a local generation whole or as a stream.
async fn respond(mut run: Run, stream: bool, include_usage: bool) -> Result<Response, ApiError> {
    let headers = run.headers();
    if stream {
        let body = Body::from_stream(sse(run, include_usage));
        let mut r = Response::new(body);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r.headers_mut().extend(headers);
        return Ok(r);
    }
    let mut text = String::new();
    while let Some(piece) = run.next_text().await {
        text.push_str(&piece);
    }
    if let Some(Err(why)) = &run.finished {
        return Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            code: None,
            param: None,
            message: format!("generation failed: {why}"),
            retry_after: None,
        });
    }
    let finish = run.finish_reason();
    let choice = match run.kind {
        Kind::Chat => {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": null})
        }
        Kind::Completion => json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null}),
    };
    let object = if run.kind == Kind::Chat { "chat.completion" } else { "text_completion" };
    let mut r = Json(json!({
        "id": run.id, "object": object, "created": run.created, "model": run.lease.served.model,
        "choices": [choice], "usage": run.usage_json(), "system_fingerprint": run.fingerprint(),
    }))
    .into_response();
    r.headers_mut().extend(headers);
    Ok(r)
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}
