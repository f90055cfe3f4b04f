//! One reconcile pass over a verified desired state, as a pure machine: [`Pass::on`] takes what the last effect
//! did and answers the effects to perform next, changing the device's state as it decides. It does no I/O and
//! reads no clock; the agent performs the effects (`agent.rs`), each install through its own machine
//! (`machine.rs`). Every defence that is a decision about the pass lives here:
//!
//! - the floors of every release the document carries count at once, whatever happens to the installs (floors
//!   only rise);
//! - the sequence and ETag are recorded only once every install the document asks for has ended, so after an
//!   interrupted download or a crash the same document is taken again;
//! - a release refused before its install (its variant does not fit this device, the disk budget, loads the
//!   daemon died in) or failed for a reason a retry cannot fix is remembered in [`DeviceState::failed`] and not
//!   tried again while the document names it;
//! - once the document is wholly applied, models it no longer names are removed, and partial downloads it does
//!   not want are deleted.

use std::collections::{BTreeSet, VecDeque};

use edgefleet_protocol::api::EventKind;
use edgefleet_protocol::{ModelName, ReleaseVersion, VariantId};
use model_registry::VerifiedDesiredState;
use model_registry::routing::RoutingPolicy;

use crate::layout::{BAD_DOWNLOAD_PATIENCE_SECS, DeviceState, Installed, MAX_BAD_DOWNLOADS, Slot, partial_name};

/// What a pass needs of one model the verified document names.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub model: ModelName,
    pub release: ReleaseVersion,
    pub variant: VariantId,
    /// The security floor its signed release carries.
    pub floor: ReleaseVersion,
    /// The file names its downloads take while they arrive (`<sha256>.partial`).
    pub partials: Vec<String>,
    /// Its release's routing policy, if it names one.
    pub routing: Option<RoutingPolicy>,
}

/// What a pass needs of a verified desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub sequence: u64,
    pub etag: Option<String>,
    pub models: Vec<Wanted>,
}

impl Document {
    pub fn of(verified: &VerifiedDesiredState, etag: Option<String>) -> Self {
        let models = verified
            .state
            .models
            .iter()
            .zip(&verified.releases)
            .map(|(a, r)| Wanted {
                model: a.model.clone(),
                release: r.manifest.version,
                variant: a.variant.clone(),
                floor: r.manifest.security_floor,
                // The verifier checked that every assigned variant is in its release.
                partials: r
                    .manifest
                    .variant(&a.variant)
                    .map(|v| vec![partial_name(&v.zstd), partial_name(&v.golden)])
                    .unwrap_or_default(),
                routing: r.manifest.routing.clone(),
            })
            .collect();
        Self { sequence: verified.state.sequence, etag, models }
    }
}

/// An install the document asks for: this release and variant of this model, into the slot not in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub model: ModelName,
    pub release: ReleaseVersion,
    pub variant: VariantId,
    pub slot: Slot,
}

/// Pure: the installs a document asks for: every model whose committed release or variant is not the wanted
/// one, except a release that already failed for good on this device (see [`DeviceState::failed`]).
pub fn plan(state: &DeviceState, doc: &Document) -> Vec<Job> {
    doc.models
        .iter()
        .filter_map(|w| match state.committed.get(&w.model) {
            Some(i) if i.release == w.release && i.variant == w.variant => None,
            _ if state.failed.get(&w.model) == Some(&(w.release, w.variant.clone())) => None,
            current => Some(Job {
                model: w.model.clone(),
                release: w.release,
                variant: w.variant.clone(),
                slot: current.map_or(Slot::A, |i| !i.slot),
            }),
        })
        .collect()
}

/// Something for the agent to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Judge whether the job may begin on this device: its variant against the device's own hardware, the disk
    /// budget, loads the daemon died in. Answered by [`Event::Judged`].
    Judge(Job),
    /// Drive the job's install machine to its end. Answered by [`Event::Installed`].
    Install(Job),
    /// Forget the loads begun for this model (its install ended, or was refused for them).
    EndLoad(ModelName),
    /// Queue an event for the control plane.
    Report { kind: EventKind, model: ModelName, release: ReleaseVersion, variant: VariantId, detail: String },
    /// Write the state to disk (what happened is on disk before it is reported).
    Save,
    /// Drain, unload and delete these models and their files; delete every partial download not in `keep`.
    /// Answered by [`Event::Removed`].
    Remove { models: Vec<ModelName>, keep: BTreeSet<String> },
    /// The pass ended. `Err`: a download was interrupted; the document is taken again at the next check-in.
    Done(Result<(), String>),
}

