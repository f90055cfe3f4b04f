//! The OpenAI-compatible API for language models, on the daemon's listener beside the v2 API: `GET /v1/models`,
//! `POST /v1/chat/completions`, `POST /v1/completions`, each streamed as server-sent events (`stream: true`,
//! ending in `data: [DONE]`) or answered whole, with `max_tokens` (or `max_completion_tokens`), `temperature`,
//! `top_p`, `seed`, `stop` and a `usage` block. Errors come in OpenAI's shape,
//! `{"error": {"message", "type", "param", "code"}}`; bad input is a 400, never a crash.
//!
//! A request takes its model's handle once (a [`Lease`]) and keeps it until its last token: a stream started on
//! one release finishes on it whatever is swapped in meanwhile. When the engine's sequences and queue are all
//! taken the answer is 429 with `Retry-After`. A client that goes away drops the stream, which drops the
//! engine's receiver, which frees its sequence before the engine's next step.
//!
//! Every answer names the release that gave it (`x-edgefleet-release`, `x-edgefleet-variant`), and who
//! answered and why (`x-edgefleet-route`, `x-edgefleet-route-reason`): each request is routed first, by its
//! model's signed policy, to the local model or a cloud tier (`routed.rs`). A cloud tier's daemon
//! (`--role cloud`) answers everything itself and asks callers for its bearer token.

mod routed;
mod run;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edgefleet_runtime::llm::{ChatMessage, Engine, Sampling};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cloud::Tiers;
use crate::route::{Reason, Tier};
use crate::serving::{Lease, ModelTable};

#[derive(Debug, Clone)]
pub struct OpenAiState {
    pub models: Arc<ModelTable>,
    pub routing: Arc<Routing>,
}

/// What routing needs beyond the models: this daemon's role, the cloud tiers it is configured with, its battery.
#[derive(Debug, Default)]
pub struct Routing {
    /// This daemon is a cloud tier: it answers every request itself and asks callers for `api_token`.
    pub cloud_role: bool,
    pub tiers: Tiers,
    /// The bearer token callers of the OpenAI API must present (a cloud tier's), if any.
    pub api_token: Option<String>,
    /// The battery's `capacity` file, on a device that has one.
    pub battery: Option<std::path::PathBuf>,
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<&'static str>,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            param,
            message: message.into(),
            retry_after: None,
        }
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// `stop`: one string or up to four.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message's content: a string, or parts of which the text ones are taken.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields both endpoints share. Fields an OpenAI client may send that change nothing here (`user`,
/// `frequency_penalty` at 0, …) are accepted and ignored, as llama.cpp's server and Ollama do.
#[derive(Debug, Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(default)]
    max_completion_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: PromptField,
    #[serde(flatten)]
    common: Common,
}

/// Parses a body as JSON of `T`: invalid UTF-8 and malformed JSON are 400s in OpenAI's shape.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(None, format!("malformed request body: {e}")))
}

/// What a request asks of the engine, checked.
struct Checked {
    sampling: Sampling,
    max_tokens: Option<u32>,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn check(c: &Common) -> Result<Checked, ApiError> {
    if let Some(n) = c.n
        && n != 1
    {
        return Err(ApiError::invalid(Some("n"), format!("n = {n}: only one choice per request is served")));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(Some("temperature"), format!("temperature {temperature} is not within 0 to 2")));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(Some("top_p"), format!("top_p {top_p} is not within (0, 1]")));
    }
    let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
        None => None,
        Some(m) if m >= 1 && m <= i64::from(u32::MAX) => Some(m as u32),
        Some(m) => return Err(ApiError::invalid(Some("max_tokens"), format!("max_tokens {m} must be at least 1"))),
    };
    let stop = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(Some("stop"), "stop takes up to 4 non-empty strings"));
    }
    // OpenAI's seed is any integer; llama.cpp's is 32 bits. Without one, every request draws its own.
    let seed = c.seed.map_or_else(rand_seed, |s| (s as u64 ^ (s as u64 >> 32)) as u32);
    Ok(Checked {
        sampling: Sampling { temperature: temperature as f32, top_p: top_p as f32, seed },
        max_tokens,
        stop,
        stream: c.stream,
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

fn rand_seed() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

/// The language model serving `name`, leased for this request: `None` when nothing serves it on the device.
async fn lease(state: &OpenAiState, name: &str) -> Result<Option<Lease>, ApiError> {
    let Some(lease) = state.models.lease(name).await else { return Ok(None) };
    if lease.served.llm().is_none() {
        return Err(ApiError::invalid(
            Some("model"),
            format!("{name} is not a language model: ask it through /v2/models/{name}/infer"),
        ));
    }
    Ok(Some(lease))
}

fn not_found(name: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: Some("model_not_found"),
        param: Some("model"),
        message: format!("the model {name:?} is not served here"),
        retry_after: None,
    }
}

fn engine(lease: &Lease) -> &Engine {
    lease.served.llm().expect("leased as a language model")
}

async fn models(State(state): State<OpenAiState>) -> Json<Value> {
    let mut data: Vec<Value> = state
        .models
        .all()
        .iter()
        .filter_map(|s| {
            let e = s.llm()?;
            Some(json!({
                "id": s.model, "object": "model", "created": 0, "owned_by": "edgefleet",
                "edgefleet": {"release": s.release, "variant": s.variant, "backend": s.provider,
                    "fallbacks": s.fallbacks, "context_length": e.config.context_length,
                    "parameters": e.model.facts.parameters, "architecture": e.model.facts.architecture},
            }))
        })
        .collect();
    data.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({"object": "list", "data": data}))
}

