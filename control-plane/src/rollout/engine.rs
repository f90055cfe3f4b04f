//! The rollout engine: on a timer, one server at a time (see `Store::try_lead`) gathers what each active
//! rollout's releases did per device class from the telemetry rollups, runs the pure planner, stores every
//! gate's numbers, and moves the rollout when the planner says so — in one transaction with an audit entry
//! that carries the numbers that caused it. Any move changes what devices are told at their next check-in.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_protocol::rollout::{Action, ChooseVariant, Objective, Verdict};

use super::{Observations, Rollout, State, Stats, apply, choice, describe, evaluate};
use crate::state::{AppState, now_ms};
use crate::store::{Audit, ClassStats, RolloutRow, StoreError};

/// The advisory-lock key of rollout evaluation.
const LEADER_KEY: i64 = 0x0065_6467_6566_6c01;

/// Per device class, (new release, baseline), from per-class rows of both releases. A device that changed
/// class counts under the class each point was sent with: its old numbers stay with the old class.
pub fn observations(r: &Rollout, rows: &[ClassStats]) -> Observations {
    let mut out: Observations = BTreeMap::new();
    for row in rows {
        let e = out.entry(row.class.clone()).or_insert((Stats::default(), Stats::default()));
        if row.release == r.release {
            e.0 = row.stats;
        } else if row.release == r.baseline {
            e.1 = row.stats;
        }
    }
    out
}

/// How long the classes a wave reached are trusted before the inventory is read again.
const REACHED_TTL_MS: i64 = 60_000;
/// Devices read per page when counting them.
const PAGE: i64 = 5_000;

/// Online devices per class that the rollout's waves so far put on its new release, from the inventory: the
/// devices its selector picks, seen within three check-in intervals (an offline device holds no wave). Counted
/// once per wave and minute, not every tick — the scan reads every selected device.
async fn reached(state: &AppState, r: &Rollout, wave: usize, now: i64) -> Result<BTreeMap<String, u64>, StoreError> {
    if let Some((w, at, counts)) = state.reached.lock().unwrap_or_else(|p| p.into_inner()).get(&r.id)
        && *w == wave
        && now - at < REACHED_TTL_MS
    {
        return Ok(counts.clone());
    }
    let online_after = now - 3 * (state.config.checkin_interval_secs.max(1) as i64) * 1000;
    let running = State::Running { wave, since: 0 };
    let mut counts = BTreeMap::new();
    let mut after = None;
    loop {
        let page = state.store.online_selected(&r.selector, online_after, after.as_ref(), PAGE).await?;
        for (device, class, labels) in &page {
            if super::target(r, &running, device, labels) == r.release {
                *counts.entry(class.clone()).or_insert(0) += 1;
            }
        }
        match page.last() {
            Some((last, ..)) if page.len() as i64 == PAGE => after = Some(last.clone()),
            _ => break,
        }
    }
    state.reached.lock().unwrap_or_else(|p| p.into_inner()).insert(r.id.clone(), (wave, now, counts.clone()));
    Ok(counts)
}

/// Whether the new release was withdrawn: gone from the registry, or no longer signed by a threshold of the
/// current root's release keys (a key revoked by a root rotation).
async fn withdrawn(state: &AppState, r: &Rollout) -> Result<bool, StoreError> {
    Ok(state.release_trusted(&r.model, r.release).await? != Some(true))
}

fn audit_detail(row: &RolloutRow, to: &State, gates: &[super::GateResult]) -> serde_json::Value {
    serde_json::json!({
        "from": row.state,
        "to": to,
        "gates": gates,
    })
}

