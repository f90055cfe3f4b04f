//! A language model's routing policy: whether each request is answered on the device or by a cloud tier, and
//! by which rules. It is part of the signed release manifest, so the release keys decide it: a control plane
//! holding only the fleet key cannot change it, and a device never sends a `private` model's prompt anywhere.

use serde::{Deserialize, Serialize};

/// Where a model's requests may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteMode {
    /// Always on the device.
    LocalOnly,
    /// Always by a cloud tier; an error when none answers.
    CloudOnly,
    /// Per request, by the rules.
    Auto,
}

/// How the local model's confidence over its first tokens is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceStat {
    /// The mean token log-probability.
    Mean,
    /// The lowest token log-probability.
    Min,
}

/// The cascade: the local model drafts its first `tokens`; when their log-probabilities (read by `stat`) fall
/// below `min_logprob_milli` (thousandths of a nat: signed documents are canonical JSON, which has integers
/// only), the draft is dropped and a cloud tier answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confidence {
    pub tokens: u32,
    pub stat: ConfidenceStat,
    pub min_logprob_milli: i32,
}

impl Confidence {
    /// The bar, in nats.
    pub fn min_logprob(&self) -> f32 {
        self.min_logprob_milli as f32 / 1000.0
    }
}

/// The rules of `auto`: each one that fires sends the request to the cloud. Absent rules never fire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRules {
    /// Prompts longer than this many tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<u32>,
    /// A predicted time to first token (prompt tokens ÷ the device's measured prefill rate) above this SLO,
    /// in milliseconds; a request may ask for a tighter one (`x-edgefleet-ttft-slo-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_slo_ms: Option<u32>,
    /// Battery charge below this percentage (devices with a battery only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_battery_percent: Option<u8>,
    /// More than this many requests already generating or waiting on the local model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_depth: Option<u32>,
    /// The cascade on the local model's confidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<Confidence>,
    /// Whether a request may force a tier with `x-edgefleet-route: local|cloud`.
    #[serde(default)]
    pub allow_override: bool,
}

/// A model's routing policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingPolicy {
    pub mode: RouteMode,
    /// No byte of a request ever leaves the device (only `local_only` may be private).
    #[serde(default)]
    pub private: bool,
    /// The cloud tiers, by name, that devices may send requests to, first preferred; a device knows each by
    /// its own configuration (endpoint and credential).
    #[serde(default)]
    pub tiers: Vec<String>,
    #[serde(default)]
    pub rules: RouteRules,
    /// How long a cloud tier may take to answer whole before the local model answers instead, milliseconds.
    #[serde(default = "default_cloud_timeout_ms")]
    pub cloud_timeout_ms: u32,
}

fn default_cloud_timeout_ms() -> u32 {
    30_000
}

impl RoutingPolicy {
    /// The policy of a release that names none: every request on the device.
    pub fn local() -> Self {
        Self {
            mode: RouteMode::LocalOnly,
            private: false,
            tiers: Vec::new(),
            rules: RouteRules::default(),
            cloud_timeout_ms: default_cloud_timeout_ms(),
        }
    }

    /// Whether the policy is one a device can follow; `Err` says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let tier_ok = |t: &String| {
            !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if let Some(t) = self.tiers.iter().find(|t| !tier_ok(t)) {
            return Err(format!("tier name {t:?}: 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        match self.mode {
            RouteMode::LocalOnly if !self.tiers.is_empty() => {
                return Err("a local_only policy names no cloud tiers".into());
            }
            RouteMode::CloudOnly | RouteMode::Auto if self.tiers.is_empty() => {
                return Err("a policy that may use the cloud names at least one tier".into());
            }
            RouteMode::CloudOnly | RouteMode::Auto if self.private => {
                return Err("a private model is local_only: none of its requests may leave the device".into());
            }
            _ => {}
        }
        if self.mode != RouteMode::Auto && self.rules != RouteRules::default() {
            return Err("rules apply to an auto policy only".into());
        }
        if !(100..=600_000).contains(&self.cloud_timeout_ms) {
            return Err(format!("cloud_timeout_ms {} is not within 100 to 600000", self.cloud_timeout_ms));
        }
        let r = &self.rules;
        if r.max_prompt_tokens == Some(0) {
            return Err("max_prompt_tokens 0 would send every request to the cloud: use cloud_only".into());
        }
        if r.ttft_slo_ms.is_some_and(|s| s == 0 || s > 600_000) {
            return Err("ttft_slo_ms is not within 1 to 600000".into());
        }
        if r.min_battery_percent.is_some_and(|p| p > 100) {
            return Err("min_battery_percent is above 100".into());
        }
        if let Some(c) = &r.confidence {
            if !(1..=64).contains(&c.tokens) {
                return Err(format!("confidence.tokens {} is not within 1 to 64", c.tokens));
            }
            if !(-100_000..0).contains(&c.min_logprob_milli) {
                let m = c.min_logprob_milli;
                return Err(format!(
                    "confidence.min_logprob_milli {m} is not within -100000 to -1 (thousandths of a nat)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<RoutingPolicy, String> {
        let p: RoutingPolicy = serde_json::from_str(json).map_err(|e| e.to_string())?;
        p.validate().map(|()| p)
    }

    #[test]
    fn policies_parse_and_are_checked() {
        let auto = parse(
            r#"{"mode": "auto", "tiers": ["gpu"], "rules": {"max_prompt_tokens": 512,
                "confidence": {"tokens": 8, "stat": "mean", "min_logprob_milli": -1500}, "allow_override": true}}"#,
        )
        .expect("a good policy");
        assert_eq!(auto.cloud_timeout_ms, 30_000);
        assert_eq!(auto.rules.confidence.map(|c| c.stat), Some(ConfidenceStat::Mean));
        assert!(parse(r#"{"mode": "local_only", "private": true}"#).is_ok());
        for (bad, why) in [
            (r#"{"mode": "auto", "tiers": ["gpu"], "extra": 1}"#, "unknown field"),
            (r#"{"mode": "auto", "tiers": ["gpu"], "rules": {"max_prompt": 5}}"#, "unknown field"),
            (r#"{"mode": "sometimes"}"#, "unknown variant"),
            (r#"{"mode": "auto", "tiers": []}"#, "at least one tier"),
            (r#"{"mode": "auto", "tiers": ["gpu"], "private": true}"#, "private"),
            (r#"{"mode": "cloud_only", "tiers": ["a b"]}"#, "tier name"),
            (r#"{"mode": "local_only", "tiers": ["gpu"]}"#, "names no cloud tiers"),
            (r#"{"mode": "local_only", "rules": {"max_queue_depth": 3}}"#, "auto policy only"),
            (r#"{"mode": "auto", "tiers": ["gpu"], "cloud_timeout_ms": 5}"#, "cloud_timeout_ms"),
            (r#"{"mode": "auto", "tiers": ["gpu"], "rules": {"max_prompt_tokens": 0}}"#, "max_prompt_tokens"),
            (r#"{"mode": "auto", "tiers": ["gpu"], "rules": {"min_battery_percent": 101}}"#, "above 100"),
            (
                r#"{"mode": "auto", "tiers": ["gpu"], "rules": {"confidence": {"tokens": 0, "stat": "min", "min_logprob_milli": -1000}}}"#,
                "confidence.tokens",
            ),
            (
                r#"{"mode": "auto", "tiers": ["gpu"], "rules": {"confidence": {"tokens": 4, "stat": "min", "min_logprob_milli": 500}}}"#,
                "min_logprob_milli",
            ),
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
