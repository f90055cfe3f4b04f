//! Hybrid edge-cloud routing over real processes: a cloud tier (`edgefleet-daemon --role cloud` serving Gemma 3
//! 270M, reached through a counting proxy) and an edge device serving SmolLM2 under signed routing policies.
//! The cascade sends drafts below the confidence bar to the cloud and answers the rest locally; a long prompt
//! and a low battery go to the cloud before generation; a request may force a tier where the policy allows; a `private` model's requests never reach the cloud (not one byte at
//! the cloud's door); with the cloud killed, every request is answered locally, flagged, none fails; and the
//! control plane rolls the edge's telemetry up into the split per release: by tier, reason, failures and bytes.
//! A policy loosened in a compromised control plane's database is refused by the device.

use std::time::Duration;

use edgefleet_e2e::proxy::{Fault, FaultProxy};
use edgefleet_e2e::{
    Daemon, Workdir, cache, daemon_command_on, eventually, http, server_and_token, spawn_daemon, x86_server,
};
use serde_json::{Value, json};

const SMOLLM: &str = "models/llm/smollm2-135m-instruct-q4_1.gguf";
const GEMMA: &str = "models/llm/gemma-3-270m-q4_k_m.gguf";

/// The cascade's bar: SmolLM2's mean log-probability over its first 4 greedy tokens. A plain question it knows
/// reads near 0; the open-ended prompt below reads far under it (see the headers the test prints).
const MIN_LOGPROB: f32 = -1.0;

fn serves(client: &reqwest::blocking::Client, d: &Daemon, model: &str, token: &str) -> bool {
    let v: Value = match client.get(format!("{}/v1/models", d.url)).bearer_auth(token).send().and_then(|r| r.json()) {
        Ok(v) => v,
        Err(_) => return false,
    };
    v["data"].as_array().is_some_and(|a| a.iter().any(|m| m["id"] == model))
}

/// A chat to `model` on `d`: (status, route, reason, confidence, answer text).
fn chat(d: &Daemon, model: &str, prompt: &str, force: Option<&str>) -> (u16, String, String, Option<f32>, String) {
    let mut req = http().post(format!("{}/v1/chat/completions", d.url)).json(&json!({
        "model": model, "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": prompt}]}));
    if let Some(t) = force {
        req = req.header("x-edgefleet-route", t);
    }
    let r = req.send().expect("the device answers");
    let h = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (route, reason) = (h("x-edgefleet-route"), h("x-edgefleet-route-reason"));
    let confidence = h("x-edgefleet-route-confidence").parse().ok();
    let status = r.status().as_u16();
    let body: Value = r.json().unwrap_or_default();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
    println!("{model} {prompt:?} forced {force:?}: {status} {route} ({reason}, confidence {confidence:?}): {text:?}");
    (status, route, reason, confidence, text)
}

