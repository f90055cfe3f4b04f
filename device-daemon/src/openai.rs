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
//! Every answer names the release that gave it (`x-edgefleet-release`, `x-edgefleet-variant`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edgefleet_runtime::llm::{ChatMessage, Engine, Finish, GenEvent, GenRequest, Sampling};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::serving::{Lease, ModelTable};

#[derive(Debug, Clone)]
pub struct OpenAiState {
    pub models: Arc<ModelTable>,
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

/// The language model serving `name`, leased for this request.
async fn lease(state: &OpenAiState, name: &str) -> Result<Lease, ApiError> {
    let not_found = || ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: Some("model_not_found"),
        param: Some("model"),
        message: format!("the model {name:?} is not served here"),
        retry_after: None,
    };
    let lease = state.models.lease(name).await.ok_or_else(not_found)?;
    if lease.served.llm().is_none() {
        return Err(ApiError::invalid(
            Some("model"),
            format!("{name} is not a language model: ask it through /v2/models/{name}/infer"),
        ));
    }
    Ok(lease)
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
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(state): State<OpenAiState>, body: Bytes) -> Result<Response, ApiError> {
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
    let lease = lease(&state, &req.common.model).await?;
    let prompt =
        engine(&lease).model.apply_chat(&messages).map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))?;
    // The template leaves the start-of-text token to the tokenizer (Gemma wants one, SmolLM2 none).
    let tokens = engine(&lease).model.tokenize(&prompt, true);
    generate(lease, Kind::Chat, tokens, checked).await
}

async fn completions(State(state): State<OpenAiState>, body: Bytes) -> Result<Response, ApiError> {
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
    let lease = lease(&state, &req.common.model).await?;
    let tokens = engine(&lease).model.tokenize(&prompt, true);
    generate(lease, Kind::Completion, tokens, checked).await
}

/// Starts the generation (or answers why not) and answers it whole or as a stream.
async fn generate(lease: Lease, kind: Kind, prompt: Vec<i32>, c: Checked) -> Result<Response, ApiError> {
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
    let request = GenRequest { prompt, max_tokens, sampling: c.sampling, logprobs: false };
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
    let run = Run {
        id: format!("{}-{:016x}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }, rand_u64()),
        created: chrono::Utc::now().timestamp(),
        kind,
        started,
        first_at: None,
        last_at: None,
        text: Utf8Pieces::default(),
        held: String::new(),
        stop: c.stop,
        events: submitted.events,
        usage: (prompt_len, 0),
        finished: None,
        recorded: false,
        lease,
    };
    let headers = run.headers();
    if c.stream {
        let body = Body::from_stream(sse(run, c.include_usage));
        let mut r = Response::new(body);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r.headers_mut().extend(headers);
        return Ok(r);
    }
    let mut run = run;
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
    let choice = match kind {
        Kind::Chat => {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": null})
        }
        Kind::Completion => json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null}),
    };
    let object = if kind == Kind::Chat { "chat.completion" } else { "text_completion" };
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

/// Bytes of token pieces in, whole UTF-8 characters out (a character may span tokens).
#[derive(Debug, Default)]
struct Utf8Pieces {
    pending: Vec<u8>,
}

impl Utf8Pieces {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let out = s.to_owned();
                self.pending.clear();
                out
            }
            Err(e) if e.error_len().is_none() => {
                // An incomplete character at the end: keep it for the next piece.
                let valid = e.valid_up_to();
                let out = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
                self.pending.drain(..valid);
                out
            }
            Err(_) => String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned(),
        }
    }

    fn flush(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}

/// One generation in progress.
struct Run {
    id: String,
    created: i64,
    kind: Kind,
    started: Instant,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    text: Utf8Pieces,
    /// Text held back because it may be the start of a stop string.
    held: String,
    stop: Vec<String>,
    events: tokio::sync::mpsc::UnboundedReceiver<GenEvent>,
    /// Prompt and completion tokens.
    usage: (u32, u32),
    /// How it ended: `Ok(reason)` or `Err(why)`.
    finished: Option<Result<&'static str, String>>,
    recorded: bool,
    /// Held to the last token: this release answers the whole request.
    lease: Lease,
}

