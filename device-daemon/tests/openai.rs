//! The OpenAI-compatible API over a real language model (SmolLM2-135M-Instruct Q4_1 from `.cache/`): answers
//! whole and streamed, in OpenAI's shapes; bad input is a 400 in OpenAI's error shape; a full queue is a 429
//! with Retry-After; a client that disconnects frees its sequence; a swap under streams fails none of them.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_daemon::openai::{OpenAiState, router};
use edgefleet_daemon::serving::{ModelTable, Served};
use edgefleet_e2e::cache;
use edgefleet_runtime::llm::{EngineConfig, LlmOptions};
use serde_json::{Value, json};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn load(file: &str, release: u64, sequences: u32, queue: usize) -> Served {
    let template = edgefleet_runtime::llm::LlmModel::load(&cache(file), &LlmOptions::default())
        .expect("model loads")
        .facts
        .chat_template
        .map(|t| edgefleet_protocol::Sha256Digest::of(t.as_bytes()));
    Served::load_llm(
        &cache(file),
        &LlmOptions::default(),
        EngineConfig { context_length: 512, sequences, queue, batch: 128, threads: Some(2) },
        (None, template.as_ref()),
        "chat".parse().expect("name"),
        edgefleet_protocol::ReleaseVersion::new(release).expect("version"),
        "cpu".parse().expect("variant"),
        "a",
    )
    .expect("model loads")
}

const SMOLLM: &str = "models/llm/smollm2-135m-instruct-q4_1.gguf";

