//! Language-model serving benchmarks for BENCHMARKS.md, over real HTTP against the daemon's own serving stack
//! (the OpenAI-compatible router on a `ModelTable`, as `edgefleet-daemon run` serves it): time to first token
//! of a 128-token prompt, one stream's decoding speed, aggregate tokens/s with 1, 4 and 8 concurrent streams,
//! the process's RSS with the model loaded, and N hot swaps under a streaming load (failed streams, TTFT p99
//! before and during). `scripts/bench_llm.sh` runs it.
//!
//!     cargo run --release -p edgefleet-daemon --example bench_llm -- MODEL.gguf [THREADS] [SWAPS] [TEMPLATE]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgefleet_daemon::openai::{OpenAiState, router};
use edgefleet_daemon::serving::{ModelTable, Served};
use edgefleet_protocol::{ReleaseVersion, Sha256Digest};
use edgefleet_runtime::llm::{EngineConfig, LlmModel, LlmOptions};
use serde_json::{Value, json};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Bench {
    client: reqwest::Client,
    url: String,
}

/// One streamed completion: (time to first token, times of every token after, completion tokens).
struct Timed {
    ttft: Duration,
    last: Duration,
    tokens: u64,
    ok: bool,
}

impl Bench {
    async fn stream(&self, body: Value) -> Timed {
        let start = Instant::now();
        let failed = Timed { ttft: start.elapsed(), last: start.elapsed(), tokens: 0, ok: false };
        let Ok(mut r) = self.client.post(format!("{}/v1/completions", self.url)).json(&body).send().await else {
            return failed;
        };
        if r.status() != 200 {
            return failed;
        }
        let (mut first, mut last, mut text) = (None, start.elapsed(), String::new());
        while let Ok(Some(chunk)) = r.chunk().await {
            let piece = String::from_utf8_lossy(&chunk);
            if piece.contains("\"text\":\"") && !piece.contains("\"text\":\"\"") {
                first.get_or_insert(start.elapsed());
                last = start.elapsed();
            }
            text.push_str(&piece);
        }
        let ok = text.ends_with("data: [DONE]\n\n") && !text.contains("\"error\"");
        // The usage event says how many tokens came (a network chunk may carry several).
        let tokens = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .find_map(|v| v["usage"]["completion_tokens"].as_u64())
            .unwrap_or(0);
        Timed { ttft: first.unwrap_or(last), last, tokens, ok }
    }
}