/// Which endpoint a generation answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Chat,
    Completion,
}

async fn chat(State(state): State<OpenAiState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&body)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "messages is empty"));
    }
    let mut messages = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    Some("messages"),
                    format!("messages[{i}].role {other:?} is not system, developer, user or assistant"),
                ));
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::invalid(
                            Some("messages"),
                            format!("messages[{i}] has a {:?} part: this model reads text only", p.kind),
                        ));
                    }
                    text.push_str(p.text.as_deref().unwrap_or(""));
                }
                text
            }
        };
        if content.contains('\0') {
            return Err(ApiError::invalid(Some("messages"), format!("messages[{i}] holds a NUL character")));
        }
        messages.push(ChatMessage { role: role.into(), content });
    }
    let checked = check(&req.common)?;
    let ask = routed::Ask { kind: Kind::Chat, model: req.common.model, body, checked, input: Input::Chat(messages) };
    routed::answer(&state, &headers, ask).await
}

async fn completions(State(state): State<OpenAiState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&body)?;
    let prompt = match req.prompt {
        PromptField::One(p) => p,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(_) => return Err(ApiError::invalid(Some("prompt"), "one prompt per request is served")),
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
    }
    let checked = check(&req.common)?;
    let ask =
        routed::Ask { kind: Kind::Completion, model: req.common.model, body, checked, input: Input::Prompt(prompt) };
    routed::answer(&state, &headers, ask).await
}

/// What the local model reads: chat messages (through its template) or a bare prompt.
pub(super) enum Input {
    Chat(Vec<ChatMessage>),
    Prompt(String),
}

impl Input {
    /// The prompt's tokens for `engine`'s model.
    fn tokens(&self, engine: &Engine) -> Result<Vec<i32>, ApiError> {
        Ok(match self {
            Input::Chat(messages) => {
                let prompt = engine
                    .model
                    .apply_chat(messages)
                    .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
                // The template leaves the start-of-text token to the tokenizer (Gemma wants one, SmolLM2 none).
                engine.model.tokenize(&prompt, true)
            }
            Input::Prompt(p) => engine.model.tokenize(p, true),
        })
    }
}

/// `x-edgefleet-route` and `x-edgefleet-route-reason`: who answered, and why.
/// With a cascade, `x-edgefleet-route-confidence`: the draft's reading (mean or minimum token log-probability).
pub(super) fn route_headers(tier: Tier, reason: Reason, confidence: Option<f32>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-edgefleet-route", HeaderValue::from_static(tier.as_str()));
    h.insert("x-edgefleet-route-reason", HeaderValue::from_static(reason.as_str()));
    if let Some(v) = confidence.and_then(|c| HeaderValue::from_str(&format!("{c:.3}")).ok()) {
        h.insert("x-edgefleet-route-confidence", v);
    }
    h
}

async fn fallback() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: Some("unknown_url"),
        param: None,
        message: "no such route".into(),
        retry_after: None,
    }
}

/// The OpenAI-compatible routes; merge into the daemon's router.
pub fn router(state: OpenAiState) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/{*rest}", get(fallback).post(fallback))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// A cloud tier's API answers only callers with its token (compared in constant time).
async fn authorize(
    State(state): State<OpenAiState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.routing.api_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let same = given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0, |d, (a, b)| d | (a ^ b)) == 0;
        if !same {
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                kind: "invalid_request_error",
                code: Some("invalid_api_key"),
                param: None,
                message: "this API needs `Authorization: Bearer <token>`".into(),
                retry_after: None,
            });
        }
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_values_are_checked() {
        let common = |v: Value| serde_json::from_value::<Common>(v).unwrap();
        assert!(check(&common(json!({"model": "m"}))).is_ok());
        for (bad, param) in [
            (json!({"model": "m", "temperature": 7}), "temperature"),
            (json!({"model": "m", "temperature": -1}), "temperature"),
            (json!({"model": "m", "top_p": 0}), "top_p"),
            (json!({"model": "m", "max_tokens": 0}), "max_tokens"),
            (json!({"model": "m", "n": 3}), "n"),
            (json!({"model": "m", "stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"model": "m", "stop": ""}), "stop"),
        ] {
            let e = check(&common(bad.clone())).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(e.param, Some(param), "{bad}");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        let seeded = check(&common(json!({"model": "m", "seed": 42}))).ok().unwrap();
        assert_eq!(seeded.sampling.seed, check(&common(json!({"model": "m", "seed": 42}))).ok().unwrap().sampling.seed);
    }
}