impl Run {
    fn headers(&self) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        let s = &self.lease.served;
        if let Ok(v) = HeaderValue::from_str(&s.release.to_string()) {
            h.insert("x-edgefleet-release", v);
        }
        if let Ok(v) = HeaderValue::from_str(s.variant.as_str()) {
            h.insert("x-edgefleet-variant", v);
        }
        h
    }

    fn fingerprint(&self) -> String {
        format!("edgefleet-{}-{}", self.lease.served.release, self.lease.served.variant)
    }

    fn finish_reason(&self) -> &'static str {
        match &self.finished {
            Some(Ok(r)) => r,
            _ => "stop",
        }
    }

    fn usage_json(&self) -> Value {
        let (p, c) = self.usage;
        json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
    }

    /// The next piece of text to send, or `None` once finished (then `finished` says how).
    async fn next_text(&mut self) -> Option<String> {
        loop {
            if self.finished.is_some() {
                let rest = std::mem::take(&mut self.held) + &self.text.flush();
                self.record();
                return (!rest.is_empty()).then_some(rest);
            }
            match self.events.recv().await {
                None => self.finished = Some(Err("the engine stopped".into())),
                Some(GenEvent::Started) => {}
                Some(GenEvent::Token { bytes, .. }) => {
                    let now = Instant::now();
                    self.first_at.get_or_insert(now);
                    self.last_at = Some(now);
                    self.usage.1 += 1;
                    self.held.push_str(&self.text.push(&bytes));
                    if let Some(at) = self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
                        // A stop string: what comes before it is the answer's end; the engine is let go of.
                        self.held.truncate(at);
                        self.text = Utf8Pieces::default();
                        self.finished = Some(Ok("stop"));
                        self.events.close();
                        continue;
                    }
                    let keep = self.stop.iter().map(|s| partial_suffix(&self.held, s)).max().unwrap_or(0);
                    let cut = self.held.len() - keep;
                    if cut > 0 {
                        let out: String = self.held.drain(..cut).collect();
                        return Some(out);
                    }
                }
                Some(GenEvent::Done { finish, prompt_tokens, completion_tokens }) => {
                    self.usage = (prompt_tokens, completion_tokens);
                    self.finished = Some(Ok(match finish {
                        Finish::Stop => "stop",
                        Finish::Length => "length",
                    }));
                }
                Some(GenEvent::Failed(why)) => self.finished = Some(Err(why)),
            }
        }
    }

    /// Counts the request once: health (its latency is its time to first token) and telemetry.
    fn record(&mut self) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let served = &self.lease.served;
        let ok = matches!(self.finished, Some(Ok(_)));
        let ttft = self.first_at.map(|t| t - self.started);
        served.record(ok, ttft.unwrap_or_else(|| self.started.elapsed()));
        let per_token = match (self.first_at, self.last_at) {
            (Some(a), Some(b)) if self.usage.1 > 1 => Some((b - a) / (self.usage.1 - 1)),
            _ => None,
        };
        if let Some(i) = &served.llm_instruments {
            i.record(ttft, per_token, u64::from(self.usage.0), u64::from(self.usage.1));
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let choice = match self.kind {
            Kind::Chat => json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}),
            Kind::Completion => {
                json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish, "logprobs": null})
            }
        };
        let object = if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
        event(&json!({"id": self.id, "object": object, "created": self.created, "model": self.lease.served.model,
            "system_fingerprint": self.fingerprint(), "choices": [choice]}))
    }
}

impl Drop for Run {
    /// A client that went away mid-stream still counts: as an answered request if tokens came.
    fn drop(&mut self) {
        if !self.recorded && self.first_at.is_some() {
            self.finished.get_or_insert(Ok("stop"));
            self.record();
        }
    }
}

/// How many bytes at the end of `text` could be the start of `stop` (so must be held back).
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && stop.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The stream of server-sent events of a run: the role, each piece of text, the finish, usage if asked, `[DONE]`.
fn sse(run: Run, include_usage: bool) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    enum Phase {
        Start,
        Text,
        Usage,
        Done,
        End,
    }
    stream::unfold((run, Phase::Start), move |(mut run, phase)| async move {
        match phase {
            Phase::Start => {
                let first = match run.kind {
                    Kind::Chat => run.chunk(json!({"role": "assistant", "content": ""}), None),
                    Kind::Completion => run.chunk(json!({"content": ""}), None),
                };
                Some((Ok(first), (run, Phase::Text)))
            }
            Phase::Text => match run.next_text().await {
                Some(text) => {
                    let c = run.chunk(json!({"content": text}), None);
                    Some((Ok(c), (run, Phase::Text)))
                }
                None => match run.finished.clone() {
                    Some(Err(why)) => {
                        let e = event(
                            &json!({"error": {"message": format!("generation failed: {why}"), "type": "server_error", "param": null, "code": null}}),
                        );
                        Some((Ok(e), (run, Phase::Done)))
                    }
                    _ => {
                        let c = run.chunk(json!({}), Some(run.finish_reason()));
                        let next = if include_usage { Phase::Usage } else { Phase::Done };
                        Some((Ok(c), (run, next)))
                    }
                },
            },
            Phase::Usage => {
                let object = if run.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
                let u = event(&json!({"id": run.id, "object": object, "created": run.created,
                    "model": run.lease.served.model, "choices": [], "usage": run.usage_json()}));
                Some((Ok(u), (run, Phase::Done)))
            }
            Phase::Done => Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), (run, Phase::End))),
            Phase::End => None,
        }
    })
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
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_pieces_hold_split_characters() {
        let mut p = Utf8Pieces::default();
        let e = "é".as_bytes();
        assert_eq!(p.push(&e[..1]), "");
        assert_eq!(p.push(&e[1..]), "é");
        assert_eq!(p.push(b"ab\xff"), "ab\u{fffd}");
        assert_eq!(p.push(&"€".as_bytes()[..2]), "");
        assert_eq!(p.flush(), "\u{fffd}");
    }

    #[test]
    fn stop_prefixes_are_held_back() {
        assert_eq!(partial_suffix("hello wor", "world"), 3);
        assert_eq!(partial_suffix("hello", "world"), 0);
        assert_eq!(partial_suffix("abc\n", "\n\n"), 1);
        assert_eq!(partial_suffix("é", "\u{e9}x"), 2);
    }

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
