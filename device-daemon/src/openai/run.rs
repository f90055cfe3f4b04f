//! One local generation in progress ([`Run`]): tokens in, whole UTF-8 text out, stop strings held back and
//! cut, counted once in health and telemetry, and streamed as server-sent events.

use std::collections::VecDeque;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::HeaderValue;
use edgefleet_runtime::llm::{Finish, GenEvent};
use futures_util::stream;
use serde_json::{Value, json};

use super::Kind;
use crate::route::{Reason, Tier};
use crate::serving::Lease;

/// Bytes of token pieces in, whole UTF-8 characters out (a character may span tokens).
#[derive(Debug, Default)]
pub(super) struct Utf8Pieces {
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
pub(super) struct Run {
    pub id: String,
    pub created: i64,
    pub kind: Kind,
    pub started: Instant,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
    pub text: Utf8Pieces,
    /// Text held back because it may be the start of a stop string.
    pub held: String,
    pub stop: Vec<String>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<GenEvent>,
    /// Events already taken from `events` by [`Run::draft`], read before it.
    pub drafted: VecDeque<GenEvent>,
    /// Prompt and completion tokens.
    pub usage: (u32, u32),
    /// How it ended: `Ok(reason)` or `Err(why)`.
    pub finished: Option<Result<&'static str, String>>,
    pub recorded: bool,
    /// Why the device answers this request itself.
    pub reason: Reason,
    /// The cascade's reading of the draft's first tokens, when it judged one.
    pub confidence: Option<f32>,
    /// Held to the last token: this release answers the whole request.
    pub lease: Lease,
}

impl Run {
    /// Waits for the first `tokens` tokens (or the end of a shorter answer) and answers their log-probabilities;
    /// the tokens stay to be read as text.
    pub async fn draft(&mut self, tokens: u32) -> Vec<f32> {
        let mut logprobs = Vec::new();
        while logprobs.len() < tokens as usize {
            let Some(event) = self.events.recv().await else { break };
            let end = matches!(event, GenEvent::Done { .. } | GenEvent::Failed(_));
            if let GenEvent::Token { logprob, .. } = &event {
                logprobs.push(logprob.unwrap_or(0.0));
                self.first_at.get_or_insert_with(Instant::now);
            }
            self.drafted.push_back(event);
            if end {
                break;
            }
        }
        logprobs
    }

    async fn next_event(&mut self) -> Option<GenEvent> {
        match self.drafted.pop_front() {
            Some(e) => Some(e),
            None => self.events.recv().await,
        }
    }

    pub fn headers(&self) -> axum::http::HeaderMap {
        let mut h = super::route_headers(Tier::Local, self.reason, self.confidence);
        let s = &self.lease.served;
        if let Ok(v) = HeaderValue::from_str(&s.release.to_string()) {
            h.insert("x-edgefleet-release", v);
        }
        if let Ok(v) = HeaderValue::from_str(s.variant.as_str()) {
            h.insert("x-edgefleet-variant", v);
        }
        h
    }

    pub fn fingerprint(&self) -> String {
        format!("edgefleet-{}-{}", self.lease.served.release, self.lease.served.variant)
    }

    pub fn finish_reason(&self) -> &'static str {
        match &self.finished {
            Some(Ok(r)) => r,
            _ => "stop",
        }
    }

    pub fn usage_json(&self) -> Value {
        let (p, c) = self.usage;
        json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
    }

    /// The next piece of text to send, or `None` once finished (then `finished` says how).
    pub async fn next_text(&mut self) -> Option<String> {
        loop {
            if self.finished.is_some() {
                let rest = std::mem::take(&mut self.held) + &self.text.flush();
                self.record();
                return (!rest.is_empty()).then_some(rest);
            }
            match self.next_event().await {
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
        if let Some(t) = ttft {
            served.observe_prefill(self.usage.0, t);
        }
        crate::telemetry::routed(
            served.model.as_str(),
            Some((served.release.get(), served.variant.as_str())),
            "local",
            self.reason.as_str(),
        );
        served.record(ok, ttft.unwrap_or_else(|| self.started.elapsed()));
        let per_token = match (self.first_at, self.last_at) {
            (Some(a), Some(b)) if self.usage.1 > 1 => Some((b - a) / (self.usage.1 - 1)),
            _ => None,
        };
        if let Some(i) = &served.llm_instruments {
            i.record(ttft, per_token, u64::from(self.usage.0), u64::from(self.usage.1));
        }
    }

    pub fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
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

pub(super) fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The stream of server-sent events of a run: the role, each piece of text, the finish, usage if asked, `[DONE]`.
pub(super) fn sse(run: Run, include_usage: bool) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
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
}
