//! Language models end to end, over real processes: SmolLM2 and Gemma 3 packed, signed and pushed through the
//! CLI; a daemon installs SmolLM2 as release 1 of `chat` and the official `openai` Python client streams a chat
//! from it; Gemma is then swapped in under a streaming load without one failed request; GGUFs that are not what
//! their release says (another model's file, a byte-flipped tensor, each re-signed) fail the golden check on
//! the device and never serve.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edgefleet_e2e::{
    Daemon, Fixture, ServerProcess, Workdir, cache, daemon_command, eventually, http, rapl_ticking, repo,
    server_and_token, spawn_daemon, x86_server,
};
use serde_json::{Value, json};

const SMOLLM: &str = "models/llm/smollm2-135m-instruct-q4_1.gguf";
const GEMMA: &str = "models/llm/gemma-3-270m-q4_k_m.gguf";

/// `edgefleet release pack` of `chat` release `version` from one GGUF (`id`, `precision`) into `out/`.
fn pack(w: &Workdir, version: &str, id: &str, file: &std::path::Path, precision: &str, out: &str) {
    w.pack_llm("chat", version, (id, file, precision), &[], out);
}

fn sign(w: &Workdir, dir: &str) {
    w.edgefleet(&["release", "sign", dir, "--key", "alice.key"]).ok();
}

/// The release of `chat` the daemon serves, per its `/v1/models`.
fn serving(client: &reqwest::blocking::Client, d: &Daemon) -> Option<u64> {
    let v: Value = client.get(format!("{}/v1/models", d.url)).send().ok()?.json().ok()?;
    v["data"].as_array()?.iter().find(|m| m["id"] == "chat")?["edgefleet"]["release"].as_u64()
}

/// Streams chats from `url` on `threads` threads until `stop`, bounded by `max` each; answers, per thread,
/// (release that answered, whether the stream ended in `[DONE]` without an error).
fn streaming_load(
    url: String,
    threads: usize,
    max: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(String, bool)>>> {
    (0..threads)
        .map(|i| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let client = http();
                let mut out = Vec::new();
                for _ in 0..max {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let body = json!({"model": "chat", "stream": true, "max_tokens": 12, "temperature": 0,
                        "messages": [{"role": "user", "content": format!("Say a short sentence about the number {i}.")}]});
                    match client.post(format!("{url}/v1/chat/completions")).json(&body).send() {
                        Ok(r) if r.status() == 200 => {
                            let release = r.headers().get("x-edgefleet-release").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                            let text = r.text().unwrap_or_default();
                            out.push((release, text.ends_with("data: [DONE]\n\n") && !text.contains("\"error\"")));
                        }
                        Ok(r) => out.push((format!("status {}", r.status()), false)),
                        Err(e) => out.push((format!("transport: {e}"), false)),
                    }
                }
                out
            })
        })
        .collect()
}

/// The control plane's telemetry windows of `chat`.
fn llm_windows(server: &ServerProcess, viewer: &str) -> Vec<Value> {
    let r = server.client().get(format!("{}/api/v1/models/chat/telemetry", server.url)).bearer_auth(viewer).send();
    let v: Value = r.ok().and_then(|r| r.json().ok()).unwrap_or_default();
    v["windows"].as_array().cloned().unwrap_or_default()
}

/// A daemon serving two sequences at once, exporting metrics every second; its bake watch does not judge
/// latency (Gemma's first token comes later than SmolLM2's by design: the rollout's gates judge that).
fn start_daemon(w: &Workdir, server: &ServerProcess, id: &str, token: &str) -> Daemon {
    let mut cmd = daemon_command(w, server, id, Some(token));
    cmd.args(["--llm-sequences", "2", "--llm-queue", "8", "--llm-threads", "2"]);
    cmd.args(["--metrics-interval-secs", "1", "--bake-max-latency-ratio", "1000"]);
    spawn_daemon(cmd)
}

