//! Cloud tiers: OpenAI-compatible endpoints (an `edgefleet-daemon --role cloud`, llama.cpp's server, vLLM, a
//! hosted API) that a device may send a language model's requests to when the model's signed routing policy
//! names the tier. The device's configuration says where each tier is and how to prove who it is (a bearer
//! token, or the device's own certificate for mutual TLS); the policy says whether it may be used at all.
//!
//! A tier is untrusted: its answer is read with a size cap and a time bound, and must be an OpenAI answer with
//! text in it, or it counts as failed (and the local model answers).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// The most a cloud answer may be (a chat answer is text; this is far above any real one).
pub const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// How a tier is reached, as configured on the device:
/// `name=gpu,url=https://10.0.0.5:8443/v1[,model=chat-large][,token-file=F][,ca=F][,cert=F,key=F]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierConfig {
    pub name: String,
    /// The API's base, to which `chat/completions` and `completions` are appended.
    pub url: String,
    /// The model name to ask the tier for (default: the request's).
    pub model: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The tier's CA (PEM) for an `https` URL.
    pub ca: Option<PathBuf>,
    /// A client certificate and key (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl std::str::FromStr for TierConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut c = TierConfig {
            name: String::new(),
            url: String::new(),
            model: None,
            token_file: None,
            ca: None,
            cert: None,
            key: None,
        };
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?} is not key=value"))?;
            match k {
                "name" => c.name = v.to_owned(),
                "url" => c.url = v.trim_end_matches('/').to_owned(),
                "model" => c.model = Some(v.to_owned()),
                "token-file" => c.token_file = Some(v.into()),
                "ca" => c.ca = Some(v.into()),
                "cert" => c.cert = Some(v.into()),
                "key" => c.key = Some(v.into()),
                other => return Err(format!("unknown key {other:?} (name, url, model, token-file, ca, cert, key)")),
            }
        }
        if c.name.is_empty() || !(c.url.starts_with("https://") || c.url.starts_with("http://")) {
            return Err("a tier needs name= and an http(s) url=".into());
        }
        if c.cert.is_some() != c.key.is_some() {
            return Err("cert= and key= go together".into());
        }
        if c.url.starts_with("https://") && c.ca.is_none() {
            return Err("an https tier needs ca= (its CA certificate, PEM)".into());
        }
        Ok(c)
    }
}

/// A tier, ready to ask.
#[derive(Debug, Clone)]
pub struct Tier {
    pub name: String,
    url: String,
    model: Option<String>,
    token: Option<String>,
    client: reqwest::Client,
}

/// Why a tier's answer is not used, and the request bytes it was sent all the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudFailure {
    pub why: String,
    pub bytes_sent: u64,
}

/// A tier's answer: the OpenAI JSON, and what it cost.
#[derive(Debug, Clone)]
pub struct CloudAnswer {
    pub body: Value,
    pub bytes_sent: u64,
    pub latency: Duration,
}

impl Tier {
    pub fn new(c: &TierConfig) -> anyhow::Result<Self> {
        let token = match &c.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("tier {}: reading {}", c.name, f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let client = match &c.ca {
            Some(ca) => {
                crate::identity::http_client(ca, c.cert.as_deref().zip(c.key.as_deref()), Duration::from_secs(60))
                    .with_context(|| format!("tier {}", c.name))?
            }
            // Plain HTTP (a tier on the device's own network): no TLS roots to trust.
            None => {
                let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                reqwest::Client::builder().use_preconfigured_tls(tls).connect_timeout(Duration::from_secs(5)).build()?
            }
        };
        Ok(Self { name: c.name.clone(), url: c.url.clone(), model: c.model.clone(), token, client })
    }

    /// Asks the tier to answer `request` (the client's OpenAI request body, at `path`: `chat/completions` or
    /// `completions`) whole, within `timeout`. The request goes as the client sent it, but unstreamed and for
    /// the tier's model name.
    pub async fn ask(&self, path: &str, mut request: Value, timeout: Duration) -> Result<CloudAnswer, CloudFailure> {
        let started = Instant::now();
        if let Some(m) = &self.model {
            request["model"] = Value::String(m.clone());
        }
        request["stream"] = Value::Bool(false);
        if let Some(o) = request.as_object_mut() {
            o.remove("stream_options");
        }
        let body = serde_json::to_vec(&request).map_err(|e| CloudFailure { why: e.to_string(), bytes_sent: 0 })?;
        let bytes_sent = body.len() as u64;
        let mut req =
            self.client.post(format!("{}/{path}", self.url)).header("content-type", "application/json").body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let answer = async {
            let resp = req.send().await.context("unreachable")?;
            let status = resp.status();
            if !status.is_success() {
                bail!("answered {status}: {}", crate::capped::text(resp).await.chars().take(200).collect::<String>());
            }
            let bytes = crate::capped::body(resp, MAX_ANSWER_BYTES, "the cloud's answer").await?;
            let body: Value = serde_json::from_slice(&bytes).context("not JSON")?;
            let choice = &body["choices"][0];
            let text = choice["message"]["content"].as_str().or(choice["text"].as_str());
            if text.is_none() {
                bail!("not an OpenAI answer: no choices[0] text");
            }
            anyhow::Ok(body)
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(body)) => Ok(CloudAnswer { body, bytes_sent, latency: started.elapsed() }),
            Ok(Err(e)) => Err(CloudFailure { why: format!("tier {}: {e:#}", self.name), bytes_sent }),
            Err(_) => Err(CloudFailure {
                why: format!("tier {}: no answer within {} ms", self.name, timeout.as_millis()),
                bytes_sent,
            }),
        }
    }
}

