//! Rollout planning time for BENCHMARKS.md: one `evaluate` over per-class observations, then `target` (the
//! stable wave-membership hash) for N devices, as a server does when a wave advances.
//!
//!     cargo run --release -p edgefleet-server --example bench_rollout -- [DEVICES]

use std::collections::BTreeMap;
use std::time::Instant;

use edgefleet_protocol::{DeviceId, ReleaseVersion};
use edgefleet_server::rollout::{Gate, OnFailure, Rollout, State, Stats, Wave, evaluate, target};

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    let r = Rollout {
        id: "bench".into(),
        model: "magika".parse()?,
        selector: Default::default(),
        baseline: ReleaseVersion::new(1)?,
        release: ReleaseVersion::new(2)?,
        waves: vec![
            Wave { percent: 1.0, cohort: None, bake_secs: 0 },
            Wave { percent: 10.0, cohort: None, bake_secs: 0 },
            Wave { percent: 100.0, cohort: None, bake_secs: 0 },
        ],
        gates: vec![
            Gate::ErrorRate { max_increase: 0.01 },
            Gate::P95LatencyRatio { max: 1.2 },
            Gate::EnergyRatio { max: 1.1 },
        ],
        min_samples: 100,
        on_failure: OnFailure::RollBack,
        choose_variant: Default::default(),
    };
    let s = Stats { requests: 1000, errors: 1, p95_ms: Some(10.0), ..Stats::default() };
    let seen: BTreeMap<String, (Stats, Stats)> =
        ["x86-server", "jetson-orin", "qualcomm-hexagon", "intel-npu", "raspberry-pi-5"]
            .map(|c| (c.to_owned(), (s, s)))
            .into();
    let devices: Vec<DeviceId> = (0..n).map(|i| format!("dev-{i:07}").parse()).collect::<Result<_, _>>()?;
    let t = Instant::now();
    let e = evaluate(&r, &State::Running { wave: 0, since: 0 }, &seen, false, 1);
    let evaluated = t.elapsed();
    let t = Instant::now();
    let on_new = devices.iter().filter(|d| target(&r, &e.state, d, &Default::default()) == r.release).count();
    let targeted = t.elapsed();
    println!("evaluate (5 classes x 3 gates): {:.1} µs; next state {:?}", evaluated.as_secs_f64() * 1e6, e.state);
    println!("target for {n} devices: {:.0} ms ({on_new} on the new release)", targeted.as_secs_f64() * 1e3);
    Ok(())
}