async fn serve(models: Arc<ModelTable>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(listener, router(OpenAiState { models, routing: Default::default() })).await.expect("serve");
    });
    url
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": "chat", "messages": [{"role": "user", "content": content}], "temperature": 0});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// The `data:` payloads of a server-sent-event body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_answer_whole_and_streamed() {
    let models = Arc::new(ModelTable::default());
    models.install(load(SMOLLM, 1, 2, 4));
    let (client, url) = (http(), serve(models).await);

    let listed: Value = client.get(format!("{url}/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"][0]["id"], "chat");
    assert_eq!(listed["data"][0]["edgefleet"]["backend"], "CPU");

    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat("What is the capital of France?", json!({"max_tokens": 24})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-edgefleet-release"], "1");
    let whole: Value = r.json().await.unwrap();
    assert_eq!(whole["object"], "chat.completion");
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert!(text.contains("Paris"), "{text:?}");
    let usage = &whole["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // The same, streamed: the same text (greedy), chunk by chunk, then the finish, usage, [DONE].
    let body = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat(
            "What is the capital of France?",
            json!({"max_tokens": 24, "stream": true, "stream_options": {"include_usage": true}}),
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evs = events(&body);
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = evs[..evs.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(streamed, text);
    assert!(chunks.len() > 5, "tokens arrive one by one: {} chunks", chunks.len());
    let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str()).unwrap();
    assert_eq!(finish, whole["choices"][0]["finish_reason"].as_str().unwrap());
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);

    // A stop string ends the answer before it; max_tokens ends it with "length".
    let stopped: Value = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat("What is the capital of France?", json!({"stop": ["Paris"]})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let s = stopped["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!s.contains("Paris") && text.starts_with(s), "{s:?} vs {text:?}");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let short: Value = client
        .post(format!("{url}/v1/completions"))
        .json(&json!({"model": "chat", "prompt": "Once upon a time", "max_tokens": 3, "temperature": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(short["object"], "text_completion");
    assert_eq!(short["choices"][0]["finish_reason"], "length");
    assert_eq!(short["usage"]["completion_tokens"], 3);

    // Sampling with a seed is repeatable.
    let seeded = || async {
        let v: Value = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat("Tell me a word.", json!({"temperature": 1.0, "top_p": 0.9, "seed": 7, "max_tokens": 8})))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
    };
    assert_eq!(seeded().await, seeded().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_in_openais_shape() {
    let models = Arc::new(ModelTable::default());
    models.install(load(SMOLLM, 1, 1, 1));
    let (client, url) = (http(), serve(models).await);
    let long = "word ".repeat(700);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("malformed JSON", b"{\"model\": ".to_vec(), "malformed"),
        (
            "invalid UTF-8",
            b"{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}".to_vec(),
            "malformed",
        ),
        (
            "unknown role",
            serde_json::to_vec(&json!({"model": "chat", "messages": [{"role": "wizard", "content": "hi"}]})).unwrap(),
            "role",
        ),
        ("no messages", serde_json::to_vec(&json!({"model": "chat", "messages": []})).unwrap(), "empty"),
        ("absurd temperature", serde_json::to_vec(&chat("hi", json!({"temperature": 1e9}))).unwrap(), "temperature"),
        ("negative max_tokens", serde_json::to_vec(&chat("hi", json!({"max_tokens": -5}))).unwrap(), "max_tokens"),
        (
            "max_tokens past the context",
            serde_json::to_vec(&chat("hi", json!({"max_tokens": 100000}))).unwrap(),
            "exceed the context",
        ),
        ("a prompt longer than the context", serde_json::to_vec(&chat(&long, json!({}))).unwrap(), "context holds"),
        (
            "an image part",
            serde_json::to_vec(
                &json!({"model": "chat", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            )
            .unwrap(),
            "text only",
        ),
    ];
    for (what, body, says) in cases {
        let r = client
            .post(format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{what}: {e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
    }
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat("hi", json!({})).as_object().map(|o| {
            let mut o = o.clone();
            o.insert("model".into(), json!("nope"));
            o
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "model_not_found");
    // After all that, it still answers.
    let ok = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat("hi", json!({"max_tokens": 2})))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_a_429_and_a_disconnect_frees_the_sequence() {
    let models = Arc::new(ModelTable::default());
    // One sequence, no queue: a second request while the first runs is refused at once.
    models.install(load(SMOLLM, 1, 1, 0));
    let (client, url) = (http(), serve(models).await);
    let mut first = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat("Write a very long story about a lighthouse.", json!({"max_tokens": 480, "stream": true})))
        .send()
        .await
        .unwrap();
    // Read ten tokens, timing them: the rest of its 480 would take about 470 times as long as one.
    let (mut seen, mut first_at) = (String::new(), None);
    while seen.matches("\"content\":\"").count() < 12 {
        seen.push_str(&String::from_utf8_lossy(&first.chunk().await.unwrap().expect("a chunk")));
        if first_at.is_none() && seen.matches("\"content\":\"").count() >= 2 {
            first_at = Some(std::time::Instant::now());
        }
    }
    let per_token = first_at.expect("tokens came").elapsed() / 10;
    let busy = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat("hi", json!({"max_tokens": 2})))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 429);
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_eq!(busy.json::<Value>().await.unwrap()["error"]["type"], "rate_limit_error");
    // The client goes away mid-stream: its sequence is free within a step or two, long before the ~460 tokens
    // it still had to go would have been decoded.
    drop(first);
    let left = std::time::Instant::now();
    let mut answered = None;
    for _ in 0..200 {
        let r = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat("hi", json!({"max_tokens": 2})))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            answered = Some(left.elapsed());
            break;
        }
        assert_eq!(r.status(), 429);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = answered.expect("the sequence of the client that left was never freed");
    assert!(took < per_token * 100, "freed after {took:?}; one token takes {per_token:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_started_before_a_swap_finish_on_the_old_release() {
    let models = Arc::new(ModelTable::default());
    models.install(load(SMOLLM, 1, 2, 8));
    let (client, url) = (http(), serve(models.clone()).await);
    let stream = |n: u32| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat("Count from one to twenty.", json!({"max_tokens": n, "stream": true})))
                .send()
                .await
                .unwrap();
            let release = r.headers()["x-edgefleet-release"].to_str().unwrap().to_owned();
            let body = r.text().await.unwrap();
            (release, body.ends_with("data: [DONE]\n\n") && !body.contains("\"error\""))
        })
    };
    let before = [stream(40), stream(40)];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = models.install(load(SMOLLM, 2, 2, 8)).expect("release 1 was serving");
    drop(old);
    let after = stream(4);
    for h in before {
        assert_eq!(h.await.unwrap(), ("1".to_owned(), true), "a stream started on release 1 finishes on it");
    }
    assert_eq!(after.await.unwrap(), ("2".to_owned(), true));
}
