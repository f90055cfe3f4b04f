//! The router's own cost per request before generation, as `openai/routed.rs` pays it: the policy looked up in
//! the serving table, the battery's capacity file read, the signals gathered and `route::before` decided.
//! (Tokenizing the prompt is the engine's work, paid by a local answer anyway, and not counted.)
//!
//!   cargo run --release -p edgefleet-daemon --example bench_route [requests]

use std::collections::BTreeMap;
use std::time::Instant;

use edgefleet_daemon::route::{self, Signals, Tier};
use edgefleet_daemon::serving::ModelTable;
use model_registry::routing::RoutingPolicy;

fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let battery = dir.path().join("sys/class/power_supply/BAT0");
    std::fs::create_dir_all(&battery)?;
    std::fs::write(battery.join("type"), "Battery\n")?;
    std::fs::write(battery.join("capacity"), "80\n")?;
    let capacity = edgefleet_daemon::power::battery(dir.path()).expect("the battery");
    let policy: RoutingPolicy = serde_json::from_value(serde_json::json!({"mode": "auto", "tiers": ["gpu"],
        "rules": {"max_prompt_tokens": 512, "ttft_slo_ms": 800, "min_battery_percent": 20, "max_queue_depth": 8,
            "confidence": {"tokens": 4, "stat": "mean", "min_logprob_milli": -1000}, "allow_override": true}}))?;
    let table = ModelTable::default();
    table.set_policies(&BTreeMap::from([("chat".parse()?, policy)]));
    let started = Instant::now();
    let mut cloud = 0u32;
    for i in 0..n {
        let policy = table.policy("chat").expect("a policy");
        let signals = Signals {
            prompt_tokens: Some(100 + i % 500),
            prefill_tokens_per_sec: Some(400.0),
            request_ttft_slo_ms: None,
            battery_percent: edgefleet_daemon::power::battery_percent(&capacity),
            local_ready: true,
            queue_depth: i % 10,
            requested: None,
            cloud_configured: true,
        };
        cloud += u32::from(route::before(&policy, &signals).tier == Tier::Cloud);
    }
    let per = started.elapsed() / n;
    println!("{n} routing decisions: {per:?} each (policy lookup, battery file read, decision); {cloud} to the cloud");
    Ok(())
}
