//! The install of one release, as a pure state machine: [`Install::on`] takes what the last effect did and
//! answers the next effect and what to report. It does no I/O and reads no clock (elapsed time comes in with the
//! health readings), so tests step it through every path without sleeping; the agent performs the effects.
//!
//! Download → Stage → Load (beside the serving release, or after draining it when both do not fit the memory
//! budget) → Golden → Swap → Watch … → Commit; a failure before the swap leaves (or puts back) the previous
//! release serving, a failed health watch rolls back to it.

use std::time::Duration;

use edgefleet_protocol::api::EventKind;

use crate::health::{Bake, Verdict, Window, verdict};

/// Pure: whether a model needing `new` bytes can load beside the release it replaces (`old` bytes), given what
/// every other loaded model takes (`others`) and the budget (`None`: no budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Old and new both fit: load beside, swap, keep the old one for a rollback.
    Beside,
    /// Only one at a time fits: queue the model's requests, unload the old release, load the new one.
    Drain,
    /// The new release does not fit even alone.
    Never,
}

pub fn fit(budget: Option<u64>, others: u64, old: u64, new: u64) -> Fit {
    match budget {
        None => Fit::Beside,
        Some(b) if others.saturating_add(old).saturating_add(new) <= b => Fit::Beside,
        Some(b) if others.saturating_add(new) <= b => Fit::Drain,
        Some(_) => Fit::Never,
    }
}

/// The next thing the agent does for this install.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Fetch the variant's model and golden-vector blobs (resuming partial files), verifying as they stream.
    Download,
    /// Decompress into the inactive slot: temporary file, fsync, rename, fsync the directory.
    Stage,
    /// Load the staged model beside the serving release.
    Load,
    /// Close the model's gate (new requests wait), let in-flight requests finish, unload the serving release,
    /// then load the staged one.
    DrainAndLoad,
    /// Run the golden vectors on the loaded, not yet serving, release.
    Golden,
    /// Make the new release answer new requests.
    Swap,
    /// Read the new release's health after waiting this long.
    Watch(Duration),
    /// Make the previous release serve again (from memory, or reloaded from its slot after a drain), then finish
    /// with the failure.
    RollBack,
    /// Record the release as committed and finish.
    Commit,
    /// Finished: committed, or failed with this event kind and reason.
    Done(Result<(), (EventKind, String)>),
}

/// What the last effect did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It did what it was asked.
    Done,
    /// It failed: the event kind to report and why.
    Failed(EventKind, String),
    /// A health reading: time since the swap, the new release's window since the swap, the previous release's.
    Health { elapsed: Duration, new: Window, baseline: Option<Window> },
}

/// One step's answer: the next effect, and an event to report first, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub effect: Effect,
    pub report: Option<(EventKind, String)>,
}

impl Step {
    fn to(effect: Effect) -> Self {
        Self { effect, report: None }
    }

    fn reporting(effect: Effect, kind: EventKind, detail: impl Into<String>) -> Self {
        Self { effect, report: Some((kind, detail.into())) }
    }
}

/// Where the install stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Downloading,
    Staging,
    Loading,
    Checking,
    Swapping,
    Baking,
    RollingBack,
    Committing,
    Finished,
}

/// One install's state.
#[derive(Debug, Clone)]
pub struct Install {
    phase: Phase,
    bake: Bake,
    fit: Fit,
    /// Whether a previous release serves this model (something to fall back to).
    has_previous: bool,
    slot: &'static str,
    /// Why it is rolling back: reported once the previous release serves again.
    failure: Option<(EventKind, String)>,
}

/// How often the health watch looks, at most.
const POLL: Duration = Duration::from_millis(50);

impl Install {
    /// Starts an install into `slot`; `fit` is the memory budget's answer for this model; `resume_from` is how
    /// much of the compressed model a previous run already downloaded.
    pub fn start(
        bake: Bake,
        fit: Fit,
        has_previous: bool,
        slot: &'static str,
        zstd_bytes: u64,
        resume_from: u64,
    ) -> (Self, Step) {
        let mut me = Self { phase: Phase::Downloading, bake, fit, has_previous, slot, failure: None };
        if fit == Fit::Never {
            let why = "the model does not fit the memory budget even alone".to_owned();
            let step = me.finish(Err((EventKind::LoadFailed, why)));
            return (me, step);
        }
        let resuming = if resume_from > 0 { format!(", resuming from byte {resume_from}") } else { String::new() };
        let step = Step::reporting(
            Effect::Download,
            EventKind::DownloadStarted,
            format!("{zstd_bytes} bytes compressed{resuming}"),
        );
        (me, step)
    }

    fn finish(&mut self, result: Result<(), (EventKind, String)>) -> Step {
        self.phase = Phase::Finished;
        Step::to(Effect::Done(result))
    }

