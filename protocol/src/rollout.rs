//! Rollouts on the wire: what an operator asks for (`CreateRollout`), what a rollout is (`Rollout`), where it
//! stands (`State`) and what its gates measured (`GateResult`). The planner that moves a rollout from state to
//! state lives in the control plane; these are only its data, shared with the CLI and the dashboard.

use serde::{Deserialize, Serialize};

use crate::api::Selector;
use crate::ids::{ModelName, ReleaseVersion, VariantId};

/// One wave: the share of the selected devices on the new release once it starts (cumulative, 0–100], an
/// explicit cohort that joins with it (devices whose labels match, such as `canary=true`), and how long it
/// bakes before the next wave may start. Both are cumulative: a later wave keeps every earlier one's devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<Selector>,
    pub bake_secs: u64,
}

/// A gate: the new release against the baseline on the same device class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Gate {
    /// The new release's failed-request ratio may exceed the baseline's by at most this much (0.01 = 1 point).
    ErrorRate { max_increase: f64 },
    /// p95 latency, new ÷ baseline, at most this.
    P95LatencyRatio { max: f64 },
    /// Energy per inference, new ÷ baseline, at most this. Devices without a power sensor give no samples.
    EnergyRatio { max: f64 },
    /// Installs that failed (verification, loading, golden vectors, health watch) ÷ installs tried, at most.
    InstallFailureRatio { max: f64 },
    /// Language models: p95 time to first token, new ÷ baseline, at most this.
    TtftP95Ratio { max: f64 },
    /// Language models: p95 time per output token, new ÷ baseline, at most this (the inverse of tokens/s).
    TpotP95Ratio { max: f64 },
    /// Language models: joules per output token, new ÷ baseline, at most this. No sensor, no samples.
    EnergyPerTokenRatio { max: f64 },
    /// Language models under a routing policy: the share of requests answered in the cloud, new ÷ baseline, at
    /// most this (2 = a release may send at most twice the baseline's share to the cloud). Samples are routed
    /// requests; a new release that sends any where the baseline sent none measures as infinite.
    CloudShareRatio { max: f64 },
}

impl Gate {
    /// Whether the gate judges numbers only language models report.
    pub fn is_llm(&self) -> bool {
        matches!(
            self,
            Gate::TtftP95Ratio { .. }
                | Gate::TpotP95Ratio { .. }
                | Gate::EnergyPerTokenRatio { .. }
                | Gate::CloudShareRatio { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Gate::ErrorRate { .. } => "error-rate increase",
            Gate::P95LatencyRatio { .. } => "p95 latency ratio",
            Gate::EnergyRatio { .. } => "energy-per-inference ratio",
            Gate::InstallFailureRatio { .. } => "install failure ratio",
            Gate::TtftP95Ratio { .. } => "time-to-first-token p95 ratio",
            Gate::TpotP95Ratio { .. } => "time-per-output-token p95 ratio",
            Gate::EnergyPerTokenRatio { .. } => "energy-per-token ratio",
            Gate::CloudShareRatio { .. } => "cloud-share ratio",
        }
    }

    pub fn threshold(&self) -> f64 {
        match *self {
            Gate::ErrorRate { max_increase } => max_increase,
            Gate::P95LatencyRatio { max }
            | Gate::EnergyRatio { max }
            | Gate::InstallFailureRatio { max }
            | Gate::TtftP95Ratio { max }
            | Gate::TpotP95Ratio { max }
            | Gate::EnergyPerTokenRatio { max }
            | Gate::CloudShareRatio { max } => max,
        }
    }
}

/// How a rollout picks the variant of its new release each device gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChooseVariant {
    /// The first variant of the manifest that fits the device's hardware (manifests list variants best first).
    #[default]
    FirstFit,
    /// Devices on the new release whose class has no choice yet run the first fit, and also run every variant
    /// they are eligible for on its golden inputs, off the request path; once `min_devices` devices of a class
    /// reported, the class gets the variant best on `objective` among those that answered their golden vectors
    /// on every device that ran them. The first wave does not end before every class it reached has its choice.
    Measurement {
        #[serde(default)]
        objective: Objective,
        #[serde(default = "one")]
        min_devices: u64,
    },
}

fn one() -> u64 {
    1
}

impl ChooseVariant {
    pub fn is_first_fit(&self) -> bool {
        matches!(self, ChooseVariant::FirstFit)
    }
}

/// What a measured variant choice minimises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Median time of one inference on the golden inputs.
    #[default]
    Latency,
    /// Energy per inference, where the class has a power sensor (without one: latency, and the choice says so).
    Energy,
}

impl Objective {
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Latency => "latency",
            Objective::Energy => "energy",
        }
    }
}

/// The most variants a device is asked to measure of one release (the first that fit, in the manifest's order),
/// and the most measurements one `measured` event may carry.
pub const MAX_MEASURED_VARIANTS: usize = 16;