/// For a rollout that chooses variants by measurement: each device class the waves reached that has no decided
/// choice gets one from what its devices measured, once enough of them reported (stored with its audit entry,
/// which carries the numbers); until then its progress is stored and it is marked choosing, which holds the
/// wave. Measurements are read only while such a class exists. Answers whether any class was decided.
async fn choose_variants(
    state: &AppState,
    r: &Rollout,
    (objective, min_devices): (Objective, u64),
    seen: &mut Observations,
    now: i64,
) -> Result<bool, StoreError> {
    let stored: BTreeMap<String, _> =
        state.store.rollout_choices(&r.id).await?.into_iter().map(|c| (c.class.clone(), c)).collect();
    let open: Vec<String> = seen
        .iter()
        .filter(|(class, (new, _))| new.devices > 0 && !stored.get(*class).is_some_and(|c| c.decided))
        .map(|(class, _)| class.clone())
        .collect();
    if open.is_empty() {
        return Ok(false);
    }
    let rows = state.store.measurements(&r.model, r.release).await?;
    let mut decided = false;
    for class in open {
        let of_class: Vec<_> = rows.iter().filter(|m| m.class == class).collect();
        let c = choice::choose(&class, objective, min_devices, &of_class);
        if c.decided {
            let audit = Audit {
                actor: "rollout-engine",
                action: "rollout.variant_chosen",
                target: &r.id,
                source: &state.replica,
                detail: serde_json::json!(c),
            };
            if state.store.set_rollout_choice(&r.id, &c, Some(audit), now).await? {
                tracing::info!(rollout = %r.id, %class, variant = ?c.variant, reason = %c.reason, "variant chosen");
                decided = true;
            }
            continue;
        }
        if stored.get(&class) != Some(&c) {
            state.store.set_rollout_choice(&r.id, &c, None, now).await?;
        }
        if let Some((new, _)) = seen.get_mut(&class) {
            new.choosing = true;
        }
    }
    Ok(decided)
}

/// Evaluates every active rollout once at `now`; answers how many changed state.
pub async fn evaluate_all(state: &AppState, now: i64) -> Result<usize, StoreError> {
    let lookback = (state.config.rollout_baseline_lookback_secs as i64).saturating_mul(1000);
    let (mut moved, mut chosen) = (0, false);
    let rollouts = state.store.rollouts().await?;
    state
        .reached
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|id, _| rollouts.iter().any(|row| &row.rollout.id == id && row.state.is_active()));
    for row in rollouts {
        if !row.state.is_active() {
            continue;
        }
        let r = &row.rollout;
        // The new release from the window the rollout started in; the baseline from `lookback` before it.
        let window = state.ingest.settings.window_ms;
        let sides = [(r.release, row.created_at - window), (r.baseline, row.created_at - lookback)];
        let rows = state.store.release_stats(&r.model, sides).await?;
        let mut seen = observations(r, &rows);
        if let State::Running { wave, .. } | State::Paused { wave, .. } = row.state {
            for (class, devices) in reached(state, r, wave, now).await? {
                seen.entry(class).or_default().0.devices = devices;
            }
        }
        if let ChooseVariant::Measurement { objective, min_devices } = r.choose_variant {
            chosen |= choose_variants(state, r, (objective, min_devices), &mut seen, now).await?;
        }
        let e = evaluate(r, &row.state, &seen, withdrawn(state, r).await?, now);
        state.store.set_rollout_gates(&r.id, &e.gates, now).await?;
        if e.state == row.state {
            continue;
        }
        let action =
            format!("rollout.{}", if matches!(e.state, State::Running { .. }) { "advance" } else { e.state.name() });
        let audit = Audit {
            actor: "rollout-engine",
            action: &action,
            target: &r.id,
            source: &state.replica,
            detail: audit_detail(&row, &e.state, &e.gates),
        };
        if state.store.set_rollout_state(&r.id, &row.state, &e.state, audit, now).await? {
            tracing::info!(rollout = %r.id, from = row.state.name(), to = e.state.name(), "rollout moved");
            if let Some(failed) = e.gates.iter().find(|g| g.verdict == Verdict::Fail) {
                tracing::warn!(rollout = %r.id, gate = %describe(failed), "rollout gate failed");
            }
            moved += 1;
        }
    }
    if moved > 0 || chosen {
        state.changed(crate::changes::Scope::All).await?;
    }
    Ok(moved)
}

