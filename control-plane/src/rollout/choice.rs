//! Variant choice by measurement, pure: what one device class's measurements say ([`choose`]). The engine reads
//! the measurements, stores the choices and marks a reached class without one as choosing (`Stats::choosing`,
//! which holds the wave in the planner); `desired.rs` gives each device its class's choice.
//!
//! A variant qualifies on a class when every device of the class that ran it saw it answer its golden vectors
//! (the release's signed tolerances: the accuracy bound). Among those, the class gets the one with the lowest
//! median over devices of each device's median inference time — or, for `Objective::Energy`, of energy per
//! inference, when a sensor measured every qualifying variant (otherwise by time, and the reason says so).
//! Once decided, a choice does not change: devices would otherwise swap variants back and forth on noise.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_protocol::rollout::{ClassChoice, Objective, VariantMeasurement, VariantSummary};
use edgefleet_protocol::{DeviceId, VariantId};

use crate::store::MeasuredRow;

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 })
}

fn summarise(variant: &VariantId, ms: &[&VariantMeasurement]) -> VariantSummary {
    let passed: Vec<&&VariantMeasurement> = ms.iter().filter(|m| m.golden_passed && m.runs > 0).collect();
    VariantSummary {
        variant: variant.clone(),
        devices: ms.len() as u64,
        failed: (ms.len() - passed.len()) as u64,
        median_ms: median(passed.iter().map(|m| m.median_us as f64 / 1000.0).collect()),
        energy_mj: median(passed.iter().filter_map(|m| m.energy_uj).map(|e| e as f64 / 1000.0).collect()),
    }
}

fn numbers(s: &VariantSummary, energy: bool) -> String {
    match (s.failed, energy, s.median_ms, s.energy_mj) {
        (0, true, _, Some(mj)) => format!("{} {mj:.3} mJ", s.variant),
        (0, _, Some(ms), _) => format!("{} {ms:.3} ms", s.variant),
        (f, ..) => format!("{} missed its golden vectors on {f} of {} devices", s.variant, s.devices),
    }
}