/// One variant run by one device on its golden inputs (sent in a `measured` device event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VariantMeasurement {
    pub variant: VariantId,
    /// Whether it answered its golden vectors within their signed tolerances.
    pub golden_passed: bool,
    /// Timed inferences (0 when it failed before any), and the median and p95 of one, µs.
    pub runs: u64,
    pub median_us: u64,
    pub p95_us: u64,
    /// Energy per inference, µJ, where a power sensor measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_uj: Option<u64>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What one device class measured of one variant, and the class's choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VariantSummary {
    pub variant: VariantId,
    /// Devices that ran it, and how many of them saw it miss its golden vectors (or fail to load).
    pub devices: u64,
    pub failed: u64,
    /// The median over devices of each device's median inference time, ms; energy per inference, mJ, over
    /// devices with a sensor.
    pub median_ms: Option<f64>,
    pub energy_mj: Option<f64>,
}

/// A device class's variant choice in a rollout that chooses by measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClassChoice {
    pub class: String,
    /// The variant chosen; `None` while the class is still being measured, or when no variant qualified.
    pub variant: Option<VariantId>,
    /// Whether the choice is made (it then no longer changes).
    pub decided: bool,
    /// Why, in words with the numbers.
    pub reason: String,
    /// Devices of the class that reported measurements.
    pub devices: u64,
    pub measured: Vec<VariantSummary>,
}

/// What a failed gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    Pause,
    RollBack,
}

/// A rollout: one model, for the devices a selector matches, from a baseline release to a new one, in waves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rollout {
    pub id: String,
    pub model: ModelName,
    pub selector: Selector,
    pub baseline: ReleaseVersion,
    pub release: ReleaseVersion,
    pub waves: Vec<Wave>,
    pub gates: Vec<Gate>,
    /// Samples each gate needs on each side (requests, inferences with energy, or installs) before it judges.
    pub min_samples: u64,
    pub on_failure: OnFailure,
    #[serde(default, skip_serializing_if = "ChooseVariant::is_first_fit")]
    pub choose_variant: ChooseVariant,
}

/// Where a rollout stands. `since` is when the current wave started (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Running { wave: usize, since: i64 },
    Paused { wave: usize, reason: String },
    RolledBack { reason: String },
    Aborted { reason: String },
    Done,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Running { .. } => "running",
            State::Paused { .. } => "paused",
            State::RolledBack { .. } => "rolled_back",
            State::Aborted { .. } => "aborted",
            State::Done => "done",
        }
    }

    /// Still moving devices (running or paused), as opposed to finished one way or another.
    pub fn is_active(&self) -> bool {
        matches!(self, State::Running { .. } | State::Paused { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Fewer samples than `min_samples` on a side: not judged yet.
    TooFewSamples,
    /// The class has no such measurement at all (no power sensor): never judged, never made up.
    Unavailable,
    /// No device of the class has reported the new release yet (the waves so far hold none of them): not
    /// judged, and it does not hold the wave — the wave that reaches the class will.
    NotReached,
}

/// One gate's judgement on one device class, with the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GateResult {
    pub gate: Gate,
    pub class: String,
    /// The measured value (a difference or ratio), when both sides had data.
    pub value: Option<f64>,
    pub threshold: f64,
    pub samples_new: u64,
    pub samples_baseline: u64,
    pub verdict: Verdict,
}

/// An operator's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Abort,
    /// Skip the remaining waves: everyone selected gets the new release.
    Promote,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Promote => "promote",
        }
    }
}

/// `POST /api/v1/rollouts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    pub model: ModelName,
    pub release: ReleaseVersion,
    /// The release the other devices keep, and the one a rollback returns to. Default: the release the model's
    /// newest assignment names.
    #[serde(default)]
    pub baseline: Option<ReleaseVersion>,
    #[serde(default)]
    pub selector: Selector,
    pub waves: Vec<Wave>,
    #[serde(default)]
    pub gates: Vec<Gate>,
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    #[serde(default = "default_on_failure")]
    pub on_failure: OnFailure,
    #[serde(default)]
    pub choose_variant: ChooseVariant,
}

fn default_min_samples() -> u64 {
    100
}

fn default_on_failure() -> OnFailure {
    OnFailure::Pause
}

