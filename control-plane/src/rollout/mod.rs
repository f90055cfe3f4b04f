//! The rollout planner, pure: a rollout moves one model of a label selector from a baseline release to a new
//! one in waves; [`evaluate`] takes the rollout, its state, what the fleet reported (per device class, new
//! release against baseline on the same class) and the time, and answers the next state with every gate's
//! numbers. [`target`] says which release a device runs. No I/O, no clock: the caller passes `now` and the
//! observations; [`engine`] gathers them from the telemetry rollups and is run by one server at a time.
//!
//! Wave membership is stable: a device is in the first `percent` % of a rollout when the hash of (rollout id,
//! device id) falls below it, so a device in wave 1 stays in every later wave, and different rollouts pick
//! different first devices.

use std::collections::BTreeMap;

use edgefleet_protocol::api::Labels;
pub use edgefleet_protocol::rollout::{Action, Gate, GateResult, OnFailure, Rollout, State, Verdict, Wave};
use edgefleet_protocol::{DeviceId, ReleaseVersion};
use sha2::{Digest, Sha256};

pub mod choice;
pub mod engine;

/// What one release did on one device class over the rollout so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub p95_ms: Option<f64>,
    /// Inferences measured with an energy counter, and the energy per inference over them (J).
    pub energy_inferences: u64,
    pub joules_per_inference: Option<f64>,
    pub installs: u64,
    pub install_failures: u64,
    /// Online devices of the class that the rollout's waves so far put on this release (counted from the
    /// inventory, not from telemetry): a class with such devices has been reached even before any reports.
    pub devices: u64,
    /// The rollout chooses variants by measurement and this class, reached, has no decided choice yet: the
    /// wave holds (see `choice.rs`).
    pub choosing: bool,
    /// A language model's numbers (all zero for other models).
    pub llm: LlmStats,
    /// How a language model's requests were routed (all zero without a routing policy's telemetry).
    pub route: RouteStats,
}

/// How a release's language-model requests were routed on a device class: by reason and tier, and what the
/// cloud calls cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RouteStats {
    /// Routed requests, and those the cloud answered.
    pub requests: u64,
    pub cloud: u64,
    /// Per reason, in the order of `edgefleet_protocol::telemetry::ROUTE_REASONS`.
    pub by_reason: [u64; edgefleet_protocol::telemetry::ROUTE_REASONS.len()],
    /// Cloud calls answered and failed, request bytes sent, and answered calls' latency.
    pub cloud_answered: u64,
    pub cloud_errors: u64,
    pub cloud_bytes: u64,
    pub cloud_p50_ms: Option<f64>,
    pub cloud_p95_ms: Option<f64>,
}

impl RouteStats {
    /// The share of routed requests the cloud answered (0–1), `None` before any.
    pub fn cloud_share(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.cloud as f64 / self.requests as f64)
    }
}

/// What a language-model release did on a device class: time to first token and per output token (p95 over
/// requests), tokens read and written, and joules per output token where a sensor measured them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LlmStats {
    pub ttft_requests: u64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub tpot_requests: u64,
    pub tpot_p50_ms: Option<f64>,
    pub tpot_p95_ms: Option<f64>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Output tokens of exports that carried energy, and the joules per output token over them.
    pub energy_tokens: u64,
    pub joules_per_token: Option<f64>,
}

/// Per device class: (new release, baseline).
pub type Observations = BTreeMap<String, (Stats, Stats)>;

/// The planner's answer: the next state (the same one when nothing changes) and every gate's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub state: State,
    pub gates: Vec<GateResult>,
}

/// Where in [0, 100) a device falls for a rollout.
pub fn position(rollout_id: &str, device: &DeviceId) -> f64 {
    let mut h = Sha256::new();
    h.update(rollout_id.as_bytes());
    h.update([0]);
    h.update(device.as_str().as_bytes());
    let d = h.finalize();
    let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (n as f64 / u64::MAX as f64) * 100.0
}

/// The share of devices on the new release in a state (percent).
pub fn share(r: &Rollout, state: &State) -> f64 {
    match state {
        State::Running { wave, .. } | State::Paused { wave, .. } => r.waves.get(*wave).map_or(100.0, |w| w.percent),
        State::Done => 100.0,
        State::RolledBack { .. } | State::Aborted { .. } => 0.0,
    }
}