/// What an effect did.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The verdict on the job under way: `None`, it may begin; else the event kind to report and why not.
    Judged(Option<(EventKind, String)>),
    /// The job under way ended: committed, or failed with this event kind and reason.
    Installed(Result<Installed, (EventKind, String)>),
    /// The models asked for are removed.
    Removed,
}

/// One pass's state.
#[derive(Debug, Clone)]
pub struct Pass {
    jobs: VecDeque<Job>,
    sequence: u64,
    etag: Option<String>,
    named: BTreeSet<ModelName>,
    keep: BTreeSet<String>,
    /// Models asked to be removed, forgotten once they are.
    removing: Vec<ModelName>,
    /// Why a download stopped, if one did.
    interrupted: Option<String>,
}

impl Pass {
    /// Starts a pass over an accepted document: its floors count from now on.
    pub fn start(state: &mut DeviceState, doc: &Document) -> (Self, Vec<Effect>) {
        for w in &doc.models {
            state.last_seen.record_floor(&w.model, w.floor);
        }
        // The routing policies of the releases it names are in force at once (signed by the release keys).
        state.routing = doc.models.iter().filter_map(|w| Some((w.model.clone(), w.routing.clone()?))).collect();
        let mut pass = Self {
            jobs: plan(state, doc).into(),
            sequence: doc.sequence,
            etag: doc.etag.clone(),
            named: doc.models.iter().map(|w| w.model.clone()).collect(),
            keep: doc.models.iter().flat_map(|w| w.partials.iter().cloned()).collect(),
            removing: Vec::new(),
            interrupted: None,
        };
        let effects = pass.next(state, Vec::new());
        (pass, effects)
    }

    /// What to do after `event`.
    pub fn on(&mut self, state: &mut DeviceState, event: Event) -> Vec<Effect> {
        match event {
            Event::Judged(None) => match self.jobs.front() {
                Some(job) => vec![Effect::Install(job.clone())],
                None => vec![Effect::Done(Ok(()))],
            },
            Event::Judged(Some((kind, why))) => {
                let Some(job) = self.jobs.pop_front() else { return vec![Effect::Done(Ok(()))] };
                // Refused for the loads it crashed in: their count has done its work.
                let mut effects =
                    if kind == EventKind::Refused { vec![Effect::EndLoad(job.model.clone())] } else { vec![] };
                state.failed.insert(job.model.clone(), (job.release, job.variant.clone()));
                effects.extend(self.ended(state, &job, kind, why));
                self.next(state, effects)
            }
            Event::Installed(result) => {
                let Some(job) = self.jobs.pop_front() else { return vec![Effect::Done(Ok(()))] };
                let mut effects = vec![Effect::EndLoad(job.model.clone())];
                match result {
                    Ok(installed) => {
                        let detail = format!("slot {}", job.slot.as_str());
                        effects.push(report(EventKind::Installed, &job, detail));
                        effects.push(Effect::Save);
                        state.committed.insert(job.model.clone(), installed);
                        state.bad_downloads.remove(&job.model);
                        state.last_error = None;
                    }
                    // The network, not the bytes: tried again from where it stopped, at the next check-in.
                    Err((EventKind::DownloadFailed, why)) => {
                        self.interrupted = Some(why.clone());
                        effects.extend(self.ended(state, &job, EventKind::DownloadFailed, why));
                    }
                    // Bytes that missed the signed digest on the way (never used): fetched again from scratch at
                    // the next check-in, for a while, before the release is given up.
                    Err((EventKind::VerificationFailed, why))
                        if why.starts_with(crate::download::BAD_DOWNLOAD) && !bad_download(state, &job) =>
                    {
                        self.interrupted = Some(why.clone());
                        effects.extend(self.ended(state, &job, EventKind::VerificationFailed, why));
                    }
                    Err((kind, why)) => {
                        state.failed.insert(job.model.clone(), (job.release, job.variant.clone()));
                        effects.extend(self.ended(state, &job, kind, why));
                    }
                }
                self.next(state, effects)
            }
            Event::Removed => {
                let mut effects = Vec::new();
                for model in std::mem::take(&mut self.removing) {
                    if let Some(was) = state.committed.remove(&model) {
                        effects.push(Effect::Report {
                            kind: EventKind::Removed,
                            model: model.clone(),
                            release: was.release,
                            variant: was.variant,
                            detail: "no longer in the desired state: unloaded and its slots removed".into(),
                        });
                    }
                    state.failed.remove(&model);
                }
                effects.extend([Effect::Save, Effect::Done(Ok(()))]);
                effects
            }
        }
    }