fn completion(prompt: &str, max_tokens: u32) -> Value {
    json!({"model": "chat", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true}})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = std::path::PathBuf::from(args.first().ok_or_else(|| anyhow::anyhow!("MODEL.gguf"))?);
    let threads: i32 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let swaps: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let template = args.get(3).cloned();
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("RSS before the model: {:.0} MiB", rss_mib());
    let digest = {
        let mut m = LlmModel::load(&path, &LlmOptions::default())?;
        if let Some(t) = &template {
            m = m.with_chat_template(t)?;
        }
        m.facts.chat_template.map(|t| Sha256Digest::of(t.as_bytes()))
    };
    let config = EngineConfig { context_length: 1024, sequences: 8, queue: 64, batch: 256, threads: Some(threads) };
    // Loading reads and maps the GGUF and builds a context: blocking work, kept off the runtime serving HTTP.
    let load = Arc::new(move |release: u64| {
        Served::load_llm(
            &path,
            &LlmOptions::default(),
            config.clone(),
            (template.as_deref(), digest.as_ref()),
            "chat".parse().expect("name"),
            ReleaseVersion::new(release).expect("version"),
            "cpu".parse().expect("variant"),
            "a",
        )
    });
    let models = Arc::new(ModelTable::default());
    models.install(load(1)?);
    println!("RSS with the model loaded (8 sequences of 1,024 tokens): {:.0} MiB", rss_mib());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = router(OpenAiState { models: models.clone(), routing: Default::default() });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let b = Arc::new(Bench { client: reqwest::Client::new(), url });

    // A prompt of exactly 128 tokens (with the start token), cut from text under the model's own tokenizer.
    let engine = models.get("chat").expect("served");
    let tokenizer = engine.llm().expect("language model");
    let words =
        "The lighthouse keeper wrote in his log every evening about the ships, the weather and the sea. ".repeat(20);
    let mut prompt = words.clone();
    while tokenizer.model.tokenize(&prompt, true).len() > 128 {
        prompt.pop();
    }
    let prompt_tokens = tokenizer.model.tokenize(&prompt, true).len();
    drop(engine);
    // Warm up, then time to first token of the 128-token prompt (one token asked for), 10 times.
    b.stream(completion(&prompt, 1)).await;
    let mut ttft: Vec<f64> = Vec::new();
    for _ in 0..10 {
        ttft.push(b.stream(completion(&prompt, 1)).await.ttft.as_secs_f64() * 1e3);
    }
    println!(
        "TTFT, {prompt_tokens}-token prompt over HTTP: median {:.1} ms, min {:.1} ms (10 runs)",
        pct(&mut ttft.clone(), 0.5),
        pct(&mut ttft, 0.0)
    );
    // One stream's decoding speed: tokens after the first over the time they took, 128 tokens asked for.
    let mut speeds = Vec::new();
    for _ in 0..3 {
        let t = b.stream(completion("Count from one to three hundred, in words, separated by commas:", 128)).await;
        if t.tokens > 1 {
            speeds.push((t.tokens - 1) as f64 / (t.last - t.ttft).as_secs_f64());
        }
    }
    println!("decode, one stream: median {:.1} tokens/s (3 runs of up to 128 tokens)", pct(&mut speeds, 0.5));
    // Aggregate throughput with 1, 4 and 8 concurrent streams, 64 tokens each, 2 rounds per stream.
    for streams in [1usize, 4, 8] {
        let start = Instant::now();
        let tasks: Vec<_> = (0..streams)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    for r in 0..2 {
                        n += b.stream(completion(&format!("Story {i}.{r}: Once upon a time"), 64)).await.tokens;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await?;
        }
        println!(
            "aggregate, {streams} concurrent stream(s): {:.1} tokens/s ({total} tokens in {:.1} s)",
            total as f64 / start.elapsed().as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
    }
    println!("RSS after the throughput runs: {:.0} MiB", rss_mib());

    // Hot swaps under a streaming load: the same phase length without and with swaps.
    let run_load = |stop: Arc<AtomicBool>, failed: Arc<AtomicUsize>| {
        let b = b.clone();
        tokio::spawn(async move {
            let mut ttfts = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                i += 1;
                let t = b.stream(completion(&format!("Fact number {i}:"), 12)).await;
                if t.ok {
                    ttfts.push(t.ttft.as_secs_f64() * 1e3);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            ttfts
        })
    };
    let phase = |swapping: bool| {
        let models = models.clone();
        let load = load.clone();
        let run_load = &run_load;
        async move {
            let (stop, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
            let clients: Vec<_> = (0..2).map(|_| run_load(stop.clone(), failed.clone())).collect();
            let start = Instant::now();
            if swapping {
                for n in 0..swaps {
                    let load = load.clone();
                    models.install(tokio::task::spawn_blocking(move || load(2 + n)).await??);
                    if (n + 1) % 10 == 0 {
                        println!("  {} swaps, {:.1} s, RSS {:.0} MiB", n + 1, start.elapsed().as_secs_f64(), rss_mib());
                    }
                }
            } else {
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
            let took = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            let mut all = Vec::new();
            for c in clients {
                all.extend(c.await?);
            }
            anyhow::Ok((all, failed.load(Ordering::Relaxed), took))
        }
    };
    let (mut before, failed_before, took_before) = phase(false).await?;
    let (mut during, failed_during, took_during) = phase(true).await?;
    println!(
        "swaps: {swaps} in {:.1} s under 2 streaming clients: {} streams answered, {failed_during} failed; TTFT p50 \
         {:.0} ms, p99 {:.0} ms during the swaps vs p50 {:.0} ms, p99 {:.0} ms over {:.0} s without ({} streams, {failed_before} failed)",
        took_during.as_secs_f64(),
        during.len(),
        pct(&mut during, 0.5),
        pct(&mut during, 0.99),
        pct(&mut before, 0.5),
        pct(&mut before, 0.99),
        took_before.as_secs_f64(),
        before.len()
    );
    println!("RSS after {swaps} swaps: {:.0} MiB", rss_mib());
    Ok(())
}