/// Whether a device with `labels` is in an explicit cohort of a wave the rollout has reached.
fn in_cohort(r: &Rollout, state: &State, labels: &Labels) -> bool {
    let reached = match state {
        State::Running { wave, .. } | State::Paused { wave, .. } => wave + 1,
        State::Done => r.waves.len(),
        State::RolledBack { .. } | State::Aborted { .. } => 0,
    };
    r.waves.iter().take(reached).any(|w| w.cohort.as_ref().is_some_and(|c| c.matches(labels)))
}

/// Which release a selected device (its id and labels) should run.
pub fn target(r: &Rollout, state: &State, device: &DeviceId, labels: &Labels) -> ReleaseVersion {
    if position(&r.id, device) < share(r, state) || in_cohort(r, state, labels) { r.release } else { r.baseline }
}

fn judge(gate: Gate, class: &str, new: &Stats, old: &Stats, min: u64) -> GateResult {
    let rate = |s: &Stats| if s.requests == 0 { 0.0 } else { s.errors as f64 / s.requests as f64 };
    let threshold = gate.threshold();
    let (value, samples) = match gate {
        Gate::ErrorRate { .. } => (Some(rate(new) - rate(old)), (new.requests, old.requests)),
        Gate::P95LatencyRatio { .. } => (new.p95_ms.zip(old.p95_ms).map(|(n, o)| n / o), (new.requests, old.requests)),
        Gate::EnergyRatio { .. } => (
            new.joules_per_inference.zip(old.joules_per_inference).map(|(n, o)| n / o),
            (new.energy_inferences, old.energy_inferences),
        ),
        Gate::InstallFailureRatio { .. } => {
            let v = (new.installs > 0).then(|| new.install_failures as f64 / new.installs as f64);
            (v, (new.installs, old.installs))
        }
        Gate::TtftP95Ratio { .. } => (
            new.llm.ttft_p95_ms.zip(old.llm.ttft_p95_ms).map(|(n, o)| n / o),
            (new.llm.ttft_requests, old.llm.ttft_requests),
        ),
        Gate::TpotP95Ratio { .. } => (
            new.llm.tpot_p95_ms.zip(old.llm.tpot_p95_ms).map(|(n, o)| n / o),
            (new.llm.tpot_requests, old.llm.tpot_requests),
        ),
        Gate::EnergyPerTokenRatio { .. } => (
            new.llm.joules_per_token.zip(old.llm.joules_per_token).map(|(n, o)| n / o),
            (new.llm.energy_tokens, old.llm.energy_tokens),
        ),
        Gate::CloudShareRatio { .. } => (
            // Nothing to the cloud is never more than the baseline sent; anything, where the baseline sent
            // nothing, is infinitely more (and fails).
            new.route.cloud_share().zip(old.route.cloud_share()).map(|(n, o)| {
                if n == 0.0 {
                    0.0
                } else if o == 0.0 {
                    f64::INFINITY
                } else {
                    n / o
                }
            }),
            (new.route.requests, old.route.requests),
        ),
    };
    let judged = |value: Option<f64>| match value {
        None => Verdict::Unavailable,
        Some(v) if v.is_finite() && v <= threshold => Verdict::Pass,
        Some(_) => Verdict::Fail,
    };
    let reached = new.devices > 0 || new.requests > 0 || new.installs > 0 || new.install_failures > 0;
    let verdict = if !reached {
        // The waves so far hold no online device of this class: the wave that reaches the class judges it.
        // Holding here would hold every wave short of 100 % forever on a mixed fleet. A class the waves did
        // reach is judged from its first device on, reports or not: silence is too few samples, not a pass.
        Verdict::NotReached
    } else if samples.0 == 0
        && samples.1 == 0
        && matches!(gate, Gate::EnergyRatio { .. } | Gate::EnergyPerTokenRatio { .. } | Gate::CloudShareRatio { .. })
    {
        // No sensor on the class, or no routing telemetry from it (no policy in force there): nothing to judge.
        Verdict::Unavailable
    } else if let Gate::InstallFailureRatio { .. } = gate {
        // Installs of the new release are judged on their own (the baseline's are long done), from the first:
        // each is one device's whole verdict on the release, and a class has only as many as it has devices in
        // the wave — `min_samples`, a count of requests, would hold a small class forever.
        if samples.0 == 0 { Verdict::TooFewSamples } else { judged(value) }
    } else if samples.0 < min || samples.1 < min {
        Verdict::TooFewSamples
    } else {
        judged(value)
    };
    GateResult {
        gate,
        class: class.to_owned(),
        value,
        threshold,
        samples_new: samples.0,
        samples_baseline: samples.1,
        verdict,
    }
}