    /// A job that did not commit: reported, and the device's last error.
    fn ended(&self, state: &mut DeviceState, job: &Job, kind: EventKind, why: String) -> Vec<Effect> {
        state.last_error = Some(format!("{} {}: {why}", job.model, job.release));
        vec![report(kind, job, why), Effect::Save]
    }

    /// After `effects`: the next job's judgement, or the pass's end.
    fn next(&mut self, state: &mut DeviceState, mut effects: Vec<Effect>) -> Vec<Effect> {
        if let Some(job) = self.jobs.front() {
            effects.push(Effect::Judge(job.clone()));
            return effects;
        }
        if let Some(why) = &self.interrupted {
            effects.extend([Effect::Save, Effect::Done(Err(why.clone()))]);
            return effects;
        }
        state.last_seen.desired_sequence = Some(self.sequence);
        state.etag = self.etag.clone();
        self.removing = state.committed.keys().filter(|m| !self.named.contains(*m)).cloned().collect();
        effects.push(Effect::Remove { models: self.removing.clone(), keep: self.keep.clone() });
        effects
    }
}

/// Counts one more download of `job` whose bytes missed their digest; answers whether to give it up.
fn bad_download(state: &mut DeviceState, job: &Job) -> bool {
    let now = chrono::Utc::now().timestamp();
    let entry = state.bad_downloads.entry(job.model.clone()).or_insert((job.release, job.variant.clone(), 0, now));
    if (entry.0, &entry.1) != (job.release, &job.variant) {
        *entry = (job.release, job.variant.clone(), 0, now);
    }
    entry.2 += 1;
    entry.2 >= MAX_BAD_DOWNLOADS && now - entry.3 >= BAD_DOWNLOAD_PATIENCE_SECS
}