#[test]
fn smollm_then_gemma_serve_openai_clients_and_swap_under_streams() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    pack(&w, "1", "cpu-q4-1", &cache(SMOLLM), "q4_1", "chat-1");
    sign(&w, "chat-1");
    // This Gemma GGUF carries no chat template: the release names llama.cpp's built-in one.
    pack(&w, "2", "cpu-q4-k-m,chat-template=gemma", &cache(GEMMA), "q4_k_m", "chat-2");
    sign(&w, "chat-2");
    let manifest: Value = serde_json::from_slice(&std::fs::read(w.path("chat-2/manifest.json")).unwrap()).unwrap();
    let llm = &manifest["signed"]["variants"][0]["llm"];
    assert_eq!(llm["architecture"], "gemma3");
    assert_eq!(llm["context_length"], 1024);
    assert!(llm["memory_bytes"].as_u64().unwrap() > 200 << 20, "{llm}");
    assert_eq!(manifest["signed"]["variants"][0]["format"], "gguf");

    let config = "rollout_eval_secs = 0.5\ntelemetry_flush_ms = 200\ntelemetry_window_secs = 5\n";
    let (server, token) = server_and_token(&w, Some(config));
    for r in ["chat-1", "chat-2"] {
        w.edgefleet(&["release", "push", r]).ok();
    }
    // An Intel NPU laptop: llama.cpp's Vulkan backend is tried (not in this build) and the CPU serves; its RAPL
    // package counter draws 12 W, so every export carries energy and the control plane reports joules per token.
    Fixture::IntelNpuLaptop.write(&w, "hw");
    let rapl_stop = Arc::new(AtomicBool::new(false));
    let rapl = rapl_ticking(&w, "hw", 12.0, rapl_stop.clone());
    let daemon = start_daemon(&w, &server, "llm-box", &token);
    w.edgefleet(&["assign", "chat", "1", "--selector", "site=lab"]).ok();
    let client = http();
    eventually("SmolLM2 serving as release 1", Duration::from_secs(120), || {
        (serving(&client, &daemon) == Some(1)).then_some(())
    });

    // The official OpenAI client, unmodified.
    let out = Command::new(cache("venv/bin/python"))
        .arg(repo().join("scripts/openai_chat_check.py"))
        .arg(&daemon.url)
        .arg("chat")
        .output()
        .expect("python");
    assert!(out.status.success(), "openai client: {}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    assert_eq!(r["models"], json!(["chat"]));
    assert!(r["stream"]["text"].as_str().unwrap().contains("Paris"), "{r}");
    assert!(r["stream"]["pieces"].as_array().unwrap().len() > 3, "streamed piece by piece: {r}");
    assert_eq!(r["stream"]["text"], r["whole"]["text"], "greedy: streamed and whole answers agree");
    assert_eq!(r["stream"]["usage"], r["whole"]["usage"]);
    assert_eq!(r["refused"]["status"], 400, "{r}");

    // Gemma as release 2, rolled out while two clients stream, gated on time to first token, time per output
    // token and errors against SmolLM2 on the same class: every stream completes, the gates judge real numbers.
    let stop = Arc::new(AtomicBool::new(false));
    let load = streaming_load(daemon.url.clone(), 2, 400, stop.clone());
    let viewer = server.token("viewer", "viewer");
    eventually("release 1's time to first token at the control plane", Duration::from_secs(60), || {
        llm_windows(&server, &viewer).into_iter().find(|w| w["release"] == 1 && w["llm"]["ttft_p95_ms"].is_number())
    });
    let rollout = w
        .edgefleet(&[
            "--json",
            "rollout",
            "create",
            "chat",
            "2",
            "--selector",
            "site=lab",
            "--wave",
            "100:10m",
            "--gate",
            "ttft-ratio=50",
            "--gate",
            "tpot-ratio=50",
            "--gate",
            "energy-per-token-ratio=50",
            "--gate",
            "error-rate=0.05",
            "--min-samples",
            "3",
            "--on-failure",
            "rollback",
        ])
        .ok()
        .json()["id"]
        .as_str()
        .expect("rollout id")
        .to_owned();
    eventually("Gemma serving as release 2", Duration::from_secs(180), || {
        (serving(&client, &daemon) == Some(2)).then_some(())
    });
    // The gates judge Gemma against SmolLM2 on this class once both have enough samples; the bake is long, so
    // what is seen here is the gates' own verdict, then an operator promotes it.
    let judged = eventually("the TTFT gate judging release 2", Duration::from_secs(120), || {
        let s = w.edgefleet(&["--json", "rollout", "status", &rollout]).ok().json();
        assert_eq!(s["state"]["state"], "running", "{s}");
        let results = s["gate_results"].as_array().cloned().unwrap_or_default();
        let ttft = results.iter().find(|g| g["gate"]["kind"] == "ttft_p95_ratio")?.clone();
        (ttft["verdict"] != "not_reached" && ttft["verdict"] != "too_few_samples").then_some((ttft, s))
    });
    stop.store(true, Ordering::Relaxed);
    let (ttft, status) = judged;
    assert_eq!(ttft["verdict"], "pass", "{status}");
    assert!(ttft["value"].as_f64().unwrap() > 0.0 && ttft["samples_new"].as_u64().unwrap() >= 3, "{ttft}");
    let gates = status["gate_results"].as_array().cloned().unwrap_or_default();
    let energy = gates.iter().find(|g| g["gate"]["kind"] == "energy_per_token_ratio").expect("the energy gate");
    assert!(["pass", "too_few_samples"].contains(&energy["verdict"].as_str().unwrap_or("")), "{energy}");
    w.edgefleet(&["rollout", "promote", &rollout]).ok();
    let s = w.edgefleet(&["--json", "rollout", "status", &rollout]).ok().json();
    assert_eq!(s["state"]["state"], "done", "{s}");
    let results: Vec<(String, bool)> = load.into_iter().flat_map(|h| h.join().expect("load thread")).collect();
    let failed: Vec<_> = results.iter().filter(|(_, ok)| !ok).collect();
    assert!(failed.is_empty(), "{} of {} streams failed: {failed:?}", failed.len(), results.len());
    for release in ["1", "2"] {
        assert!(results.iter().any(|(r, _)| r == release), "no stream answered by release {release}: {results:?}");
    }
    let answer: Value = client
        .post(format!("{}/v1/chat/completions", daemon.url))
        .json(&json!({"model": "chat", "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(answer["system_fingerprint"].as_str().unwrap().contains("cpu-q4-k-m"), "{answer}");
    // What the control plane shows for each release: TTFT, decoding speed, tokens, and joules per output token
    // from the package counter (12 W over the tokens of each export: a figure in the joules, not invented).
    let windows = llm_windows(&server, &viewer);
    for release in [1, 2] {
        let w = windows.iter().find(|w| w["release"] == release && w["llm"]["output_tokens"].as_u64() > Some(0));
        let w = w.unwrap_or_else(|| panic!("no language-model numbers for release {release}: {windows:?}"));
        let llm = &w["llm"];
        assert!(llm["tokens_per_second"].as_f64().unwrap() > 0.0, "{llm}");
        let j = llm["joules_per_token"].as_f64().unwrap_or_else(|| panic!("no joules per token: {llm}"));
        assert!(j > 0.0 && j < 12.0, "12 W spread over tokens decoded at well over one a second: {llm}");
    }
    rapl_stop.store(true, Ordering::Relaxed);
    rapl.join().expect("rapl");

    // SIGTERM while a chat streams: the stream finishes, the last metrics are exported, the daemon exits 0.
    let url = daemon.url.clone();
    let (started, streaming) = std::sync::mpsc::channel();
    let last = std::thread::spawn(move || {
        let body = json!({"model": "chat", "stream": true, "max_tokens": 64, "temperature": 0,
            "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}]});
        let r = http().post(format!("{url}/v1/chat/completions")).json(&body).send();
        let _ = started.send(());
        r.and_then(|r| r.text())
    });
    streaming.recv_timeout(Duration::from_secs(60)).expect("the stream began");
    let mut daemon = daemon;
    let pid = daemon.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let text = last.join().expect("stream thread").expect("the stream in flight is answered");
    assert!(text.ends_with("data: [DONE]\n\n") && !text.contains("\"error\""), "{text}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = daemon.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status}");
    // Every request release 2 answered reached the control plane, the last stream's included: the final export.
    let answered = 1 + 1 + results.iter().filter(|(r, _)| r == "2").count() as u64;
    eventually("release 2's every request at the control plane", Duration::from_secs(30), || {
        let n: u64 = llm_windows(&server, &viewer)
            .iter()
            .filter(|w| w["release"] == 2)
            .filter_map(|w| w["requests"].as_u64())
            .sum();
        (n == answered).then_some(())
    });
    drop(daemon);
    assert!(server.stop().success());
}

/// A GGUF that is not what its release's golden file says: `chat-3` packed genuinely from SmolLM2, then its
/// model blob replaced by `file` (packed alone, against itself, to get its blobs and digests) before signing —
/// what a broken or hostile build pipeline could hand the signers.
fn pack_with_wrong_weights(w: &Workdir, version: &str, file: &std::path::Path, precision: &str) -> String {
    let out = format!("chat-{version}");
    pack(w, version, "cpu-q4-1", &cache(SMOLLM), "q4_1", &out);
    let wrong = format!("wrong-{version}");
    pack(w, version, "cpu-q4-1", file, precision, &wrong);
    let read = |p: String| -> Value { serde_json::from_slice(&std::fs::read(w.path(&p)).unwrap()).unwrap() };
    let bad = read(format!("{wrong}/manifest.json"))["signed"]["variants"][0].clone();
    let mut manifest = read(format!("{out}/manifest.json"));
    let v = &mut manifest["signed"]["variants"][0];
    for part in ["raw", "zstd"] {
        v[part] = bad[part].clone();
    }
    for entry in std::fs::read_dir(w.path(&format!("{wrong}/blobs"))).unwrap().flatten() {
        std::fs::copy(entry.path(), w.path(&format!("{out}/blobs")).join(entry.file_name())).unwrap();
    }
    std::fs::write(w.path(&format!("{out}/manifest.json")), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    sign(w, &out);
    out
}

/// SmolLM2 with `len` bytes inverted from the middle of the file on: inside a tensor's data (the header and
/// metadata sit at the start), so the file loads and answers, wrongly.
fn byte_flipped_smollm(w: &Workdir, len: usize) -> std::path::PathBuf {
    let mut bytes = std::fs::read(cache(SMOLLM)).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + len] {
        *b = !*b;
    }
    let p = w.path("smollm-flipped.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn ggufs_that_are_not_their_release_fail_the_golden_check_and_never_serve() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    pack(&w, "1", "cpu-q4-1", &cache(SMOLLM), "q4_1", "chat-1");
    sign(&w, "chat-1");
    let other_model = pack_with_wrong_weights(&w, "2", &cache(GEMMA), "q4_k_m,chat-template=chatml");
    let flipped = byte_flipped_smollm(&w, 256 << 10);
    let flipped_release = pack_with_wrong_weights(&w, "3", &flipped, "q4_1");
    // The CLI, on this machine, refuses them too (exit code 1, the numbers).
    for (r, says) in [(&other_model, "another vocabulary"), (&flipped_release, "golden")] {
        let ran = w.edgefleet(&["release", "golden", r, "--variant", "cpu-q4-1"]);
        assert!(!ran.out.status.success(), "{r} passed its golden check");
        assert!(ran.stdout().contains(says) || ran.stderr().contains(says), "{r}: {}{}", ran.stdout(), ran.stderr());
    }

    let (server, token) = server_and_token(&w, None);
    for r in ["chat-1", &other_model, &flipped_release] {
        w.edgefleet(&["release", "push", r]).ok();
    }
    x86_server(&w, "hw");
    let daemon = start_daemon(&w, &server, "llm-box", &token);
    w.edgefleet(&["assign", "chat", "1", "--selector", "site=lab"]).ok();
    let client = http();
    eventually("release 1 serving", Duration::from_secs(120), || (serving(&client, &daemon) == Some(1)).then_some(()));
    // Another model's file is refused at load already (its chat template is not the release's) or at the golden
    // check (its vocabulary is not); the byte-flipped tensor loads and is refused by the golden check.
    for (version, refused_as) in [("2", &["load_failed", "golden_failed"][..]), ("3", &["golden_failed"][..])] {
        w.edgefleet(&["assign", "chat", version, "--selector", "site=lab"]).ok();
        let deadline = Instant::now() + Duration::from_secs(120);
        let events = loop {
            let d = w.edgefleet(&["--json", "devices", "show", "llm-box"]).ok().json();
            let events = d["events"].as_array().cloned().unwrap_or_default();
            if events
                .iter()
                .any(|e| e["release"].as_u64() == version.parse().ok() && refused_as.iter().any(|k| e["kind"] == *k))
            {
                break events;
            }
            assert!(Instant::now() < deadline, "release {version} was not refused within 120 s: {d}");
            std::thread::sleep(Duration::from_millis(300));
        };
        assert!(
            !events.iter().any(|e| e["release"].as_u64() == version.parse().ok() && e["kind"] == "swapped"),
            "release {version} served: {events:?}"
        );
        assert_eq!(serving(&client, &daemon), Some(1), "release 1 still serves after {version} was refused");
    }
    drop(daemon);
    assert!(server.stop().success());
}
