//! `edgefleet rollout …`: create, look at, and steer rollouts through the REST API.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use edgefleet_protocol::rollout::{
    ChooseVariant, CreateRollout, Gate, Objective, OnFailure, RolloutView, State, Verdict, Wave,
};
use reqwest::Method;
use serde_json::json;

use crate::args::RolloutCmd;
use crate::output::Out;
use crate::remote::Remote;

/// `90s`, `30m`, `2h`, `1d` or plain seconds.
fn duration_secs(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("duration {s:?}: a number with s, m, h or d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("duration {s:?}: the unit is s, m, h or d"),
    };
    Ok(n * mult)
}

/// `PERCENT[:BAKE]`, or `SELECTOR[:BAKE]` for an explicit cohort (which keeps the share of the wave before it).
pub fn waves(specs: &[String]) -> anyhow::Result<Vec<Wave>> {
    let mut out: Vec<Wave> = Vec::new();
    for s in specs {
        let (what, bake) = s.split_once(':').unwrap_or((s, "0"));
        let bake_secs = duration_secs(bake)?;
        let last = out.last().map_or(0.0, |w| w.percent);
        out.push(if what.contains('=') {
            let cohort = what.parse().with_context(|| format!("wave {s:?}: a cohort is a label selector"))?;
            Wave { percent: last, cohort: Some(cohort), bake_secs }
        } else {
            let percent =
                what.trim().trim_end_matches('%').parse().with_context(|| format!("wave {s:?}: PERCENT[:BAKE]"))?;
            Wave { percent, cohort: None, bake_secs }
        });
    }
    Ok(out)
}

/// `error-rate=0.01`, `p95-ratio=1.2`, `energy-ratio=1.1`, `install-failures=0.05`; for language models
/// `ttft-ratio=1.2`, `tpot-ratio=1.2`, `energy-per-token-ratio=1.1`, and under a routing policy
/// `cloud-share-ratio=2` (the share of requests answered in the cloud, new ÷ baseline).
pub fn gate(s: &str) -> anyhow::Result<Gate> {
    let (k, v) = s.split_once('=').with_context(|| format!("gate {s:?}: NAME=LIMIT"))?;
    let v: f64 = v.trim().parse().with_context(|| format!("gate {s:?}: the limit is a number"))?;
    Ok(match k.trim() {
        "error-rate" => Gate::ErrorRate { max_increase: v },
        "p95-ratio" => Gate::P95LatencyRatio { max: v },
        "energy-ratio" => Gate::EnergyRatio { max: v },
        "install-failures" => Gate::InstallFailureRatio { max: v },
        "ttft-ratio" => Gate::TtftP95Ratio { max: v },
        "tpot-ratio" => Gate::TpotP95Ratio { max: v },
        "energy-per-token-ratio" => Gate::EnergyPerTokenRatio { max: v },
        "cloud-share-ratio" => Gate::CloudShareRatio { max: v },
        other => bail!(
            "gate {other:?}: one of error-rate, p95-ratio, energy-ratio, install-failures, ttft-ratio, tpot-ratio, \
             energy-per-token-ratio, cloud-share-ratio"
        ),
    })
}

/// `--choose-variant` with its `--objective` and `--measure-devices`.
pub fn choose_variant(how: &str, objective: &str, min_devices: u64) -> anyhow::Result<ChooseVariant> {
    let objective = match objective {
        "latency" => Objective::Latency,
        "energy" => Objective::Energy,
        other => bail!("--objective {other:?}: latency or energy"),
    };
    Ok(match how {
        "first-fit" => ChooseVariant::FirstFit,
        "by-measurement" => ChooseVariant::Measurement { objective, min_devices },
        other => bail!("--choose-variant {other:?}: first-fit or by-measurement"),
    })
}

fn state_text(s: &State) -> String {
    match s {
        State::Running { wave, .. } => format!("running (wave {})", wave + 1),
        State::Paused { wave, reason } => format!("paused at wave {}: {reason}", wave + 1),
        State::RolledBack { reason } => format!("rolled back: {reason}"),
        State::Aborted { reason } => format!("aborted: {reason}"),
        State::Done => "done".into(),
    }
}

