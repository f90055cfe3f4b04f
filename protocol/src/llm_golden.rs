//! Golden checks for language models: what a device must reproduce before a GGUF variant may serve.
//!
//! Raw text equality would fail on every backend but the packer's own, so the check is teacher-forced: at pack
//! time the reference variant answers each golden prompt greedily, and the log-probability it gave each token of
//! its answer is stored. A device feeds prompt + reference answer through its own model in one pass and, at
//! every step, compares its most likely next token with the reference's token (top-1 agreement) and its
//! log-probability of the reference token with the stored one (log-probability error). The first few steps of
//! each case must agree exactly (a greedy prefix): a model whose own greedy answer starts differently is not the
//! release's model. The device also tokenizes the prompt text itself and must get the stored tokens: another
//! model's file, with another vocabulary, fails there already.
//!
//! The file is JSON (its digest, not its text, is signed, so floats are fine here).

use serde::{Deserialize, Serialize};

/// How close a device must come.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmTolerance {
    /// Share of steps whose most likely token is the reference's token.
    pub min_top1_agreement: f64,
    /// Mean |Δ log-probability| of the reference token over all steps, in nats.
    pub max_mean_logprob_error: f64,
    /// Steps at the start of every case that must agree exactly.
    pub greedy_prefix: usize,
    /// A step also agrees when the reference token is within this many nats of the device's most likely one: a
    /// near-tie that batched and one-at-a-time decoding can break either way on the same weights.
    #[serde(default = "default_tie_margin")]
    pub tie_margin: f64,
}

fn default_tie_margin() -> f64 {
    0.1
}

impl LlmTolerance {
    /// For the reference variant itself (on another backend or build: numerics differ a little).
    pub const SAME_WEIGHTS: LlmTolerance =
        LlmTolerance { min_top1_agreement: 0.9, max_mean_logprob_error: 0.15, greedy_prefix: 4, tie_margin: 0.1 };
    /// For a variant quantized differently from the reference.
    pub const OTHER_QUANTIZATION: LlmTolerance =
        LlmTolerance { min_top1_agreement: 0.75, max_mean_logprob_error: 0.5, greedy_prefix: 2, tie_margin: 0.1 };
}

/// One golden prompt and the reference's answer to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmCase {
    pub name: String,
    /// The prompt as text, chat template already applied.
    pub text: String,
    /// Its tokens under the reference's tokenizer.
    pub prompt_tokens: Vec<i32>,
    /// The reference's greedy answer.
    pub continuation: Vec<i32>,
    /// The reference's log-probability of each continuation token.
    pub logprobs: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmGolden {
    pub version: u32,
    pub tolerance: LlmTolerance,
    pub cases: Vec<LlmCase>,
}

/// What a device measured at one continuation step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlmStep {
    /// Its most likely next token, and that token's log-probability.
    pub argmax: i32,
    pub top_logprob: f32,
    /// Its log-probability of the reference token.
    pub logprob: f32,
}

/// What a device measured for one case: its own tokens for the prompt text, then every continuation step.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmCaseResult {
    pub prompt_tokens: Vec<i32>,
    pub steps: Vec<LlmStep>,
}

/// The verdict, with the numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmGoldenReport {
    pub steps: usize,
    pub top1_agreement: f64,
    pub mean_logprob_error: f64,
    pub max_logprob_error: f64,
    /// Why it failed, one line each; empty when it passed.
    pub failures: Vec<String>,
}