impl CreateRollout {
    /// Structural checks: waves strictly rising within (0, 100], thresholds finite and not negative.
    pub fn validate(&self) -> Result<(), String> {
        if self.waves.is_empty() || self.waves.len() > 20 {
            return Err("a rollout has 1 to 20 waves".into());
        }
        let mut last = 0.0;
        for w in &self.waves {
            if w.cohort.as_ref().is_some_and(|c| c.0.is_empty()) {
                return Err("a cohort is a non-empty label selector (canary=true)".into());
            }
            let rises = w.percent > last || (w.percent == last && w.cohort.is_some());
            if !(rises && w.percent <= 100.0) {
                return Err(format!(
                    "each wave must add devices: a higher percentage within (0, 100] or a cohort; {} after {last}",
                    w.percent
                ));
            }
            last = w.percent;
        }
        if self.gates.len() > 16 {
            return Err("at most 16 gates".into());
        }
        for g in &self.gates {
            let t = g.threshold();
            if !t.is_finite() || t < 0.0 {
                return Err(format!("{} threshold must be a finite number ≥ 0, not {t}", g.name()));
            }
        }
        if self.min_samples == 0 {
            return Err("min_samples must be at least 1".into());
        }
        if let ChooseVariant::Measurement { min_devices, .. } = self.choose_variant
            && !(1..=1000).contains(&min_devices)
        {
            return Err(format!("min_devices is 1 to 1000, not {min_devices}"));
        }
        if self.baseline == Some(self.release) {
            return Err("the baseline and the new release are the same".into());
        }
        Ok(())
    }
}

/// A rollout as the API shows it: what it is, where it stands, and what its gates measured last.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutView {
    #[serde(flatten)]
    pub rollout: Rollout,
    pub state: State,
    /// The share of selected devices meant to run the new release now (0–100).
    pub share_percent: f64,
    /// Every gate on every device class at the last evaluation: value, threshold, samples, verdict.
    pub gate_results: Vec<GateResult>,
    /// With variant choice by measurement: each device class's measurements and choice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variant_choices: Vec<ClassChoice>,
    /// When the gates were last evaluated (RFC 3339), if ever.
    pub evaluated_at: Option<String>,
    pub created_at: String,
    pub created_by: String,
    pub updated_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(waves: &[f64]) -> CreateRollout {
        CreateRollout {
            model: "magika".parse().expect("name"),
            release: ReleaseVersion::new(2).expect("v"),
            baseline: Some(ReleaseVersion::new(1).expect("v")),
            selector: Selector::default(),
            waves: waves.iter().map(|&percent| Wave { percent, cohort: None, bake_secs: 60 }).collect(),
            gates: vec![Gate::P95LatencyRatio { max: 1.2 }],
            min_samples: 10,
            on_failure: OnFailure::RollBack,
            choose_variant: ChooseVariant::FirstFit,
        }
    }

    #[test]
    fn waves_and_gates_are_checked() {
        assert!(create(&[1.0, 10.0, 100.0]).validate().is_ok());
        assert!(create(&[]).validate().is_err());
        assert!(create(&[10.0, 10.0]).validate().is_err());
        assert!(create(&[0.0, 100.0]).validate().is_err());
        assert!(create(&[50.0, 101.0]).validate().is_err());
        assert!(create(&[f64::NAN]).validate().is_err());
        let mut bad = create(&[100.0]);
        bad.gates = vec![Gate::ErrorRate { max_increase: -0.1 }];
        assert!(bad.validate().is_err());
        bad.gates = vec![Gate::EnergyRatio { max: f64::INFINITY }];
        assert!(bad.validate().is_err());
        let mut cohort = create(&[0.0, 10.0]);
        cohort.waves[0].cohort = Some("canary=true".parse().expect("selector"));
        assert!(cohort.validate().is_ok(), "a cohort alone adds devices");
        cohort.waves[0].cohort = Some(Selector::default());
        assert!(cohort.validate().is_err(), "an empty cohort would be everyone");
        let mut same = create(&[100.0]);
        same.baseline = Some(same.release);
        assert!(same.validate().is_err());
    }

    #[test]
    fn wire_shapes() {
        let g: Gate = serde_json::from_str(r#"{"kind":"p95_latency_ratio","max":1.5}"#).expect("gate");
        assert_eq!(g, Gate::P95LatencyRatio { max: 1.5 });
        let s = serde_json::to_value(State::Running { wave: 1, since: 5 }).expect("json");
        assert_eq!(s, serde_json::json!({"state": "running", "wave": 1, "since": 5}));
        assert!(serde_json::from_str::<Gate>(r#"{"kind":"p95_latency_ratio","max":1.5,"x":1}"#).is_err());
        let c: ChooseVariant = serde_json::from_str(r#"{"by":"measurement"}"#).expect("choice");
        assert_eq!(c, ChooseVariant::Measurement { objective: Objective::Latency, min_devices: 1 });
        let c: ChooseVariant =
            serde_json::from_str(r#"{"by":"measurement","objective":"energy","min_devices":3}"#).expect("choice");
        assert_eq!(c, ChooseVariant::Measurement { objective: Objective::Energy, min_devices: 3 });
        assert!(serde_json::from_str::<ChooseVariant>(r#"{"by":"measurement","objective":"speed"}"#).is_err());
        let mut none = create(&[100.0]);
        none.choose_variant = ChooseVariant::Measurement { objective: Objective::Latency, min_devices: 0 };
        assert!(none.validate().is_err());
    }
}
