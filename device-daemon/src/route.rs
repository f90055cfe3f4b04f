//! Where one request to a language model is answered, as pure functions of the signed routing policy and the
//! signals read for the request: [`before`] decides before generation, [`confident`] judges the local draft's
//! first tokens (the cascade). No I/O and no clock: the OpenAI API reads the signals and performs the choice.
//!
//! Privacy is decided first and by the policy alone: a `private` or `local_only` model answers locally
//! whatever a request asks and whatever the device is configured with.

use model_registry::routing::{Confidence, ConfidenceStat, RouteMode, RoutingPolicy};

/// Who answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Local,
    Cloud,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Cloud => "cloud",
        }
    }
}

/// Why, as `x-edgefleet-route-reason` and the telemetry's `reason` say it. In the order of
/// [`edgefleet_protocol::telemetry::ROUTE_REASONS`], which names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The policy is `local_only` (or names no policy).
    LocalOnly,
    /// The model is private.
    Private,
    /// The policy is `cloud_only`.
    CloudOnly,
    /// The request asked for this tier (`x-edgefleet-route`), and the policy allows it.
    Requested,
    PromptTokens,
    TtftSlo,
    Battery,
    /// Nothing serves the model on the device (installing, rolled back, failed its golden check).
    LocalNotReady,
    Queue,
    /// The local draft's first tokens were below the confidence threshold.
    LowConfidence,
    /// No rule fired (and the draft was confident, when the policy has a cascade).
    Rules,
    /// The policy wanted the cloud, but the device has none of the policy's tiers configured.
    NoTier,
    /// The cloud tier failed (down, slow past its timeout, an error, an answer that is not one): local answers.
    CloudFailed,
}

impl Reason {
    /// Its name, from the telemetry contract's list (the variants are in that list's order).
    pub fn as_str(self) -> &'static str {
        edgefleet_protocol::telemetry::ROUTE_REASONS[self as usize]
    }
}

/// What is known about one request and the device before generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// The prompt's length in tokens (`None` when the local model is not there to count them).
    pub prompt_tokens: Option<u32>,
    /// This device's measured prompt-reading rate for the model, tokens per second (`None` before any).
    pub prefill_tokens_per_sec: Option<f64>,
    /// A tighter time-to-first-token SLO the request asked for, milliseconds.
    pub request_ttft_slo_ms: Option<u32>,
    /// Battery charge, percent (`None`: no battery, or none readable).
    pub battery_percent: Option<u8>,
    /// Whether the model serves on the device.
    pub local_ready: bool,
    /// Requests generating or waiting on the local model.
    pub queue_depth: u32,
    /// The tier the request asked for (`x-edgefleet-route`).
    pub requested: Option<Tier>,
    /// Whether the device has one of the policy's tiers configured.
    pub cloud_configured: bool,
}

/// The decision before generation. `Local` with a cascade in the policy means: draft locally, then judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub tier: Tier,
    pub reason: Reason,
}

const fn to(tier: Tier, reason: Reason) -> Decision {
    Decision { tier, reason }
}