impl LlmGoldenReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl std::fmt::Display for LlmGoldenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} steps: top-1 agreement {:.1} %, mean |Δ log p| {:.3}, max {:.3}",
            self.steps,
            self.top1_agreement * 100.0,
            self.mean_logprob_error,
            self.max_logprob_error
        )?;
        for why in &self.failures {
            write!(f, "\n  {why}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LlmGoldenError {
    #[error("not an LLM golden file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("LLM golden file version {0} is not 1")]
    Version(u32),
    #[error("LLM golden file has no cases")]
    Empty,
    #[error("case {0}: {1}")]
    Case(String, &'static str),
}

impl LlmGolden {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LlmGoldenError> {
        let g: LlmGolden = serde_json::from_slice(bytes)?;
        if g.version != 1 {
            return Err(LlmGoldenError::Version(g.version));
        }
        if g.cases.is_empty() {
            return Err(LlmGoldenError::Empty);
        }
        for c in &g.cases {
            let bad = |why| Err(LlmGoldenError::Case(c.name.clone(), why));
            if c.prompt_tokens.is_empty() {
                return bad("no prompt tokens");
            }
            if c.continuation.is_empty() {
                return bad("no reference continuation");
            }
            if c.continuation.len() != c.logprobs.len() {
                return bad("one log-probability per continuation token is needed");
            }
        }
        Ok(g)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Judges a device's results, one per case in order.
    pub fn check(&self, results: &[LlmCaseResult]) -> LlmGoldenReport {
        let mut failures = Vec::new();
        let (mut steps, mut agree, mut err_sum, mut err_max) = (0usize, 0usize, 0f64, 0f64);
        if results.len() != self.cases.len() {
            failures.push(format!("{} results for {} cases", results.len(), self.cases.len()));
        }
        for (case, got) in self.cases.iter().zip(results) {
            if got.prompt_tokens != case.prompt_tokens {
                failures.push(format!(
                    "case {}: the prompt tokenizes differently ({} tokens, the reference {}): another vocabulary",
                    case.name,
                    got.prompt_tokens.len(),
                    case.prompt_tokens.len()
                ));
                continue;
            }
            if got.steps.len() != case.continuation.len() {
                failures.push(format!(
                    "case {}: {} steps scored of {}",
                    case.name,
                    got.steps.len(),
                    case.continuation.len()
                ));
                continue;
            }
            for (i, (step, (&want, &ref_lp))) in
                got.steps.iter().zip(case.continuation.iter().zip(&case.logprobs)).enumerate()
            {
                steps += 1;
                let (argmax, logprob) = (step.argmax, step.logprob);
                let err = if logprob.is_finite() { f64::from((logprob - ref_lp).abs()) } else { f64::INFINITY };
                err_sum += err;
                err_max = err_max.max(err);
                let near_tie = f64::from(step.top_logprob - logprob) <= self.tolerance.tie_margin;
                if argmax == want || near_tie {
                    agree += 1;
                } else if i < self.tolerance.greedy_prefix {
                    failures.push(format!(
                        "case {}: step {i} predicts token {argmax}, the reference answered {want} (within the greedy \
                         prefix of {})",
                        case.name, self.tolerance.greedy_prefix
                    ));
                }
            }
        }
        let top1_agreement = if steps == 0 { 0.0 } else { agree as f64 / steps as f64 };
        let mean_logprob_error = if steps == 0 { f64::INFINITY } else { err_sum / steps as f64 };
        if steps > 0 && top1_agreement < self.tolerance.min_top1_agreement {
            failures.push(format!(
                "top-1 agreement {:.1} % is below {:.1} %",
                top1_agreement * 100.0,
                self.tolerance.min_top1_agreement * 100.0
            ));
        }
        let within = mean_logprob_error <= self.tolerance.max_mean_logprob_error; // false for NaN
        if !within {
            failures.push(format!(
                "mean |Δ log p| {mean_logprob_error:.3} is above {:.3}",
                self.tolerance.max_mean_logprob_error
            ));
        }
        LlmGoldenReport { steps, top1_agreement, mean_logprob_error, max_logprob_error: err_max, failures }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> LlmGolden {
        LlmGolden {
            version: 1,
            tolerance: LlmTolerance::SAME_WEIGHTS,
            cases: vec![LlmCase {
                name: "c0".into(),
                text: "hi".into(),
                prompt_tokens: vec![1, 2],
                continuation: (10..30).collect(),
                logprobs: vec![-0.5; 20],
            }],
        }
    }

    /// Steps from (argmax, log p of the reference token); the argmax's own log p is 1 nat above unless it is
    /// the reference token.
    fn result(f: impl Fn(usize) -> (i32, f32)) -> Vec<LlmCaseResult> {
        let step = |i: usize| {
            let (argmax, logprob) = f(i);
            let top_logprob = if argmax == 10 + i as i32 { logprob } else { logprob + 1.0 };
            LlmStep { argmax, top_logprob, logprob }
        };
        vec![LlmCaseResult { prompt_tokens: vec![1, 2], steps: (0..20).map(step).collect() }]
    }

    #[test]
    fn the_reference_itself_passes() {
        let g = golden();
        let r = g.check(&result(|i| (10 + i as i32, -0.5)));
        assert!(r.passed(), "{r}");
        assert_eq!(r.top1_agreement, 1.0);
        assert_eq!(r.steps, 20);
        let back = LlmGolden::from_bytes(&g.to_bytes()).unwrap();
        assert_eq!(back, g);
    }

    #[test]
    fn small_numeric_drift_passes_and_late_disagreement_is_tolerated() {
        let r = golden().check(&result(|i| (if i == 15 { 99 } else { 10 + i as i32 }, -0.55)));
        assert!(r.passed(), "{r}");
        assert_eq!(r.top1_agreement, 0.95);
    }

    #[test]
    fn a_near_tie_broken_the_other_way_agrees() {
        let mut r = result(|i| (10 + i as i32, -0.5));
        r[0].steps[1] = LlmStep { argmax: 99, top_logprob: -0.69, logprob: -0.70 };
        let report = golden().check(&r);
        assert!(report.passed(), "{report}");
        assert_eq!(report.top1_agreement, 1.0);
    }

    #[test]
    fn each_tolerance_fails_on_its_own() {
        let g = golden();
        let early = g.check(&result(|i| (if i == 1 { 99 } else { 10 + i as i32 }, -0.5)));
        assert!(early.failures.iter().any(|f| f.contains("greedy prefix")), "{early}");
        let wrong = g.check(&result(|i| (if i > 5 { 99 } else { 10 + i as i32 }, -0.5)));
        assert!(wrong.failures.iter().any(|f| f.contains("top-1 agreement")), "{wrong}");
        let unsure = g.check(&result(|i| (10 + i as i32, -1.5)));
        assert!(unsure.failures.iter().any(|f| f.contains("log p")), "{unsure}");
        let nan = g.check(&result(|i| (10 + i as i32, f32::NAN)));
        assert!(!nan.passed(), "{nan}");
        let vocab = g.check(&[LlmCaseResult { prompt_tokens: vec![7], steps: vec![] }]);
        assert!(vocab.failures.iter().any(|f| f.contains("another vocabulary")), "{vocab}");
    }

    #[test]
    fn malformed_files_are_refused() {
        assert!(LlmGolden::from_bytes(b"{").is_err());
        let mut g = golden();
        g.cases[0].logprobs.pop();
        assert!(matches!(LlmGolden::from_bytes(&g.to_bytes()), Err(LlmGoldenError::Case(..))));
        g.cases.clear();
        assert!(matches!(LlmGolden::from_bytes(&g.to_bytes()), Err(LlmGoldenError::Empty)));
    }
}