#[test]
fn requests_are_routed_by_signed_policy_and_private_ones_never_leave() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    let policy = json!({"mode": "auto", "tiers": ["gpu"], "cloud_timeout_ms": 60000,
        "rules": {"max_prompt_tokens": 200, "min_battery_percent": 20, "allow_override": true,
            "confidence": {"tokens": 4, "stat": "mean", "min_logprob_milli": (MIN_LOGPROB * 1000.0) as i32}}});
    std::fs::write(w.path("auto.json"), policy.to_string()).unwrap();
    std::fs::write(w.path("private.json"), r#"{"mode": "local_only", "private": true}"#).unwrap();
    let (smollm, gemma) = (cache(SMOLLM), cache(GEMMA));
    w.pack_llm("chat", "1", ("cpu-q4-1", &smollm, "q4_1"), &["--routing", "auto.json"], "chat-1");
    w.pack_llm("secret", "1", ("cpu-q4-1", &smollm, "q4_1"), &["--routing", "private.json"], "secret-1");
    w.pack_llm("big", "1", ("cpu-q4-k-m,chat-template=gemma", &gemma, "q4_k_m"), &[], "big-1");
    // A policy that could not be followed is refused at pack time.
    std::fs::write(w.path("bad.json"), r#"{"mode": "auto", "tiers": ["gpu"], "private": true}"#).unwrap();
    let prompts = edgefleet_e2e::repo().join("fixtures/llm/golden-prompts.json").display().to_string();
    let variant = format!("id=cpu,file={},precision=q4_1", smollm.display());
    let pack = ["release", "pack", "--model", "chat", "--version", "9", "--variant", &variant, "--samples", &prompts];
    w.edgefleet(&[&pack[..], &["--routing", "bad.json", "-o", "bad"]].concat()).fails_with("private");
    std::fs::write(w.path("bad.json"), r#"{"mode": "auto", "tiers": ["gpu"], "when": "always"}"#).unwrap();
    w.edgefleet(&[&pack[..], &["--routing", "bad.json", "-o", "bad"]].concat()).fails_with("unknown field");
    for r in ["chat-1", "secret-1", "big-1"] {
        w.edgefleet(&["release", "sign", r, "--key", "alice.key"]).ok();
    }
    // Telemetry written every 200 ms in 5 s windows, so the control plane's split can be read within the test.
    let (server, _) = server_and_token(&w, Some("telemetry_flush_ms = 200\ntelemetry_window_secs = 5\n"));
    for r in ["chat-1", "secret-1", "big-1"] {
        w.edgefleet(&["release", "push", r]).ok();
    }

    // The cloud tier: a daemon of the same fleet serving Gemma, answering only callers with its token.
    std::fs::write(w.path("cloud.token"), "tier-secret-1\n").unwrap();
    x86_server(&w, "hw-cloud");
    let mut cmd =
        daemon_command_on(&w, &server, &server.url, "gpu-1", Some(&w.enroll_token(&["role=cloud"])), "hw-cloud");
    cmd.args(["--role", "cloud", "--api-token-file"]).arg(w.path("cloud.token"));
    cmd.args(["--llm-threads", "1", "--llm-sequences", "2"]);
    let cloud = spawn_daemon(cmd);
    w.edgefleet(&["assign", "big", "1", "--selector", "role=cloud"]).ok();
    let client = http();
    eventually("Gemma serving on the cloud tier", Duration::from_secs(180), || {
        serves(&client, &cloud, "big", "tier-secret-1").then_some(())
    });
    let unauthorized = client
        .post(format!("{}/v1/chat/completions", cloud.url))
        .json(&json!({"model": "big", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    assert_eq!(unauthorized.status(), 401, "a cloud tier answers only its token's holders");

    // The edge device reaches the tier through a proxy that counts every byte sent to it.
    let door = FaultProxy::start(cloud.url.trim_start_matches("http://"), Fault::Cut, u64::MAX, 0);
    x86_server(&w, "hw-edge");
    // A battery at 80 %, as a laptop's kernel shows it.
    let battery = w.path("hw-edge/sys/class/power_supply/BAT0");
    std::fs::create_dir_all(&battery).unwrap();
    std::fs::write(battery.join("type"), "Battery\n").unwrap();
    std::fs::write(battery.join("capacity"), "80\n").unwrap();
    let tier = format!("name=gpu,url=http://{}/v1,model=big,token-file={}", door.addr, w.path("cloud.token").display());
    let mut cmd =
        daemon_command_on(&w, &server, &server.url, "edge-1", Some(&w.enroll_token(&["role=edge"])), "hw-edge");
    cmd.args(["--cloud-tier", &tier, "--llm-threads", "1", "--llm-sequences", "2", "--metrics-interval-secs", "1"]);
    let edge = spawn_daemon(cmd);
    w.edgefleet(&["assign", "chat", "1", "--selector", "role=edge"]).ok();
    w.edgefleet(&["assign", "secret", "1", "--selector", "role=edge"]).ok();
    eventually("SmolLM2 serving chat and secret on the edge", Duration::from_secs(180), || {
        (serves(&client, &edge, "chat", "") && serves(&client, &edge, "secret", "")).then_some(())
    });
    let sent = || door.counts.bytes_up.load(std::sync::atomic::Ordering::Relaxed);

    // The private model: not one byte reaches the cloud, whatever the request asks.
    let before = sent();
    for force in [None, Some("cloud")] {
        let (status, route, reason, _, text) = chat(&edge, "secret", "What is the capital of France?", force);
        assert_eq!((status, route.as_str(), reason.as_str()), (200, "local", "private"));
        assert!(!text.is_empty());
    }
    assert_eq!(sent(), before, "a private model's request reached the cloud");

    // The cascade: a confident draft stays local; an unsure one is dropped and the cloud answers.
    let (status, route, reason, confidence, _) = chat(&edge, "chat", "What is the capital of France?", None);
    assert_eq!((status, route.as_str(), reason.as_str()), (200, "local", "rules"));
    assert!(confidence.is_some_and(|c| c >= MIN_LOGPROB), "{confidence:?}");
    let before = sent();
    let unsure = "Continue this list of random words: zephyr, quartz, umbrella,";
    let (status, route, reason, confidence, text) = chat(&edge, "chat", unsure, None);
    assert_eq!((status, route.as_str(), reason.as_str()), (200, "cloud", "low_confidence"));
    assert!(confidence.is_some_and(|c| c < MIN_LOGPROB), "{confidence:?}");
    assert!(!text.is_empty());
    assert!(sent() > before, "the cloud's answer came through the door");
    // Before generation: a prompt over 200 tokens, and a battery below 20 %, go to the cloud.
    let long = "Tell me what this says: ".to_owned() + &"the quick brown fox jumps over the lazy dog. ".repeat(30);
    let (status, route, reason, _, _) = chat(&edge, "chat", &long, None);
    assert_eq!((status, route.as_str(), reason.as_str()), (200, "cloud", "prompt_tokens"));
    std::fs::write(battery.join("capacity"), "15\n").unwrap();
    let (status, route, reason, _, _) = chat(&edge, "chat", "What is the capital of France?", None);
    assert_eq!((status, route.as_str(), reason.as_str()), (200, "cloud", "battery"));
    std::fs::write(battery.join("capacity"), "80\n").unwrap();
    // A request may force either tier, as the policy allows.
    let (status, route, reason, _, _) = chat(&edge, "chat", "What is the capital of France?", Some("cloud"));
    assert_eq!((status, route.as_str(), reason.as_str()), (200, "cloud", "requested"));
    let (status, route, reason, _, _) = chat(&edge, "chat", unsure, Some("local"));
    assert_eq!((status, route.as_str(), reason.as_str()), (200, "local", "requested"));

    // The cloud killed: every request is answered locally, flagged, none fails.
    drop(cloud);
    for (prompt, force) in [(unsure, None), ("What is the capital of France?", Some("cloud"))] {
        let (status, route, reason, _, text) = chat(&edge, "chat", prompt, force);
        assert_eq!((status, route.as_str(), reason.as_str()), (200, "local", "cloud_failed"));
        assert!(!text.is_empty());
    }

    // The control plane's split for release 1 of chat on this class, from the edge's telemetry: eight routed
    // requests, four answered by the cloud, each reason counted; two cloud calls failed after the kill.
    let viewer = server.token("viewer", "viewer");
    let route = |model: &str| {
        let r =
            server.client().get(format!("{}/api/v1/models/{model}/telemetry", server.url)).bearer_auth(&viewer).send();
        let v: Value = r.ok().and_then(|r| r.json().ok()).unwrap_or_default();
        let mut total = json!({"requests": 0, "cloud": 0, "cloud_errors": 0, "cloud_bytes_sent": 0, "by_reason": {}});
        for w in v["windows"].as_array().into_iter().flatten().filter(|w| w["release"] == 1 && w["route"].is_object()) {
            for k in ["requests", "cloud", "cloud_errors", "cloud_bytes_sent"] {
                total[k] = json!(total[k].as_u64().unwrap_or(0) + w["route"][k].as_u64().unwrap_or(0));
            }
            for (reason, n) in w["route"]["by_reason"].as_object().into_iter().flatten() {
                let sum = total["by_reason"][reason].as_u64().unwrap_or(0) + n.as_u64().unwrap_or(0);
                total["by_reason"][reason] = json!(sum);
            }
        }
        total
    };
    let chat = eventually("the control plane's routing split", Duration::from_secs(30), || {
        let t = route("chat");
        (t["requests"] == 8 && t["cloud_errors"] == 2).then_some(t)
    });
    assert_eq!(chat["cloud"], 4, "{chat}");
    let reasons =
        json!({"rules": 1, "low_confidence": 1, "prompt_tokens": 1, "battery": 1, "requested": 2, "cloud_failed": 2});
    assert_eq!(chat["by_reason"], reasons, "{chat}");
    assert!(chat["cloud_bytes_sent"].as_u64().unwrap_or(0) > 0, "{chat}");
    let secret = route("secret");
    assert_eq!((secret["requests"].as_u64(), secret["cloud_bytes_sent"].as_u64()), (Some(2), Some(0)), "{secret}");
    assert_eq!(secret["by_reason"], json!({"private": 2}), "{secret}");
    drop(edge);
    assert!(server.stop().success());
}

/// A compromised control plane (its database and fleet key) loosens a private model's signed policy: it edits
/// the stored release to `auto` with a cloud tier the device has, and hands the device a fresh document. The
/// release's signatures no longer match, so the device refuses the document, says why, and keeps the private
/// policy: not one byte reaches that tier.
#[test]
fn a_policy_forged_in_the_control_planes_database_is_refused_by_the_device() {
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    std::fs::write(w.path("private.json"), r#"{"mode": "local_only", "private": true}"#).unwrap();
    w.pack_llm("secret", "1", ("cpu-q4-1", &cache(SMOLLM), "q4_1"), &["--routing", "private.json"], "secret-1");
    w.edgefleet(&["release", "sign", "secret-1", "--key", "alice.key"]).ok();
    let (server, token) = server_and_token(&w, None);
    w.edgefleet(&["release", "push", "secret-1"]).ok();
    w.edgefleet(&["assign", "secret", "1"]).ok();
    // The tier the forged policy would name, behind a door that counts what reaches it.
    std::fs::write(w.path("tier.token"), "t\n").unwrap();
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in sink.incoming().flatten() {
            std::thread::spawn(move || std::io::copy(&mut conn, &mut std::io::sink()));
        }
    });
    let door = FaultProxy::start(&sink_addr, Fault::Cut, u64::MAX, 0);
    let tier = format!("name=attacker,url=http://{}/v1,token-file={}", door.addr, w.path("tier.token").display());
    x86_server(&w, "hw-edge");
    let mut cmd = daemon_command_on(&w, &server, &server.url, "edge-1", Some(&token), "hw-edge");
    cmd.args(["--cloud-tier", &tier, "--llm-threads", "1", "--llm-sequences", "1"]);
    let edge = spawn_daemon(cmd);
    let client = http();
    eventually("SmolLM2 serving secret", Duration::from_secs(180), || {
        serves(&client, &edge, "secret", "").then_some(())
    });
    let (status, route, reason, _, _) = chat(&edge, "secret", "What is the capital of France?", Some("cloud"));
    assert_eq!((status, route.as_str(), reason.as_str()), (200, "local", "private"));

    // The attacker rewrites the stored release's policy (the release keys' signatures stay as they were).
    let (data, listen) = (server.data_dir.clone(), server.url.trim_start_matches("https://").to_owned());
    assert!(server.stop().success());
    let edit = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
(text,) = db.execute("SELECT manifest FROM releases WHERE model = 'secret' AND version = 1").fetchone()
envelope = json.loads(text)
envelope["signed"]["routing"] = {"mode": "auto", "tiers": ["attacker"], "rules": {"allow_override": True}}
db.execute("UPDATE releases SET manifest = ? WHERE model = 'secret' AND version = 1", (json.dumps(envelope),))
db.commit()
"#;
    let edited =
        std::process::Command::new("python3").args(["-c", edit]).arg(data.join("edgefleet.db")).status().unwrap();
    assert!(edited.success(), "editing the database");
    let server = edgefleet_e2e::server_again(&w, &data, &listen);
    // The restarted server plans the device's document afresh from its (forged) database and signs it with the
    // fleet key; the API's own check (a release must verify before it is assigned) is not in the attacker's way.
    let refused = eventually("the device refuses the forged release", Duration::from_secs(60), || {
        let d = w.edgefleet(&["--json", "devices", "show", "edge-1"]).ok().json();
        d["last_error"].as_str().filter(|e| !e.is_empty()).map(str::to_owned)
    });
    println!("the device said: {refused}");
    assert!(refused.contains("signature does not match the signed bytes"), "{refused}");
    for force in [None, Some("cloud")] {
        let (status, route, reason, _, text) = chat(&edge, "secret", "What is the capital of France?", force);
        assert_eq!((status, route.as_str(), reason.as_str()), (200, "local", "private"));
        assert!(!text.is_empty());
    }
    assert_eq!(
        door.counts.bytes_up.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a private request reached the tier"
    );
    drop(edge);
    assert!(server.stop().success());
}