/// Pure: where a request goes before generation.
pub fn before(policy: &RoutingPolicy, s: &Signals) -> Decision {
    if policy.private {
        return to(Tier::Local, Reason::Private);
    }
    let cloud = |reason| if s.cloud_configured { to(Tier::Cloud, reason) } else { to(Tier::Local, Reason::NoTier) };
    match policy.mode {
        RouteMode::LocalOnly => return to(Tier::Local, Reason::LocalOnly),
        RouteMode::CloudOnly => return cloud(Reason::CloudOnly),
        RouteMode::Auto => {}
    }
    let r = &policy.rules;
    match s.requested {
        Some(Tier::Local) if r.allow_override && s.local_ready => return to(Tier::Local, Reason::Requested),
        Some(Tier::Cloud) if r.allow_override => return cloud(Reason::Requested),
        _ => {}
    }
    if !s.local_ready {
        return cloud(Reason::LocalNotReady);
    }
    if let (Some(max), Some(n)) = (r.max_prompt_tokens, s.prompt_tokens)
        && n > max
    {
        return cloud(Reason::PromptTokens);
    }
    let slo = match (r.ttft_slo_ms, s.request_ttft_slo_ms) {
        (Some(p), Some(q)) => Some(p.min(q)),
        (p, q) => p.or(q),
    };
    if let (Some(slo), Some(n), Some(rate)) = (slo, s.prompt_tokens, s.prefill_tokens_per_sec)
        && rate > 0.0
        && f64::from(n) / rate * 1000.0 > f64::from(slo)
    {
        return cloud(Reason::TtftSlo);
    }
    if let (Some(min), Some(have)) = (r.min_battery_percent, s.battery_percent)
        && have < min
    {
        return cloud(Reason::Battery);
    }
    if let Some(max) = r.max_queue_depth
        && s.queue_depth > max
    {
        return cloud(Reason::Queue);
    }
    to(Tier::Local, Reason::Rules)
}

/// Pure: the cascade's reading of a draft's token log-probabilities (their mean or minimum); `None` for an
/// empty draft.
pub fn reading(c: &Confidence, logprobs: &[f32]) -> Option<f32> {
    if logprobs.is_empty() {
        return None;
    }
    Some(match c.stat {
        ConfidenceStat::Mean => logprobs.iter().sum::<f32>() / logprobs.len() as f32,
        ConfidenceStat::Min => logprobs.iter().copied().fold(f32::INFINITY, f32::min),
    })
}