/// The choice one class's measurements (`rows`, all of `class`) make, decided once `min_devices` devices of it
/// reported.
pub fn choose(class: &str, objective: Objective, min_devices: u64, rows: &[&MeasuredRow]) -> ClassChoice {
    let devices: BTreeSet<&DeviceId> = rows.iter().map(|r| &r.device).collect();
    let mut by_variant: BTreeMap<&VariantId, Vec<&VariantMeasurement>> = BTreeMap::new();
    for r in rows {
        by_variant.entry(&r.measurement.variant).or_default().push(&r.measurement);
    }
    let measured: Vec<VariantSummary> = by_variant.iter().map(|(v, ms)| summarise(v, ms)).collect();
    let mut choice = ClassChoice {
        class: class.to_owned(),
        variant: None,
        decided: false,
        reason: String::new(),
        devices: devices.len() as u64,
        measured,
    };
    if choice.devices < min_devices {
        choice.reason = format!("measuring: {} of {min_devices} devices of {class} reported", choice.devices);
        return choice;
    }
    choice.decided = true;
    let qualified: Vec<&VariantSummary> =
        choice.measured.iter().filter(|s| s.failed == 0 && s.median_ms.is_some()).collect();
    let by_energy = objective == Objective::Energy && qualified.iter().all(|s| s.energy_mj.is_some());
    let key = |s: &VariantSummary| if by_energy { s.energy_mj } else { s.median_ms }.unwrap_or(f64::INFINITY);
    let Some(best) = qualified.iter().min_by(|a, b| key(a).total_cmp(&key(b))) else {
        choice.reason = format!(
            "no variant answered its golden vectors on every device of {class} that ran it ({}): the class keeps \
             the first variant that fits",
            choice.measured.iter().map(|s| numbers(s, false)).collect::<Vec<_>>().join(", ")
        );
        return choice;
    };
    let others: Vec<String> =
        choice.measured.iter().filter(|s| s.variant != best.variant).map(|s| numbers(s, by_energy)).collect();
    let what = if by_energy {
        "least energy per inference"
    } else if objective == Objective::Energy {
        "fastest (no power sensor measured every variant, so by time)"
    } else {
        "fastest"
    };
    choice.reason = format!(
        "{what} within its golden tolerances on {} device(s) of {class}: {}{}",
        choice.devices,
        numbers(best, by_energy),
        if others.is_empty() { String::new() } else { format!(" (against {})", others.join(", ")) }
    );
    choice.variant = Some(best.variant.clone());
    choice
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        class: &str,
        device: &str,
        variant: &str,
        passed: bool,
        median_us: u64,
        energy_uj: Option<u64>,
    ) -> MeasuredRow {
        MeasuredRow {
            class: class.into(),
            device: device.parse().expect("device"),
            measurement: VariantMeasurement {
                variant: variant.parse().expect("variant"),
                golden_passed: passed,
                runs: 20,
                median_us,
                p95_us: median_us * 2,
                energy_uj,
                detail: String::new(),
            },
        }
    }

    fn choose_of(rows: &[MeasuredRow], objective: Objective, min: u64) -> ClassChoice {
        choose("pi", objective, min, &rows.iter().collect::<Vec<_>>())
    }

    #[test]
    fn the_fastest_variant_within_its_golden_tolerances_wins() {
        let rows = [
            row("pi", "d1", "fp32", true, 900, None),
            row("pi", "d1", "int8", true, 400, None),
            row("pi", "d1", "int4", true, 200, None),
            row("pi", "d2", "fp32", true, 1100, None),
            row("pi", "d2", "int8", true, 500, None),
            // int4 is fastest but missed its golden vectors on one device: it does not qualify.
            row("pi", "d2", "int4", false, 210, None),
        ];
        let c = choose_of(&rows, Objective::Latency, 3);
        assert!(!c.decided && c.variant.is_none(), "2 of 3 devices: still measuring");
        assert!(c.reason.contains("2 of 3"), "{}", c.reason);
        let c = choose_of(&rows, Objective::Latency, 2);
        assert!(c.decided);
        assert_eq!(c.variant.as_ref().map(VariantId::as_str), Some("int8"), "{}", c.reason);
        assert!(c.reason.contains("int8 0.450 ms"), "median over devices: {}", c.reason);
        assert!(c.reason.contains("int4 missed its golden vectors on 1 of 2"), "{}", c.reason);
        let fp32 = c.measured.iter().find(|s| s.variant.as_str() == "fp32").expect("fp32");
        assert_eq!((fp32.devices, fp32.failed, fp32.median_ms), (2, 0, Some(1.0)));
    }

    #[test]
    fn energy_decides_only_where_every_candidate_was_measured() {
        let with = [row("pi", "d1", "fp32", true, 300, Some(9_000)), row("pi", "d1", "int8", true, 500, Some(4_000))];
        let c = choose_of(&with, Objective::Energy, 1);
        assert_eq!(c.variant.as_ref().map(VariantId::as_str), Some("int8"), "{}", c.reason);
        assert!(c.reason.starts_with("least energy"), "{}", c.reason);
        assert_eq!(choose_of(&with, Objective::Latency, 1).variant.as_ref().map(VariantId::as_str), Some("fp32"));
        let without = [row("pi", "d1", "fp32", true, 300, None), row("pi", "d1", "int8", true, 500, Some(4_000))];
        let c = choose_of(&without, Objective::Energy, 1);
        assert_eq!(c.variant.as_ref().map(VariantId::as_str), Some("fp32"), "{}", c.reason);
        assert!(c.reason.contains("no power sensor"), "{}", c.reason);
    }

    #[test]
    fn nothing_qualifies_and_the_class_keeps_the_first_fit() {
        let rows = [row("pi", "d1", "fp32", false, 300, None), row("pi", "d1", "int8", false, 100, None)];
        let c = choose_of(&rows, Objective::Latency, 1);
        assert!(c.decided && c.variant.is_none());
        assert!(c.reason.contains("no variant answered"), "{}", c.reason);
    }
}