/// A failed gate in words, with its numbers: what the audit log and the rollout's state say.
pub fn describe(g: &GateResult) -> String {
    format!(
        "{} on {} is {:.3}, over the limit {:.3} ({} samples new, {} baseline)",
        g.gate.name(),
        g.class,
        g.value.unwrap_or(f64::NAN),
        g.threshold,
        g.samples_new,
        g.samples_baseline
    )
}

/// The planner. `withdrawn`: the new release was withdrawn (or its signing key revoked) since the rollout began.
pub fn evaluate(r: &Rollout, state: &State, seen: &Observations, withdrawn: bool, now: i64) -> Evaluation {
    let gates: Vec<GateResult> = seen
        .iter()
        .flat_map(|(class, (new, old))| r.gates.iter().map(move |g| judge(*g, class, new, old, r.min_samples)))
        .collect();
    let next = match state {
        State::Running { .. } | State::Paused { .. } if withdrawn => {
            State::Aborted { reason: format!("release {} was withdrawn", r.release) }
        }
        State::Running { wave, since } => {
            if let Some(failed) = gates.iter().find(|g| g.verdict == Verdict::Fail) {
                let reason = describe(failed);
                match r.on_failure {
                    OnFailure::Pause => State::Paused { wave: *wave, reason },
                    OnFailure::RollBack => State::RolledBack { reason },
                }
            } else {
                let baked = r.waves.get(*wave).is_none_or(|w| now - since >= (w.bake_secs as i64).saturating_mul(1000));
                // A wave advances once baked and once every gate of every class it reached could judge: too
                // few samples holds it.
                let judged = gates
                    .iter()
                    .all(|g| matches!(g.verdict, Verdict::Pass | Verdict::Unavailable | Verdict::NotReached));
                // Nor while a class it reached still has its variant chosen by measurement.
                let chosen = seen.values().all(|(new, _)| !new.choosing);
                if baked && judged && chosen {
                    if wave + 1 < r.waves.len() { State::Running { wave: wave + 1, since: now } } else { State::Done }
                } else {
                    state.clone()
                }
            }
        }
        other => other.clone(),
    };
    Evaluation { state: next, gates }
}