/// The tiers this device is configured with.
#[derive(Debug, Clone, Default)]
pub struct Tiers(Vec<Tier>);

impl Tiers {
    pub fn new(configs: &[TierConfig]) -> anyhow::Result<Self> {
        Ok(Self(configs.iter().map(Tier::new).collect::<anyhow::Result<_>>()?))
    }

    /// The first of `names` (a policy's tiers, preferred first) that this device knows.
    pub fn first_of(&self, names: &[String]) -> Option<&Tier> {
        names.iter().find_map(|n| self.0.iter().find(|t| &t.name == n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_configs_parse() {
        let t: TierConfig = "name=gpu,url=http://127.0.0.1:9000/v1/,model=chat-large,token-file=/t".parse().unwrap();
        assert_eq!(
            (t.name.as_str(), t.url.as_str(), t.model.as_deref()),
            ("gpu", "http://127.0.0.1:9000/v1", Some("chat-large"))
        );
        for bad in [
            "url=http://x/v1",
            "name=gpu,url=ftp://x",
            "name=gpu,url=https://x/v1",
            "name=gpu,url=http://x,cert=/c",
            "name=gpu,url=http://x,colour=blue",
            "name=gpu,http://x",
        ] {
            assert!(bad.parse::<TierConfig>().is_err(), "{bad}");
        }
    }

    /// A hostile or broken tier on loopback: each path answers one way.
    async fn hostile_tier() -> std::net::SocketAddr {
        use axum::body::Body;
        use axum::routing::post;
        let answer = r#"{"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}}]}"#;
        let endless = || {
            // Megabyte chunks for as long as the client reads (bounded, so a broken client cannot hold the test).
            let chunks = futures_util::StreamExt::take(
                futures_util::stream::repeat_with(|| Ok::<_, std::io::Error>(vec![b' '; 1 << 20])),
                256,
            );
            Body::from_stream(chunks)
        };
        let drip = || {
            let chunks = futures_util::stream::unfold(0u32, |n| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                (n < 1000).then_some((Ok::<_, std::io::Error>(vec![b' ']), n + 1))
            });
            Body::from_stream(chunks)
        };
        let app = axum::Router::new()
            .route("/good/chat/completions", post(move || async move { answer }))
            .route("/garbage/chat/completions", post(|| async { "<html>It works!</html>" }))
            .route("/shape/chat/completions", post(|| async { r#"{"choices": []}"# }))
            .route(
                "/error/chat/completions",
                post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "oops") }),
            )
            .route("/hang/chat/completions", post(|| async { tokio::time::sleep(Duration::from_secs(3600)).await }))
            .route("/endless/chat/completions", post(move || async move { endless() }))
            .route("/drip/chat/completions", post(move || async move { drip() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn a_tier_that_answers_garbage_hangs_or_never_stops_is_cut_off_at_its_bounds() {
        let addr = hostile_tier().await;
        let tier = |path: &str| Tier::new(&format!("name=gpu,url=http://{addr}/{path}").parse().unwrap()).unwrap();
        let request = serde_json::json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "Capital of France?"}]});
        let timeout = Duration::from_millis(1500);
        let good = tier("good").ask("chat/completions", request.clone(), timeout).await.expect("an answer");
        assert_eq!(good.body["choices"][0]["message"]["content"], "Paris");
        assert_eq!(
            good.bytes_sent,
            serde_json::to_vec(&{
                let mut r = request.clone();
                r["stream"] = Value::Bool(false);
                r
            })
            .unwrap()
            .len() as u64
        );
        for (path, why) in [
            ("garbage", "not JSON"),
            ("shape", "not an OpenAI answer"),
            ("error", "answered 500"),
            ("hang", "no answer within 1500 ms"),
            ("endless", "more than the limit of 4194304 bytes"),
            ("drip", "no answer within 1500 ms"),
        ] {
            let f = tier(path).ask("chat/completions", request.clone(), timeout).await.expect_err(path);
            assert!(f.why.contains(why), "{path}: {}", f.why);
            assert!(f.bytes_sent > 0, "{path}: the request was sent, and counted");
        }
        // Nobody listening: failed as unreachable.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let down = Tier::new(&format!("name=gpu,url=http://{closed}/v1").parse().unwrap()).unwrap();
        assert!(down.ask("chat/completions", request, timeout).await.expect_err("down").why.contains("unreachable"));
    }
}
