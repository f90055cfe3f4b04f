//! Benchmark: the router's quality against the share of requests it sends to the cloud, over real processes.
//!
//!     cargo run -p edgefleet-e2e --example bench_route_quality -- [QUESTIONS]   (default 200)
//!
//! An edge daemon serves SmolLM2-135M under signed routing policies; a cloud tier (`edgefleet-daemon --role
//! cloud`) serves Gemma 3 270M; both get one llama.cpp thread, so each has a core of this 2-core machine as two
//! machines would. The questions are generated arithmetic (no labelled question set that a registry package
//! ships fits models this small: the multiple-choice and grade-school sets score at chance for both), each
//! with its computed answer: an answer is right when the first integer in it is the answer.
//!
//! 1. Fixed baselines: every question through a `local_only` release, then a `cloud_only` one.
//! 2. A probe: an `auto` release whose cascade bar can never be missed, so each answer is local and carries the
//!    router's confidence reading (the minimum token log-probability of the whole short answer).
//! 3. The curve, as RouteLLM reports it: sending the questions whose reading is below a bar τ to the cloud, the
//!    accuracy and the share of requests in the cloud at every τ, from the measured answers of steps 1 and 2.
//! 4. Three operating points: releases whose bar is the 25th, 50th and 75th percentile of the readings, asked
//!    every question through the real router; accuracy, cloud share, median latency and CPU time per request
//!    measured, against the two baselines. Energy: this machine has no power sensor (no RAPL, no battery), so
//!    no joules are reported; the daemons' CPU seconds per request stand beside the latency instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgefleet_e2e::{
    Daemon, Workdir, cache, daemon_command_on, eventually, http, server_and_token, spawn_daemon, x86_server,
};
use serde_json::{Value, json};

const SMOLLM: &str = "models/llm/smollm2-135m-instruct-q4_1.gguf";
const GEMMA: &str = "models/llm/gemma-3-270m-q4_k_m.gguf";
/// Tokens an answer may have (a number, ended by a new line); the cascade reads all of them.
const MAX_TOKENS: u32 = 5;
/// Questions are completions after four worked examples: both models are small, and the cloud's Gemma 3 270M
/// here is a pretrained (not instruction-tuned) model, which continues a pattern but does not follow a chat.
const FEW_SHOT: &str = "Q: 2 + 3\nA: 5\nQ: 14 + 21\nA: 35\nQ: 9 - 4\nA: 5\nQ: 6 * 7\nA: 42\n";

struct Question {
    prompt: String,
    answer: i64,
}

/// `n` questions from a fixed seed: one- and two-digit sums, differences and products.
fn questions(n: usize) -> Vec<Question> {
    let mut state: u64 = 0x5eed_1234_abcd_0001;
    let mut next = |below: u64| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % below
    };
    (0..n)
        .map(|i| {
            let (a, b) = match i % 4 {
                0 => (next(9) as i64 + 1, next(9) as i64 + 1),
                _ => (next(90) as i64 + 10, next(90) as i64 + 10),
            };
            let (text, answer) = match i % 4 {
                0 | 1 => (format!("{a} + {b}"), a + b),
                2 => (format!("{} - {}", a.max(b), a.min(b)), a.max(b) - a.min(b)),
                _ => (format!("{} * {}", a % 10 + 1, b % 10 + 1), (a % 10 + 1) * (b % 10 + 1)),
            };
            Question { prompt: format!("{FEW_SHOT}Q: {text}\nA:"), answer }
        })
        .collect()
}

/// The first integer in `text`, if any.
fn first_integer(text: &str) -> Option<i64> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let negative = text[..start].ends_with('-');
    let digits: String = text[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<i64>().ok().map(|v| if negative { -v } else { v })
}

#[derive(Debug, Clone)]
struct Answer {
    right: bool,
    cloud: bool,
    confidence: Option<f32>,
    secs: f64,
}

fn ask(d: &Daemon, model: &str, q: &Question) -> Answer {
    let started = Instant::now();
    let r = http()
        .post(format!("{}/v1/completions", d.url))
        .json(&json!({"model": model, "max_tokens": MAX_TOKENS, "temperature": 0, "stop": ["\n"], "prompt": q.prompt}))
        .send()
        .expect("the edge answers");
    let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (route, confidence) = (header("x-edgefleet-route"), header("x-edgefleet-route-confidence").parse().ok());
    assert_eq!(r.status(), 200, "{model}: {}", r.text().unwrap_or_default());
    let body: Value = r.json().expect("JSON");
    let secs = started.elapsed().as_secs_f64();
    let text = body["choices"][0]["text"].as_str().unwrap_or_default();
    if std::env::var_os("VERBOSE").is_some() {
        let question = q.prompt.rsplit("Q: ").next().unwrap_or_default().trim_end();
        eprintln!("{model} {question:?} → {text:?} ({route}, {confidence:?}; expected {})", q.answer);
    }
    Answer { right: first_integer(text) == Some(q.answer), cloud: route == "cloud", confidence, secs }
}

/// User + system CPU seconds of a process so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    let fields: Vec<&str> = stat.rsplit_once(") ").expect("stat").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