/// Pure: whether the local draft's first token log-probabilities meet the cascade's bar. Judged once
/// `c.tokens` have come, or at the end of a shorter answer (`logprobs` then holds them all); an empty answer
/// has nothing to doubt.
pub fn confident(c: &Confidence, logprobs: &[f32]) -> bool {
    reading(c, logprobs).is_none_or(|r| r >= c.min_logprob())
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_registry::routing::RouteRules;

    #[test]
    fn reasons_are_named_as_the_telemetry_contract_lists_them() {
        let named = [
            (Reason::LocalOnly, "local_only"),
            (Reason::Private, "private"),
            (Reason::CloudOnly, "cloud_only"),
            (Reason::Requested, "requested"),
            (Reason::PromptTokens, "prompt_tokens"),
            (Reason::TtftSlo, "ttft_slo"),
            (Reason::Battery, "battery"),
            (Reason::LocalNotReady, "local_not_ready"),
            (Reason::Queue, "queue_depth"),
            (Reason::LowConfidence, "low_confidence"),
            (Reason::Rules, "rules"),
            (Reason::NoTier, "no_cloud_tier"),
            (Reason::CloudFailed, "cloud_failed"),
        ];
        assert_eq!(named.len(), edgefleet_protocol::telemetry::ROUTE_REASONS.len());
        for (r, name) in named {
            assert_eq!(r.as_str(), name);
        }
    }

    fn auto(rules: RouteRules) -> RoutingPolicy {
        RoutingPolicy {
            mode: RouteMode::Auto,
            private: false,
            tiers: vec!["gpu".into()],
            rules,
            cloud_timeout_ms: 1000,
        }
    }

    fn ready() -> Signals {
        Signals {
            prompt_tokens: Some(100),
            prefill_tokens_per_sec: Some(500.0),
            local_ready: true,
            cloud_configured: true,
            ..Signals::default()
        }
    }

    /// One table: the policy, the signals, where the request goes and why.
    #[test]
    fn every_signal_routes() {
        let all = RouteRules {
            max_prompt_tokens: Some(1000),
            ttft_slo_ms: Some(1000),
            min_battery_percent: Some(20),
            max_queue_depth: Some(4),
            confidence: None,
            allow_override: true,
        };
        let private = RoutingPolicy { private: true, mode: RouteMode::LocalOnly, tiers: vec![], ..auto(all.clone()) };
        let local_only = RoutingPolicy { mode: RouteMode::LocalOnly, tiers: vec![], ..auto(RouteRules::default()) };
        let cloud_only = RoutingPolicy { mode: RouteMode::CloudOnly, ..auto(RouteRules::default()) };
        let no_override = auto(RouteRules { allow_override: false, ..all.clone() });
        let p = auto(all);
        let with = |f: &dyn Fn(&mut Signals)| {
            let mut s = ready();
            f(&mut s);
            s
        };
        let cases: Vec<(&RoutingPolicy, Signals, Tier, Reason)> = vec![
            (&p, ready(), Tier::Local, Reason::Rules),
            (&p, with(&|s| s.prompt_tokens = Some(1001)), Tier::Cloud, Reason::PromptTokens),
            // 400 tokens at 200 tokens/s: 2 s to the first token, over the 1 s SLO.
            (
                &p,
                with(&|s| (s.prompt_tokens, s.prefill_tokens_per_sec) = (Some(400), Some(200.0))),
                Tier::Cloud,
                Reason::TtftSlo,
            ),
            // The request's own SLO is tighter: 100 tokens at 500/s is 200 ms, over its 150.
            (&p, with(&|s| s.request_ttft_slo_ms = Some(150)), Tier::Cloud, Reason::TtftSlo),
            // No measured rate yet: the SLO rule cannot judge.
            (
                &p,
                with(&|s| (s.prompt_tokens, s.prefill_tokens_per_sec) = (Some(900), None)),
                Tier::Local,
                Reason::Rules,
            ),
            (&p, with(&|s| s.battery_percent = Some(19)), Tier::Cloud, Reason::Battery),
            (&p, with(&|s| s.battery_percent = Some(20)), Tier::Local, Reason::Rules),
            (&p, with(&|s| s.queue_depth = 5), Tier::Cloud, Reason::Queue),
            (&p, with(&|s| (s.local_ready, s.prompt_tokens) = (false, None)), Tier::Cloud, Reason::LocalNotReady),
            (&p, with(&|s| s.requested = Some(Tier::Cloud)), Tier::Cloud, Reason::Requested),
            (&p, with(&|s| (s.requested, s.queue_depth) = (Some(Tier::Local), 9)), Tier::Local, Reason::Requested),
            (&no_override, with(&|s| s.requested = Some(Tier::Cloud)), Tier::Local, Reason::Rules),
            (&p, with(&|s| (s.queue_depth, s.cloud_configured) = (9, false)), Tier::Local, Reason::NoTier),
            // Private and local-only hold whatever the request or the device says.
            (
                &private,
                with(&|s| (s.requested, s.prompt_tokens) = (Some(Tier::Cloud), Some(5000))),
                Tier::Local,
                Reason::Private,
            ),
            (&private, with(&|s| s.local_ready = false), Tier::Local, Reason::Private),
            (&local_only, with(&|s| s.requested = Some(Tier::Cloud)), Tier::Local, Reason::LocalOnly),
            (&cloud_only, ready(), Tier::Cloud, Reason::CloudOnly),
            (&cloud_only, with(&|s| s.cloud_configured = false), Tier::Local, Reason::NoTier),
        ];
        for (i, (policy, signals, tier, reason)) in cases.into_iter().enumerate() {
            assert_eq!(before(policy, &signals), Decision { tier, reason }, "case {i}: {signals:?}");
        }
    }

    #[test]
    fn the_cascade_judges_the_draft() {
        let mean = Confidence { tokens: 4, stat: ConfidenceStat::Mean, min_logprob_milli: -1000 };
        let min = Confidence { stat: ConfidenceStat::Min, ..mean };
        let draft = [-0.1, -0.2, -2.5, -0.1]; // mean -0.725, min -2.5
        assert!(confident(&mean, &draft));
        assert!(!confident(&min, &draft));
        assert!(!confident(&mean, &[-3.0, -0.5]));
        assert!(confident(&mean, &[]), "an empty answer has nothing to doubt");
    }
}