/// Why an operator's action was not taken.
#[derive(Debug)]
pub enum Refused {
    NotFound,
    /// The action does not apply to the rollout's state, or the state changed meanwhile.
    Conflict(String),
}

/// An operator's action, checked by the planner and stored with its audit entry.
pub async fn act(
    state: &AppState,
    id: &str,
    action: Action,
    actor: &str,
    source: &str,
) -> Result<Result<RolloutRow, Refused>, StoreError> {
    let Some(row) = state.store.rollout(id).await? else { return Ok(Err(Refused::NotFound)) };
    let now = now_ms();
    let to = match apply(&row.state, action, now) {
        Ok(s) => s,
        Err(e) => return Ok(Err(Refused::Conflict(e))),
    };
    let name = format!("rollout.{}", action.as_str());
    let audit = Audit { actor, action: &name, target: id, source, detail: audit_detail(&row, &to, &row.gates) };
    if !state.store.set_rollout_state(id, &row.state, &to, audit, now).await? {
        return Ok(Err(Refused::Conflict("the rollout changed meanwhile; look again and retry".into())));
    }
    state.changed(crate::changes::Scope::All).await?;
    Ok(Ok(RolloutRow { state: to, updated_at: now, ..row }))
}

/// Runs evaluation every `rollout_eval_secs` while this server leads.
pub async fn run(state: AppState) {
    let every = Duration::from_millis((state.config.rollout_eval_secs * 1000.0).max(50.0) as u64);
    // The first evaluation one period after start, not at once: an immediate first tick, run late by a busy
    // scheduler, raced whoever evaluates at a moment of their choosing (the API tests do).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = None;
    loop {
        tick.tick().await;
        if let Some(l) = &mut leading
            && !crate::store::Leadership::holds(l).await
        {
            leading = None;
        }
        if leading.is_none() {
            match state.store.try_lead(LEADER_KEY).await {
                Ok(l) => leading = l,
                Err(e) => tracing::warn!(error = %e, "rollout leadership"),
            }
        }
        if leading.is_some()
            && let Err(e) = evaluate_all(&state, now_ms()).await
        {
            tracing::warn!(error = %e, "rollout evaluation failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::otlp::NBUCKETS;
    use edgefleet_protocol::ReleaseVersion;

    #[test]
    fn a_device_changing_class_counts_under_each_class_it_reported() {
        let v = |n| ReleaseVersion::new(n).expect("v");
        let r = Rollout {
            id: "r".into(),
            model: "magika".parse().expect("name"),
            selector: Default::default(),
            baseline: v(1),
            release: v(2),
            waves: vec![],
            gates: vec![],
            min_samples: 1,
            on_failure: super::super::OnFailure::Pause,
            choose_variant: ChooseVariant::FirstFit,
        };
        let stats = |requests| Stats { requests, ..Stats::default() };
        let row = |class: &str, release, requests| ClassStats {
            class: class.into(),
            release: v(release),
            stats: stats(requests),
            buckets: [0; NBUCKETS],
        };
        // The same device sent release 2's first 10 requests as a raspberry-pi, then 5 as an x86-server.
        let seen = observations(
            &r,
            &[
                row("raspberry-pi", 2, 10),
                row("raspberry-pi", 1, 100),
                row("x86-server", 2, 5),
                row("x86-server", 7, 9),
            ],
        );
        assert_eq!(seen["raspberry-pi"].0.requests, 10);
        assert_eq!(seen["raspberry-pi"].1.requests, 100);
        assert_eq!(seen["x86-server"].0.requests, 5);
        assert_eq!(seen["x86-server"].1.requests, 0, "release 7 is neither side");
    }
}