/// An operator's action on a state; `Err` says why it does not apply.
pub fn apply(state: &State, action: Action, now: i64) -> Result<State, String> {
    match (state, action) {
        (State::Running { wave, .. }, Action::Pause) => {
            Ok(State::Paused { wave: *wave, reason: "paused by an operator".into() })
        }
        (State::Paused { wave, .. }, Action::Resume) => Ok(State::Running { wave: *wave, since: now }),
        (State::Running { .. } | State::Paused { .. }, Action::Abort) => {
            Ok(State::Aborted { reason: "aborted by an operator".into() })
        }
        (State::Running { .. } | State::Paused { .. }, Action::Promote) => Ok(State::Done),
        (s, a) => Err(format!("cannot {a:?} a rollout that is {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn rollout(on_failure: OnFailure) -> Rollout {
        Rollout {
            id: "r1".into(),
            model: "magika".parse().expect("name"),
            selector: Default::default(),
            baseline: ReleaseVersion::new(1).expect("v"),
            release: ReleaseVersion::new(2).expect("v"),
            waves: vec![
                Wave { percent: 1.0, cohort: None, bake_secs: 600 },
                Wave { percent: 10.0, cohort: None, bake_secs: 600 },
                Wave { percent: 100.0, cohort: None, bake_secs: 0 },
            ],
            gates: vec![
                Gate::ErrorRate { max_increase: 0.01 },
                Gate::P95LatencyRatio { max: 1.2 },
                Gate::EnergyRatio { max: 1.1 },
                Gate::InstallFailureRatio { max: 0.05 },
            ],
            min_samples: 100,
            on_failure,
            choose_variant: Default::default(),
        }
    }

    fn stats(requests: u64, errors: u64, p95: f64, energy: Option<(u64, f64)>) -> Stats {
        Stats {
            requests,
            errors,
            p95_ms: Some(p95),
            energy_inferences: energy.map_or(0, |e| e.0),
            joules_per_inference: energy.map(|e| e.1),
            installs: 200,
            install_failures: 0,
            devices: 0,
            llm: LlmStats::default(),
            route: RouteStats::default(),
            choosing: false,
        }
    }

    fn healthy() -> Stats {
        stats(1000, 5, 10.0, Some((1000, 0.5)))
    }

    fn seen(class: &str, new: Stats, old: Stats) -> Observations {
        BTreeMap::from([(class.to_owned(), (new, old))])
    }

    /// One row: a state, what was seen, withdrawn or not, minutes since the wave began → the expected state.
    fn check(on_failure: OnFailure, obs: Observations, withdrawn: bool, minutes: i64, expected: &str) {
        let r = rollout(on_failure);
        let e = evaluate(&r, &State::Running { wave: 0, since: 0 }, &obs, withdrawn, minutes * MIN);
        let got = match &e.state {
            State::Running { wave, since } => format!("running wave {wave} since {}", since / MIN),
            State::Paused { reason, .. } => format!("paused: {reason}"),
            State::RolledBack { reason } => format!("rolled back: {reason}"),
            State::Aborted { reason } => format!("aborted: {reason}"),
            State::Done => "done".into(),
        };
        assert!(got.starts_with(expected), "expected {expected:?}, got {got:?}; gates {:#?}", e.gates);
    }

    /// A language model's numbers: TTFT p95, time per token p95, joules per token (if a sensor), with samples.
    fn llm(ttft_ms: f64, tpot_ms: f64, joules_per_token: Option<f64>) -> Stats {
        Stats {
            llm: LlmStats {
                ttft_requests: 500,
                ttft_p50_ms: Some(ttft_ms / 2.0),
                ttft_p95_ms: Some(ttft_ms),
                tpot_requests: 500,
                tpot_p50_ms: Some(tpot_ms * 0.8),
                tpot_p95_ms: Some(tpot_ms),
                tokens_in: 20_000,
                tokens_out: 10_000,
                energy_tokens: if joules_per_token.is_some() { 10_000 } else { 0 },
                joules_per_token,
            },
            ..healthy()
        }
    }

    #[test]
    fn language_model_gates_judge_ttft_time_per_token_and_energy_per_token() {
        let gates = [
            Gate::TtftP95Ratio { max: 1.25 },
            Gate::TpotP95Ratio { max: 1.25 },
            Gate::EnergyPerTokenRatio { max: 1.1 },
        ];
        let judge_all = |new: &Stats, old: &Stats| -> Vec<(Verdict, Option<f64>)> {
            gates.iter().map(|g| judge(*g, "nvidia-jetson", new, old, 100)).map(|r| (r.verdict, r.value)).collect()
        };
        let base = llm(200.0, 40.0, Some(0.02));
        let same = judge_all(&llm(210.0, 41.0, Some(0.021)), &base);
        assert!(same.iter().all(|(v, _)| *v == Verdict::Pass), "{same:?}");
        let slow_start = judge_all(&llm(400.0, 41.0, Some(0.021)), &base);
        assert_eq!(slow_start[0], (Verdict::Fail, Some(2.0)));
        let slow_decode = judge_all(&llm(210.0, 60.0, Some(0.021)), &base);
        assert_eq!(slow_decode[1], (Verdict::Fail, Some(1.5)));
        let hungry = judge_all(&llm(210.0, 41.0, Some(0.03)), &base);
        assert_eq!(hungry[2].0, Verdict::Fail);
        // No sensor on either side: energy per token is unavailable, never a made-up pass.
        let dark = judge_all(&llm(210.0, 41.0, None), &llm(200.0, 40.0, None));
        assert_eq!(dark[2], (Verdict::Unavailable, None));
        // Too few requests with a first token: held, not judged.
        let mut few = llm(210.0, 41.0, Some(0.02));
        few.llm.ttft_requests = 3;
        assert_eq!(judge(gates[0], "nvidia-jetson", &few, &base, 100).verdict, Verdict::TooFewSamples);
        // The whole rollout: a slower first token rolls it back.
        let r = Rollout { gates: gates.to_vec(), ..rollout(OnFailure::RollBack) };
        let e = evaluate(
            &r,
            &State::Running { wave: 0, since: 0 },
            &seen("nvidia-jetson", llm(400.0, 40.0, Some(0.02)), base),
            false,
            MIN,
        );
        assert!(
            matches!(&e.state, State::RolledBack { reason } if reason.contains("time-to-first-token")),
            "{:?}",
            e.state
        );
    }

    /// `requests` routed, `cloud` of them answered in the cloud.
    fn routed(requests: u64, cloud: u64) -> Stats {
        Stats { route: RouteStats { requests, cloud, ..Default::default() }, ..healthy() }
    }

    #[test]
    fn the_cloud_share_gate_stops_a_release_that_sends_more_to_the_cloud() {
        let gate = Gate::CloudShareRatio { max: 2.0 };
        let judged = |new: Stats, old: Stats| {
            let r = judge(gate, "x86-server", &new, &old, 100);
            (r.verdict, r.value)
        };
        // 10 % → 15 %: within twice; 10 % → 25 %: over.
        let (verdict, value) = judged(routed(1000, 150), routed(1000, 100));
        assert!(verdict == Verdict::Pass && value.is_some_and(|v| (v - 1.5).abs() < 1e-9), "{verdict:?} {value:?}");
        let (verdict, value) = judged(routed(1000, 250), routed(1000, 100));
        assert!(verdict == Verdict::Fail && value.is_some_and(|v| (v - 2.5).abs() < 1e-9), "{verdict:?} {value:?}");
        // Nothing to the cloud passes whatever the baseline did; anything where the baseline sent nothing fails.
        assert_eq!(judged(routed(1000, 0), routed(1000, 0)), (Verdict::Pass, Some(0.0)));
        let (verdict, value) = judged(routed(1000, 1), routed(1000, 0));
        assert_eq!(verdict, Verdict::Fail);
        assert!(value.is_some_and(f64::is_infinite));
        // Too few routed requests on either side: held.
        assert_eq!(judged(routed(50, 40), routed(1000, 100)).0, Verdict::TooFewSamples);
        // No routing telemetry on either side (no policy in force on the class): unavailable, not held.
        assert_eq!(judged(healthy(), healthy()), (Verdict::Unavailable, None));
        let r = Rollout { gates: vec![gate], ..rollout(OnFailure::RollBack) };
        let e = evaluate(
            &r,
            &State::Running { wave: 0, since: 0 },
            &seen("x86-server", routed(1000, 300), routed(1000, 100)),
            false,
            MIN,
        );
        assert!(
            matches!(&e.state, State::RolledBack { reason } if reason.contains("cloud-share ratio on x86-server is 3.000")),
            "{:?}",
            e.state
        );
    }

    #[test]
    fn gates_fire_and_hold() {
        use OnFailure::*;
        let ok = || seen("x86-server", healthy(), healthy());
        // Healthy and baked: the next wave; not yet baked: stay.
        check(Pause, ok(), false, 10, "running wave 1 since 10");
        check(Pause, ok(), false, 9, "running wave 0 since 0");
        // Error rate: 5 points more than the baseline.
        check(
            Pause,
            seen("x86-server", stats(1000, 55, 10.0, Some((1000, 0.5))), healthy()),
            false,
            1,
            "paused: error-rate increase on x86-server is 0.050",
        );
        check(
            RollBack,
            seen("x86-server", stats(1000, 55, 10.0, Some((1000, 0.5))), healthy()),
            false,
            1,
            "rolled back: error-rate increase",
        );
        // Latency: 1.5x fails; exactly the limit (a tie) passes.
        check(
            RollBack,
            seen("jetson-orin", stats(1000, 5, 15.0, Some((1000, 0.5))), healthy()),
            false,
            1,
            "rolled back: p95 latency ratio on jetson-orin is 1.500",
        );
        check(
            Pause,
            seen("jetson-orin", stats(1000, 5, 12.0, Some((1000, 0.5))), healthy()),
            false,
            10,
            "running wave 1",
        );
        // Energy: 1.2x fails.
        check(
            Pause,
            seen("x86-server", stats(1000, 5, 10.0, Some((1000, 0.6))), healthy()),
            false,
            1,
            "paused: energy-per-inference ratio on x86-server is 1.200",
        );
        // Install failures: 20 of 200.
        let broken = Stats { install_failures: 20, ..healthy() };
        check(
            RollBack,
            seen("raspberry-pi-5", broken, healthy()),
            false,
            1,
            "rolled back: install failure ratio on raspberry-pi-5 is 0.100",
        );
        // Install failures are judged from the first install, whatever min_samples: one device of one.
        let first = Stats { installs: 1, install_failures: 1, ..healthy() };
        check(RollBack, seen("raspberry-pi-5", first, healthy()), false, 1, "rolled back: install failure ratio");
        // Too few samples: a terrible ratio is not judged, and the wave is held even when baked.
        check(
            Pause,
            seen("x86-server", stats(50, 40, 90.0, Some((50, 5.0))), healthy()),
            false,
            30,
            "running wave 0 since 0",
        );
        // No power sensor on either side: energy is unavailable, never a failure, and does not hold the wave.
        check(
            Pause,
            seen("raspberry-pi-5", stats(1000, 5, 10.0, None), stats(1000, 5, 10.0, None)),
            false,
            10,
            "running wave 1",
        );
        // A class the waves have not reached (baseline numbers only) is not judged and does not hold the wave;
        // a reached class with too few samples still does.
        let mut mixed = ok();
        mixed.insert("raspberry-pi-5".into(), (Stats::default(), healthy()));
        check(Pause, mixed.clone(), false, 10, "running wave 1");
        mixed.insert("jetson-orin".into(), (stats(5, 0, 10.0, None), healthy()));
        check(Pause, mixed, false, 10, "running wave 0 since 0");
        let r = rollout(OnFailure::Pause);
        let e = evaluate(
            &r,
            &State::Running { wave: 0, since: 0 },
            &seen("raspberry-pi-5", Stats::default(), healthy()),
            false,
            0,
        );
        assert!(e.gates.iter().all(|g| g.verdict == Verdict::NotReached), "{:#?}", e.gates);
        // A class whose online devices the wave put on the new release, none of which has reported yet, holds
        // the wave however long it baked: no evidence is not a pass.
        let mut silent = ok();
        silent.insert("raspberry-pi-5".into(), (Stats { devices: 2, ..Stats::default() }, healthy()));
        check(Pause, silent, false, 10, "running wave 0 since 0");
        // A release withdrawn mid-rollout: aborted, whatever the gates say.
        check(Pause, ok(), true, 10, "aborted: release 2 was withdrawn");
        // One class failing is enough, whatever the others do.
        let mut two = ok();
        two.insert("jetson-orin".into(), (stats(1000, 5, 30.0, Some((1000, 0.5))), healthy()));
        check(Pause, two, false, 10, "paused: p95 latency ratio on jetson-orin");
    }

    #[test]
    fn the_last_wave_finishes_and_final_states_stay() {
        let r = rollout(OnFailure::Pause);
        let obs = seen("x86-server", healthy(), healthy());
        let last = State::Running { wave: 2, since: 0 };
        assert_eq!(evaluate(&r, &last, &obs, false, 0).state, State::Done);
        for s in [State::Done, State::Aborted { reason: "x".into() }, State::RolledBack { reason: "y".into() }] {
            assert_eq!(evaluate(&r, &s, &obs, true, 99 * MIN).state, s);
        }
        let paused = State::Paused { wave: 1, reason: "p".into() };
        assert_eq!(evaluate(&r, &paused, &obs, false, 99 * MIN).state, paused, "a pause holds until resumed");
    }

    #[test]
    fn waves_are_stable_and_nested() {
        let r = rollout(OnFailure::Pause);
        let devices: Vec<DeviceId> = (0..10_000).map(|i| format!("dev-{i}").parse().expect("id")).collect();
        let none = Labels::new();
        let on_new = |s: &State| devices.iter().filter(|d| target(&r, s, d, &none) == r.release).count();
        let w0 = State::Running { wave: 0, since: 0 };
        let w1 = State::Running { wave: 1, since: 0 };
        let (n0, n1) = (on_new(&w0), on_new(&w1));
        assert!((50..=150).contains(&n0), "1 % of 10,000: {n0}");
        assert!((850..=1150).contains(&n1), "10 % of 10,000: {n1}");
        // Every device of wave 0 is in wave 1 (a device never flips back and forth between waves).
        assert!(
            devices.iter().all(|d| target(&r, &w0, d, &none) == r.baseline || target(&r, &w1, d, &none) == r.release)
        );
        assert_eq!(on_new(&State::Done), 10_000);
        assert_eq!(on_new(&State::RolledBack { reason: String::new() }), 0);
        // A paused rollout keeps the devices it already moved.
        assert_eq!(on_new(&State::Paused { wave: 1, reason: String::new() }), n1);
        // Another rollout picks other first devices; a device changing class keeps its place (only ids count).
        let other = Rollout { id: "r2".into(), ..rollout(OnFailure::Pause) };
        let first =
            |r: &Rollout| devices.iter().filter(|d| target(r, &w0, d, &none) == r.release).cloned().collect::<Vec<_>>();
        assert_ne!(first(&r), first(&other));
    }

    #[test]
    fn explicit_cohorts_join_with_their_wave_and_stay() {
        let mut r = rollout(OnFailure::Pause);
        r.waves.insert(0, Wave { percent: 0.0, cohort: Some("canary=true".parse().expect("sel")), bake_secs: 600 });
        let canary: Labels = [("canary".to_owned(), "true".to_owned())].into();
        let plain = Labels::new();
        let d: DeviceId = "dev-1".parse().expect("id");
        let (w0, w1) = (State::Running { wave: 0, since: 0 }, State::Running { wave: 1, since: 0 });
        assert_eq!(target(&r, &w0, &d, &canary), r.release, "the cohort is wave 0");
        assert_eq!(target(&r, &w1, &d, &canary), r.release, "and stays in later waves");
        assert_eq!(target(&r, &State::Done, &d, &canary), r.release);
        assert_eq!(target(&r, &State::RolledBack { reason: String::new() }, &d, &canary), r.baseline);
        // A device outside the cohort is only moved by its place (here: 0 % in wave 0).
        assert_eq!(target(&r, &w0, &d, &plain), r.baseline);
        // A cohort of a wave not reached yet moves nobody.
        let mut later = rollout(OnFailure::Pause);
        later.waves[1].cohort = Some("canary=true".parse().expect("sel"));
        let far: Vec<DeviceId> = (0..200).map(|i| format!("far-{i}").parse().expect("id")).collect();
        let moved = |s: &State| far.iter().filter(|d| target(&later, s, d, &canary) == later.release).count();
        assert!(moved(&w0) < 20, "1 % by place only before wave 1");
        assert_eq!(moved(&w1), 200, "wave 1 brings the whole cohort");
    }

    #[test]
    fn operators_pause_resume_abort_promote() {
        let running = State::Running { wave: 1, since: 0 };
        let paused = apply(&running, Action::Pause, 5).expect("pause");
        assert_eq!(paused, State::Paused { wave: 1, reason: "paused by an operator".into() });
        assert_eq!(apply(&paused, Action::Resume, 7).expect("resume"), State::Running { wave: 1, since: 7 });
        assert_eq!(apply(&running, Action::Promote, 7).expect("promote"), State::Done);
        assert!(matches!(apply(&paused, Action::Abort, 7).expect("abort"), State::Aborted { .. }));
        assert!(apply(&State::Done, Action::Resume, 7).is_err());
        assert!(apply(&running, Action::Resume, 7).is_err());
    }

    #[test]
    fn a_wave_waits_for_its_classes_variant_choices() {
        let r = Rollout { gates: vec![], ..rollout(OnFailure::Pause) };
        let running = State::Running { wave: 0, since: 0 };
        let mut choosing = healthy();
        choosing.choosing = true;
        let e = evaluate(&r, &running, &seen("pi", choosing, healthy()), false, 60 * MIN);
        assert_eq!(e.state, running, "baked, every gate judged, but the Pis' variant is not chosen yet");
        let e = evaluate(&r, &running, &seen("pi", healthy(), healthy()), false, 60 * MIN);
        assert_eq!(e.state, State::Running { wave: 1, since: 60 * MIN });
        let failing = Rollout { gates: vec![Gate::ErrorRate { max_increase: 0.01 }], ..rollout(OnFailure::Pause) };
        let mut bad = stats(1000, 500, 10.0, None);
        bad.choosing = true;
        let e = evaluate(&failing, &running, &seen("pi", bad, healthy()), false, 60 * MIN);
        assert!(matches!(e.state, State::Paused { .. }), "a failed gate is never held back: {:?}", e.state);
    }
}