fn describe(v: &RolloutView) -> String {
    let r = &v.rollout;
    let mut t = format!(
        "{}  {} {} → {} on [{}]  {}\n  {:.0} % of the selected devices on release {}; created {} by {}\n  waves:",
        r.id,
        r.model,
        r.baseline,
        r.release,
        r.selector,
        state_text(&v.state),
        v.share_percent,
        r.release,
        v.created_at,
        v.created_by
    );
    for (i, w) in r.waves.iter().enumerate() {
        let cohort = w.cohort.as_ref().map(|c| format!(" + [{c}]")).unwrap_or_default();
        let _ = write!(t, " {}) {} %{cohort} bake {} s", i + 1, w.percent, w.bake_secs);
    }
    let _ = write!(t, "\n  gates (min {} samples, on failure {:?}):", r.min_samples, r.on_failure);
    if v.gate_results.is_empty() {
        t.push_str(" not evaluated yet");
    }
    for g in &v.gate_results {
        let value = g.value.map_or("-".to_owned(), |x| format!("{x:.3}"));
        let verdict = match g.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::TooFewSamples => "too few samples",
            Verdict::Unavailable => "unavailable (no sensor)",
            Verdict::NotReached => "not reached yet",
        };
        let _ = write!(
            t,
            "\n    {:28} {:18} {:>8} (limit {:.3})  samples {} new / {} baseline  {verdict}",
            g.gate.name(),
            g.class,
            value,
            g.threshold,
            g.samples_new,
            g.samples_baseline
        );
    }
    if let ChooseVariant::Measurement { objective, min_devices } = r.choose_variant {
        let _ =
            write!(t, "\n  variant chosen by measurement ({}, {min_devices} device(s) per class):", objective.as_str());
        if v.variant_choices.is_empty() {
            t.push_str(" no class measured yet");
        }
        for c in &v.variant_choices {
            let chosen = match (&c.variant, c.decided) {
                (Some(v), _) => v.to_string(),
                (None, true) => "first fit".into(),
                (None, false) => "measuring".into(),
            };
            let _ = write!(t, "\n    {:18} {chosen:14} {}", c.class, c.reason);
            for m in &c.measured {
                let ms = m.median_ms.map_or("-".to_owned(), |x| format!("{x:.3} ms"));
                let mj = m.energy_mj.map_or(String::new(), |x| format!(", {x:.3} mJ"));
                let _ = write!(t, "\n      {:16} {ms}{mj} on {} device(s), {} failed", m.variant, m.devices, m.failed);
            }
        }
    }
    t
}

pub fn run(cmd: RolloutCmd, out: &Out) -> anyhow::Result<()> {
    let remote = Remote::from_saved()?;
    let view = |v: serde_json::Value| -> anyhow::Result<RolloutView> { Ok(serde_json::from_value(v)?) };
    let (path, action) = match cmd {
        RolloutCmd::Create {
            model,
            release,
            baseline,
            selector,
            waves,
            gates,
            min_samples,
            on_failure,
            choose_variant,
            objective,
            measure_devices,
        } => {
            let req = CreateRollout {
                model: model.parse()?,
                release: edgefleet_protocol::ReleaseVersion::new(release)?,
                baseline: baseline.map(edgefleet_protocol::ReleaseVersion::new).transpose()?,
                selector: selector.parse()?,
                waves: self::waves(&waves)?,
                gates: gates.iter().map(|g| gate(g)).collect::<anyhow::Result<_>>()?,
                min_samples,
                on_failure: match on_failure.as_str() {
                    "pause" => OnFailure::Pause,
                    "rollback" | "roll-back" | "roll_back" => OnFailure::RollBack,
                    other => bail!("--on-failure {other:?}: pause or rollback"),
                },
                choose_variant: self::choose_variant(&choose_variant, &objective, measure_devices)?,
            };
            req.validate().map_err(anyhow::Error::msg)?;
            let v = remote.send_json(Method::POST, "/rollouts", &serde_json::to_value(&req)?)?;
            out.emit(format!("started {}", describe(&view(v.clone())?)), v);
            return Ok(());
        }
        RolloutCmd::Status { id: None } => {
            let v = remote.get_json("/rollouts")?;
            let all: Vec<RolloutView> = serde_json::from_value(v.clone())?;
            let text = if all.is_empty() {
                "no rollouts".to_owned()
            } else {
                all.iter().map(describe).collect::<Vec<_>>().join("\n\n")
            };
            out.emit(text, v);
            return Ok(());
        }
        RolloutCmd::Status { id: Some(id) } => {
            let v = remote.get_json(&format!("/rollouts/{id}"))?;
            out.emit(describe(&view(v.clone())?), v);
            return Ok(());
        }
        RolloutCmd::Pause { id } => (id, "pause"),
        RolloutCmd::Resume { id } => (id, "resume"),
        RolloutCmd::Abort { id } => (id, "abort"),
        RolloutCmd::Promote { id } => (id, "promote"),
    };
    let v = remote.send_json(Method::POST, &format!("/rollouts/{path}/{action}"), &json!({}))?;
    out.emit(describe(&view(v.clone())?), v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_and_gates_parse() {
        let w = |specs: &[&str]| waves(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let got = w(&["canary=true:30m", "12.5%:2h", "100"]).expect("waves");
        assert_eq!(got[0], Wave { percent: 0.0, cohort: Some("canary=true".parse().expect("sel")), bake_secs: 1800 });
        assert_eq!(got[1], Wave { percent: 12.5, cohort: None, bake_secs: 7200 });
        assert_eq!(got[2], Wave { percent: 100.0, cohort: None, bake_secs: 0 });
        assert!(w(&["ten:1m"]).is_err());
        assert!(w(&["10:1y"]).is_err());
        assert_eq!(gate("p95-ratio=1.2").expect("gate"), Gate::P95LatencyRatio { max: 1.2 });
        assert_eq!(gate("error-rate=0.01").expect("gate"), Gate::ErrorRate { max_increase: 0.01 });
        assert!(gate("speed=2").is_err());
        assert!(gate("p95-ratio").is_err());
        assert_eq!(choose_variant("first-fit", "latency", 1).expect("how"), ChooseVariant::FirstFit);
        assert_eq!(
            choose_variant("by-measurement", "energy", 2).expect("how"),
            ChooseVariant::Measurement { objective: Objective::Energy, min_devices: 2 }
        );
        assert!(choose_variant("fastest", "latency", 1).is_err());
        assert!(choose_variant("by-measurement", "speed", 1).is_err());
    }
}