struct Pass {
    answers: Vec<Answer>,
    edge_cpu: f64,
    cloud_cpu: f64,
}

fn pass(edge: &Daemon, cloud: &Daemon, model: &str, qs: &[Question]) -> Pass {
    let (e0, c0) = (cpu_secs(edge.child.id()), cpu_secs(cloud.child.id()));
    let answers = qs.iter().map(|q| ask(edge, model, q)).collect();
    let n = qs.len() as f64;
    Pass { answers, edge_cpu: (cpu_secs(edge.child.id()) - e0) / n, cloud_cpu: (cpu_secs(cloud.child.id()) - c0) / n }
}

fn accuracy(right: impl Iterator<Item = bool>) -> f64 {
    let (mut n, mut r) = (0, 0);
    for ok in right {
        n += 1;
        r += usize::from(ok);
    }
    r as f64 / n.max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(200, |a| a.parse().expect("QUESTIONS"));
    let qs = questions(n);
    let w = Workdir::new();
    w.trust(&["alice"], 1);
    let (smollm, gemma) = (cache(SMOLLM), cache(GEMMA));
    let policies = [
        ("q-local", json!({"mode": "local_only"})),
        ("q-cloud", json!({"mode": "cloud_only", "tiers": ["gpu"]})),
        ("q-probe", cascade(-100_000)),
    ];
    let (server, _) = server_and_token(&w, None);
    for (model, policy) in &policies {
        release(&w, model, &smollm, policy);
    }
    let big = ("cpu-q4-k-m,chat-template=gemma", gemma.as_path(), "q4_k_m");
    w.pack_llm("big", "1", big, &[], "big-1");
    w.edgefleet(&["release", "sign", "big-1", "--key", "alice.key"]).ok();
    w.edgefleet(&["release", "push", "big-1"]).ok();

    std::fs::write(w.path("cloud.token"), "tier-secret\n").unwrap();
    x86_server(&w, "hw-cloud");
    let mut cmd =
        daemon_command_on(&w, &server, &server.url, "gpu-1", Some(&w.enroll_token(&["role=cloud"])), "hw-cloud");
    cmd.args(["--role", "cloud", "--api-token-file"]).arg(w.path("cloud.token"));
    cmd.args(["--llm-threads", "1", "--llm-sequences", "1"]);
    let cloud = spawn_daemon(cmd);
    w.edgefleet(&["assign", "big", "1", "--selector", "role=cloud"]).ok();
    x86_server(&w, "hw-edge");
    let tier = format!("name=gpu,url={}/v1,model=big,token-file={}", cloud.url, w.path("cloud.token").display());
    let mut cmd =
        daemon_command_on(&w, &server, &server.url, "edge-1", Some(&w.enroll_token(&["role=edge"])), "hw-edge");
    cmd.args(["--cloud-tier", &tier, "--llm-threads", "1", "--llm-sequences", "1"]);
    let edge = spawn_daemon(cmd);
    serve(&cloud, "big", "tier-secret");
    for (model, _) in &policies {
        serve(&edge, model, "");
    }

    println!("# machine: {} cores, {}", std::thread::available_parallelism().map_or(0, |n| n.get()), cpu_model());
    println!(
        "# {n} generated arithmetic questions; edge SmolLM2-135M Q4_1, cloud Gemma 3 270M Q4_K_M, 1 thread each\n"
    );
    let local = pass(&edge, &cloud, "q-local", &qs);
    let all_cloud = pass(&edge, &cloud, "q-cloud", &qs);
    let probe = pass(&edge, &cloud, "q-probe", &qs);
    let (acc_local, acc_cloud) =
        (accuracy(local.answers.iter().map(|a| a.right)), accuracy(all_cloud.answers.iter().map(|a| a.right)));
    assert!(all_cloud.answers.iter().all(|a| a.cloud) && local.answers.iter().all(|a| !a.cloud));
    assert!(probe.answers.iter().all(|a| !a.cloud && a.confidence.is_some()), "the probe reads every draft locally");

    // The curve: every bar between two readings, from all-local to all-cloud.
    let readings: Vec<f32> = probe.answers.iter().map(|a| a.confidence.expect("a reading")).collect();
    let routed = |bar: f32| -> (f64, f64) {
        let to_cloud: Vec<bool> = readings.iter().map(|r| *r < bar).collect();
        let share = to_cloud.iter().filter(|c| **c).count() as f64 / n as f64;
        let right = (0..n).map(|i| if to_cloud[i] { all_cloud.answers[i].right } else { probe.answers[i].right });
        (share, accuracy(right))
    };
    // What the reading knows whatever the cloud answers: the share of the local model's wrong answers below a bar.
    let local_wrong = probe.answers.iter().filter(|a| !a.right).count().max(1) as f64;
    let caught = |bar: f32| {
        probe.answers.iter().zip(&readings).filter(|(a, r)| !a.right && **r < bar).count() as f64 / local_wrong
    };
    let mut bars: Vec<f32> = readings.clone();
    bars.sort_by(f32::total_cmp);
    bars.dedup();
    let mut curve: BTreeMap<u32, (f64, f64, f32)> = BTreeMap::new();
    for bar in bars.iter().copied().chain([f32::INFINITY]) {
        let (share, acc) = routed(bar);
        // One row per tenth of cloud share: the best accuracy reached at or below it.
        let decile = (share * 10.0).ceil() as u32;
        let best = curve.entry(decile).or_insert((share, acc, bar));
        if acc >= best.1 {
            *best = (share, acc, bar);
        }
    }
    let gap = acc_cloud - acc_local;
    // RouteLLM's "performance gap recovered"; meaningless where the cloud is not the better model.
    let recovered = |acc: f64| {
        if gap > 1e-9 { format!("{:.0} %", (acc - acc_local) / gap * 100.0) } else { "– (cloud not better)".into() }
    };
    println!("## The curve (cascade on the minimum token log-probability of the local answer)\n");
    println!("all local {:.1} %, all cloud {:.1} %\n", acc_local * 100.0, acc_cloud * 100.0);
    println!(
        "| cloud share at most | cloud share | accuracy | quality gap recovered | random router at that share | local wrong answers sent to the cloud |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!("| 0 % (all local) | 0.0 % | {:.1} % | – | {:.1} % | 0 % |", acc_local * 100.0, acc_local * 100.0);
    for (decile, (share, acc, bar)) in curve.iter().filter(|(d, _)| **d > 0) {
        let random = acc_local + gap * share;
        println!(
            "| {} % | {:.1} % | {:.1} % | {} | {:.1} % | {:.0} % |",
            decile * 10,
            share * 100.0,
            acc * 100.0,
            recovered(*acc),
            random * 100.0,
            caught(*bar) * 100.0
        );
    }

    // Three operating points through the real router.
    let mut sorted = readings.clone();
    sorted.sort_by(f32::total_cmp);
    let mut points = Vec::new();
    for (i, q) in [25, 50, 75].into_iter().enumerate() {
        let bar = sorted[(n * q / 100).min(n - 1)];
        let milli = ((bar * 1000.0).round() as i32).clamp(-100_000, -1);
        let model = format!("q-op{}", i + 1);
        release(&w, &model, &smollm, &cascade(milli));
        serve(&edge, &model, "");
        points.push((model, milli));
    }
    println!("\n## Operating points, measured through the router ({n} requests each, one at a time)\n");
    println!(
        "| router | bar (min log-prob) | cloud share | accuracy | predicted by the curve | median latency | edge CPU s/request | cloud CPU s/request | energy |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let row = |name: &str, bar: &str, p: &Pass, predicted: &str| {
        let share = p.answers.iter().filter(|a| a.cloud).count() as f64 / n as f64;
        println!(
            "| {name} | {bar} | {:.1} % | {:.1} % | {predicted} | {:.0} ms | {:.3} | {:.3} | no sensor |",
            share * 100.0,
            accuracy(p.answers.iter().map(|a| a.right)) * 100.0,
            median(p.answers.iter().map(|a| a.secs).collect()) * 1000.0,
            p.edge_cpu,
            p.cloud_cpu
        );
    };
    row("all local", "–", &local, "–");
    for (model, milli) in &points {
        let p = pass(&edge, &cloud, model, &qs);
        let (share, acc) = routed(*milli as f32 / 1000.0);
        row(
            model,
            &format!("{:.3}", *milli as f32 / 1000.0),
            &p,
            &format!("{:.1} % at {:.1} % cloud", acc * 100.0, share * 100.0),
        );
    }
    row("all cloud", "–", &all_cloud, "–");
    drop((edge, cloud));
    assert!(server.stop().success());
}

/// An `auto` policy whose only rule is the cascade: the whole answer's minimum log-probability against `milli`.
fn cascade(milli: i32) -> Value {
    json!({"mode": "auto", "tiers": ["gpu"], "cloud_timeout_ms": 120000,
        "rules": {"confidence": {"tokens": MAX_TOKENS, "stat": "min", "min_logprob_milli": milli}}})
}

/// Packs, signs, pushes and assigns release 1 of `model` (SmolLM2) under `policy` to the edge.
fn release(w: &Workdir, model: &str, gguf: &std::path::Path, policy: &Value) {
    let file = format!("{model}.json");
    std::fs::write(w.path(&file), policy.to_string()).unwrap();
    let out = format!("{model}-1");
    w.pack_llm(model, "1", ("cpu-q4-1", gguf, "q4_1"), &["--routing", &file], &out);
    w.edgefleet(&["release", "sign", &out, "--key", "alice.key"]).ok();
    w.edgefleet(&["release", "push", &out]).ok();
    w.edgefleet(&["assign", model, "1", "--selector", "role=edge"]).ok();
}

/// Waits until `d` serves `model`.
fn serve(d: &Daemon, model: &str, token: &str) {
    eventually(&format!("{model} serving"), Duration::from_secs(300), || {
        let v: Value = http().get(format!("{}/v1/models", d.url)).bearer_auth(token).send().ok()?.json().ok()?;
        v["data"].as_array()?.iter().any(|m| m["id"] == model).then_some(())
    });
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}