    /// Fails the install. Before the swap the previous release still serves, unless it was drained to make room:
    /// then it is put back first. After the swap, it is always put back.
    fn fail(&mut self, kind: EventKind, reason: String) -> Step {
        let drained = self.fit == Fit::Drain && matches!(self.phase, Phase::Loading | Phase::Checking);
        let swapped = matches!(self.phase, Phase::Swapping | Phase::Baking);
        if self.has_previous && (drained || swapped) {
            self.phase = Phase::RollingBack;
            self.failure = Some((kind, reason));
            return Step::to(Effect::RollBack);
        }
        self.finish(Err((kind, reason)))
    }

    /// The next step, given what the last effect did.
    pub fn on(&mut self, outcome: Outcome) -> Step {
        if let Outcome::Failed(kind, reason) = outcome {
            return match self.phase {
                Phase::RollingBack => {
                    // The previous release could not be put back: say both.
                    let (k, first) = self.failure.take().unwrap_or((kind, String::new()));
                    self.finish(Err((k, format!("{first}; putting the previous release back failed too: {reason}"))))
                }
                Phase::Finished => Step::to(Effect::Done(Err((kind, reason)))),
                _ => self.fail(kind, reason),
            };
        }
        match (self.phase, outcome) {
            (Phase::Downloading, _) => {
                self.phase = Phase::Staging;
                Step::to(Effect::Stage)
            }
            (Phase::Staging, _) => {
                self.phase = Phase::Loading;
                Step::to(if self.fit == Fit::Drain { Effect::DrainAndLoad } else { Effect::Load })
            }
            (Phase::Loading, _) => {
                self.phase = Phase::Checking;
                Step::reporting(
                    Effect::Golden,
                    EventKind::Verified,
                    format!("digests match; staged in slot {}", self.slot),
                )
            }
            (Phase::Checking, _) => {
                self.phase = Phase::Swapping;
                Step::to(Effect::Swap)
            }
            (Phase::Swapping, _) => {
                self.phase = Phase::Baking;
                let how = if self.fit == Fit::Drain {
                    " (drained: old and new do not both fit the memory budget)"
                } else {
                    ""
                };
                Step::reporting(
                    Effect::Watch(POLL),
                    EventKind::Swapped,
                    format!("serving from slot {}{how}", self.slot),
                )
            }
            (Phase::Baking, Outcome::Health { elapsed, new, baseline }) => {
                match verdict(&self.bake, elapsed, &new, baseline.as_ref()) {
                    Verdict::Watching => Step::to(Effect::Watch(POLL.min(self.bake.window.saturating_sub(elapsed)))),
                    Verdict::Healthy { note } => {
                        self.phase = Phase::Committing;
                        let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
                        Step::reporting(
                            Effect::Commit,
                            EventKind::Committed,
                            format!("healthy through a bake window of {:?}{note}", self.bake.window),
                        )
                    }
                    Verdict::Unhealthy(why) if self.has_previous => {
                        self.fail(EventKind::RolledBack, format!("rolled back: {why}"))
                    }
                    Verdict::Unhealthy(why) => {
                        // Nothing to go back to: the new release stays, and the report says it is unhealthy.
                        self.phase = Phase::Committing;
                        Step::reporting(
                            Effect::Commit,
                            EventKind::Committed,
                            format!("unhealthy ({why}), but there is no previous release to roll back to"),
                        )
                    }
                }
            }
            (Phase::Baking, Outcome::Done) => Step::to(Effect::Watch(POLL)),
            (Phase::RollingBack, _) => {
                let failure = self.failure.take().unwrap_or((EventKind::RolledBack, "rolled back".into()));
                self.finish(Err(failure))
            }
            (Phase::Committing, _) => self.finish(Ok(())),
            (Phase::Finished, _) => Step::to(Effect::Done(Ok(()))),
            (Phase::Baking, Outcome::Failed(..)) => unreachable!("failures are handled above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bake() -> Bake {
        Bake { window: Duration::from_secs(1), max_error_rate: 0.1, max_latency_ratio: 1.5, min_requests: 10 }
    }

    fn healthy(elapsed_ms: u64) -> Outcome {
        let w = Window { ok: 100, errors: 0, latency: vec![0, 100] };
        Outcome::Health { elapsed: Duration::from_millis(elapsed_ms), new: w.clone(), baseline: Some(w) }
    }

    fn failing() -> Outcome {
        Outcome::Health {
            elapsed: Duration::from_millis(100),
            new: Window { ok: 5, errors: 20, latency: vec![5] },
            baseline: None,
        }
    }

    /// Drives an install with the given outcomes (`Done` where `None`), answering the effects seen in order.
    fn check(fit: Fit, has_previous: bool, outcomes: Vec<Outcome>, effects: &[&str], ends: Result<(), EventKind>) {
        let (mut m, mut step) = Install::start(bake(), fit, has_previous, "b", 100, 0);
        let mut seen = Vec::new();
        let mut outcomes = outcomes.into_iter();
        let result = loop {
            let name = match &step.effect {
                Effect::Done(r) => break r.clone(),
                Effect::Download => "download",
                Effect::Stage => "stage",
                Effect::Load => "load",
                Effect::DrainAndLoad => "drain",
                Effect::Golden => "golden",
                Effect::Swap => "swap",
                Effect::Watch(_) => "watch",
                Effect::RollBack => "rollback",
                Effect::Commit => "commit",
            };
            seen.push(name);
            assert!(seen.len() < 50, "no end: {seen:?}");
            step = m.on(outcomes.next().unwrap_or(Outcome::Done));
        };
        assert_eq!(seen, effects);
        assert_eq!(result.map_err(|(k, _)| k), ends);
    }

    fn failed(kind: EventKind) -> Outcome {
        Outcome::Failed(kind, "because".into())
    }

    #[test]
    fn installs_step_by_step() {
        use EventKind::*;
        let d = || Outcome::Done;
        let ok = ["download", "stage", "load", "golden", "swap", "watch", "commit"];
        check(Fit::Beside, true, vec![d(), d(), d(), d(), d(), healthy(1000)], &ok, Ok(()));
        // The watch looks again until the window is over.
        check(
            Fit::Beside,
            true,
            vec![d(), d(), d(), d(), d(), healthy(10), healthy(500), healthy(1000)],
            &["download", "stage", "load", "golden", "swap", "watch", "watch", "watch", "commit"],
            Ok(()),
        );
        // Failures before the swap: the previous release never stopped serving; nothing to undo.
        check(Fit::Beside, true, vec![failed(VerificationFailed)], &["download"], Err(VerificationFailed));
        check(
            Fit::Beside,
            true,
            vec![d(), failed(VerificationFailed)],
            &["download", "stage"],
            Err(VerificationFailed),
        );
        check(Fit::Beside, true, vec![d(), d(), failed(LoadFailed)], &["download", "stage", "load"], Err(LoadFailed));
        check(
            Fit::Beside,
            true,
            vec![d(), d(), d(), failed(GoldenFailed)],
            &["download", "stage", "load", "golden"],
            Err(GoldenFailed),
        );
        // The health watch fails: roll back, report why.
        check(
            Fit::Beside,
            true,
            vec![d(), d(), d(), d(), d(), failing()],
            &["download", "stage", "load", "golden", "swap", "watch", "rollback"],
            Err(RolledBack),
        );
        // ... with nothing to roll back to: it stays, committed, and the report says it is unhealthy.
        check(Fit::Beside, false, vec![d(), d(), d(), d(), d(), failing()], &ok, Ok(()));
    }

    #[test]
    fn memory_budget_paths() {
        use EventKind::*;
        let d = || Outcome::Done;
        check(
            Fit::Drain,
            true,
            vec![d(), d(), d(), d(), d(), healthy(1000)],
            &["download", "stage", "drain", "golden", "swap", "watch", "commit"],
            Ok(()),
        );
        // Drained, and then the new release fails: the previous one is loaded back before the failure is final.
        check(
            Fit::Drain,
            true,
            vec![d(), d(), d(), failed(GoldenFailed)],
            &["download", "stage", "drain", "golden", "rollback"],
            Err(GoldenFailed),
        );
        check(
            Fit::Drain,
            true,
            vec![d(), d(), failed(LoadFailed)],
            &["download", "stage", "drain", "rollback"],
            Err(LoadFailed),
        );
        // Putting it back fails too: still an end, with the first failure's kind.
        check(
            Fit::Drain,
            true,
            vec![d(), d(), failed(LoadFailed), failed(LoadFailed)],
            &["download", "stage", "drain", "rollback"],
            Err(LoadFailed),
        );
        // Too big even alone: refused before anything is unloaded.
        check(Fit::Never, true, vec![], &[], Err(LoadFailed));
    }

    #[test]
    fn fits() {
        let mib = |n: u64| n << 20;
        for (budget, others, old, new, expected) in [
            (None, mib(900), mib(900), mib(900), Fit::Beside),
            (Some(mib(100)), mib(10), mib(40), mib(40), Fit::Beside),
            (Some(mib(100)), mib(10), mib(50), mib(40), Fit::Beside),
            (Some(mib(100)), mib(10), mib(50), mib(41), Fit::Drain),
            (Some(mib(100)), mib(10), mib(0), mib(90), Fit::Beside),
            (Some(mib(100)), mib(10), mib(10), mib(91), Fit::Never),
            (Some(0), 0, 0, 1, Fit::Never),
        ] {
            assert_eq!(fit(budget, others, old, new), expected, "{budget:?} {others} {old} {new}");
        }
    }
}