fn report(kind: EventKind, job: &Job, detail: String) -> Effect {
    Effect::Report { kind, model: job.model.clone(), release: job.release, variant: job.variant.clone(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_registry::artifact::ArtifactRef;

    fn name(s: &str) -> ModelName {
        s.parse().unwrap()
    }

    fn v(n: u64) -> ReleaseVersion {
        ReleaseVersion::new(n).unwrap()
    }

    fn wanted(model: &str, release: u64, floor: u64) -> Wanted {
        Wanted {
            model: name(model),
            release: v(release),
            variant: "cpu".parse().unwrap(),
            floor: v(floor),
            partials: vec![format!("{model}{release}.partial")],
            routing: None,
        }
    }

    fn doc(sequence: u64, models: Vec<Wanted>) -> Document {
        Document { sequence, etag: Some(format!("\"{sequence}\"")), models }
    }

    fn installed(release: u64, slot: Slot) -> Installed {
        let raw = ArtifactRef { sha256: model_registry::Sha256Digest::of(b"raw"), size: 3 };
        Installed { release: v(release), variant: "cpu".parse().unwrap(), slot, raw, llm: None }
    }

    /// Runs a pass to its end, answering each question from `answers` (in order); the effects, by name.
    fn run(state: &mut DeviceState, doc: &Document, answers: Vec<Event>) -> Vec<Effect> {
        let (mut pass, mut effects) = Pass::start(state, doc);
        let mut all = Vec::new();
        let mut answers = answers.into_iter();
        loop {
            all.extend(effects.clone());
            match effects.last() {
                Some(Effect::Done(_)) => return all,
                Some(Effect::Remove { .. }) => effects = pass.on(state, Event::Removed),
                _ => effects = pass.on(state, answers.next().expect("an answer for every question")),
            }
        }
    }

    fn kinds(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Judge(j) => format!("judge {}", j.model),
                Effect::Install(j) => format!("install {} {} {}", j.model, j.release, j.slot.as_str()),
                Effect::EndLoad(m) => format!("end-load {m}"),
                Effect::Report { kind, model, .. } => format!("report {kind:?} {model}"),
                Effect::Save => "save".into(),
                Effect::Remove { models, .. } => format!("remove {models:?}"),
                Effect::Done(r) => format!("done {}", if r.is_ok() { "ok" } else { "interrupted" }),
            })
            .collect()
    }

    #[test]
    fn a_new_document_installs_and_is_recorded_once_applied() {
        let mut state = DeviceState::default();
        let effects = run(
            &mut state,
            &doc(5, vec![wanted("magika", 2, 1)]),
            vec![Event::Judged(None), Event::Installed(Ok(installed(2, Slot::A)))],
        );
        assert_eq!(
            kinds(&effects),
            [
                "judge magika",
                "install magika 2 a",
                "end-load magika",
                "report Installed magika",
                "save",
                "remove []",
                "save",
                "done ok"
            ]
        );
        assert_eq!(state.committed[&name("magika")].release, v(2));
        assert_eq!((state.last_seen.desired_sequence, state.etag.as_deref()), (Some(5), Some("\"5\"")));
        assert_eq!(state.last_seen.floors[&name("magika")], v(1));
        let Some(Effect::Remove { keep, .. }) = effects.iter().find(|e| matches!(e, Effect::Remove { .. })) else {
            unreachable!()
        };
        assert_eq!(keep.iter().collect::<Vec<_>>(), ["magika2.partial"]);
        // The same document again: nothing to install.
        let again = run(&mut state, &doc(6, vec![wanted("magika", 2, 1)]), vec![]);
        assert_eq!(kinds(&again), ["remove []", "save", "done ok"]);
    }

    /// Issue 15, item 1: a download interrupted in the same pass as another model's commit keeps the floor that
    /// commit's release raised; the document is taken again (no sequence, no tag), and nothing is removed.
    #[test]
    fn floors_count_at_once_and_an_interrupted_download_leaves_the_document_to_take_again() {
        let mut state = DeviceState::default();
        state.committed.insert(name("old"), installed(1, Slot::A));
        state.last_seen.floors.insert(name("magika"), v(1));
        state.last_seen.floors.insert(name("vad"), v(4));
        let d = doc(9, vec![wanted("magika", 3, 3), wanted("vad", 2, 1)]);
        let effects = run(
            &mut state,
            &d,
            vec![
                Event::Judged(None),
                Event::Installed(Ok(installed(3, Slot::A))),
                Event::Judged(None),
                Event::Installed(Err((EventKind::DownloadFailed, "connection reset".into()))),
            ],
        );
        assert_eq!(kinds(&effects).last().map(String::as_str), Some("done interrupted"));
        assert!(!kinds(&effects).iter().any(|k| k.starts_with("remove")), "{effects:?}");
        // Floors: raised by the document, never lowered by it.
        assert_eq!(state.last_seen.floors[&name("magika")], v(3));
        assert_eq!(state.last_seen.floors[&name("vad")], v(4));
        assert_eq!((state.last_seen.desired_sequence, state.etag.as_deref()), (None, None));
        assert!(state.committed.contains_key(&name("old")));
        assert!(state.failed.is_empty(), "a transient failure is tried again");
        assert!(state.last_error.as_deref().is_some_and(|e| e.contains("connection reset")));
        // The next pass takes the same document and installs only what is missing.
        let next = run(&mut state, &d, vec![Event::Judged(None), Event::Installed(Ok(installed(2, Slot::A)))]);
        assert_eq!(kinds(&next)[..2], ["judge vad", "install vad 2 a"]);
        assert_eq!(state.last_seen.desired_sequence, Some(9));
        assert!(!state.committed.contains_key(&name("old")), "removed once the document is applied");
    }

    /// Issue 15, item 3: refusals and failures a retry cannot fix are remembered; the crash-loop refusal clears
    /// its load count, the others leave no load to forget.
    #[test]
    fn refused_and_failed_releases_are_not_tried_again() {
        let mut state = DeviceState::default();
        let d = doc(2, vec![wanted("a", 1, 1), wanted("b", 1, 1), wanted("c", 1, 1)]);
        let effects = run(
            &mut state,
            &d,
            vec![
                Event::Judged(Some((EventKind::NoVariantFits, "needs QNN".into()))),
                Event::Judged(Some((EventKind::Refused, "crashed 3 times".into()))),
                Event::Judged(None),
                Event::Installed(Err((EventKind::GoldenFailed, "case 0 off".into()))),
            ],
        );
        assert_eq!(
            kinds(&effects),
            [
                "judge a",
                "report NoVariantFits a",
                "save",
                "judge b",
                "end-load b",
                "report Refused b",
                "save",
                "judge c",
                "install c 1 a",
                "end-load c",
                "report GoldenFailed c",
                "save",
                "remove []",
                "save",
                "done ok"
            ]
        );
        assert_eq!(state.failed.len(), 3);
        assert!(state.committed.is_empty());
        assert_eq!(state.last_seen.desired_sequence, Some(2), "the document was applied: every install ended");
        assert!(plan(&state, &d).is_empty(), "nothing is tried again while the document names them");
        // A newer release of one of them is tried.
        assert_eq!(plan(&state, &doc(3, vec![wanted("a", 2, 1)])).len(), 1);
    }

    /// Issue 16: bytes that missed their digest on the way (a mirror's fault, perhaps) are fetched again at
    /// the next passes; the release is given up after `MAX_BAD_DOWNLOADS` such downloads spread over at least
    /// `BAD_DOWNLOAD_PATIENCE_SECS`.
    #[test]
    fn bad_downloads_are_tried_again_for_a_while() {
        let mut state = DeviceState::default();
        let d = doc(2, vec![wanted("a", 1, 1)]);
        let bad = format!("{}: blob ...: sha256 differs", crate::download::BAD_DOWNLOAD);
        let once = |state: &mut DeviceState| {
            let answers =
                vec![Event::Judged(None), Event::Installed(Err((EventKind::VerificationFailed, bad.clone())))];
            kinds(&run(state, &d, answers)).last().cloned()
        };
        for attempt in 1..=MAX_BAD_DOWNLOADS + 2 {
            assert_eq!(once(&mut state).as_deref(), Some("done interrupted"), "attempt {attempt}: tried again");
            assert!(state.failed.is_empty());
            assert_eq!(state.bad_downloads[&name("a")].2, attempt);
            assert_eq!(plan(&state, &d).len(), 1);
        }
        // Ten minutes of wrong bytes: given up.
        state.bad_downloads.get_mut(&name("a")).expect("counted").3 -= BAD_DOWNLOAD_PATIENCE_SECS;
        once(&mut state);
        assert_eq!(state.failed.len(), 1, "given up");
        assert!(plan(&state, &d).is_empty());
        // A success forgets the count.
        let mut state = DeviceState::default();
        state.bad_downloads.insert(name("a"), (v(1), "cpu".parse().unwrap(), 2, 0));
        run(&mut state, &d, vec![Event::Judged(None), Event::Installed(Ok(installed(1, Slot::A)))]);
        assert!(state.bad_downloads.is_empty());
    }

    /// Issue 15, item 7: a model no longer named is removed once the document is applied, its failure forgotten.
    #[test]
    fn models_no_longer_named_are_removed() {
        let mut state = DeviceState::default();
        state.committed.insert(name("gone"), installed(4, Slot::B));
        state.committed.insert(name("kept"), installed(1, Slot::A));
        state.failed.insert(name("gone"), (v(5), "cpu".parse().unwrap()));
        let effects = run(&mut state, &doc(3, vec![wanted("kept", 1, 1)]), vec![]);
        assert_eq!(kinds(&effects), [r#"remove [ModelName("gone")]"#, "report Removed gone", "save", "done ok"]);
        assert_eq!(state.committed.keys().collect::<Vec<_>>(), [&name("kept")]);
        assert!(state.failed.is_empty());
    }

    /// Issue 14: the routing policies of the releases a document names are in force from the document on,
    /// whatever happens to the installs; a model whose release names none has none.
    #[test]
    fn routing_policies_come_with_the_document() {
        let private: RoutingPolicy =
            serde_json::from_value(serde_json::json!({"mode": "local_only", "private": true})).unwrap();
        let mut state = DeviceState::default();
        state.routing.insert(name("old"), RoutingPolicy::local());
        let chat = Wanted { routing: Some(private.clone()), ..wanted("chat", 2, 1) };
        let d = doc(4, vec![chat, wanted("magika", 1, 1)]);
        run(
            &mut state,
            &d,
            vec![
                Event::Judged(None),
                Event::Installed(Err((EventKind::DownloadFailed, "reset".into()))),
                Event::Judged(None),
                Event::Installed(Err((EventKind::DownloadFailed, "reset".into()))),
            ],
        );
        assert_eq!(state.routing.len(), 1);
        assert_eq!(state.routing.get(&name("chat")), Some(&private));
    }

    #[test]
    fn installs_go_to_the_slot_not_in_use() {
        let mut state = DeviceState::default();
        state.committed.insert(name("m"), installed(1, Slot::A));
        assert_eq!(plan(&state, &doc(1, vec![wanted("m", 2, 1)]))[0].slot, Slot::B);
        assert_eq!(plan(&state, &doc(1, vec![wanted("n", 1, 1)]))[0].slot, Slot::A);
    }
}
