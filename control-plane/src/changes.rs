//! Keeping every replica's caches true. The in-memory caches (the assignment snapshot, each device's document,
//! certificate serials and last report, the trust root) are caches of the database; whatever changes what
//! they hold is applied here at once and, on PostgreSQL, appended to the `changes` log with a NOTIFY. Every
//! server follows the log — woken by the NOTIFY, and re-reading it every second as the safety net — and
//! applies what the others changed: everything (assignments, rollout moves), the trust root, or one device
//! (labels, revocation, renewal, a new report), so that a label edit re-plans one device, not the fleet.
//!
//! A server that cannot read the log does not know what it missed: once it has not read it for
//! `replica_stale_secs`, it answers check-ins 503 and `/readyz` fails, rather than serve documents it cannot
//! vouch for. Sequence numbers are taken before commit, so a later number can commit first: numbers skipped
//! over are looked for again for a while before they are given up as rolled back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_protocol::DeviceId;
use sqlx::postgres::PgListener;

use crate::state::{AppState, Inner, now_ms};
use crate::store::{CHANNEL, ChangeRow, StoreError};

/// What a change touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Anything every document may depend on: assignments, rollouts and their moves, chosen variants.
    All,
    /// The trust root (a new version was added).
    Roots,
    /// One device: its labels, certificate, revocation, report or hardware.
    Device(DeviceId),
}

impl Scope {
    fn parts(&self) -> (&'static str, Option<&str>) {
        match self {
            Scope::All => ("all", None),
            Scope::Roots => ("roots", None),
            Scope::Device(id) => ("device", Some(id.as_str())),
        }
    }

    fn from_row(row: &ChangeRow) -> Option<Scope> {
        match (row.scope.as_str(), &row.device) {
            ("all", _) => Some(Scope::All),
            ("roots", _) => Some(Scope::Roots),
            ("device", Some(d)) => d.parse().ok().map(Scope::Device),
            _ => None,
        }
    }
}

/// How often the log is read without a NOTIFY, and how long rows are kept.
const POLL: Duration = Duration::from_secs(1);
const KEEP_MS: i64 = 3_600_000;
/// How long a skipped sequence number is looked for before it counts as a rolled-back transaction.
const GAP_PATIENCE: Duration = Duration::from_secs(30);
/// Rows read per query.
const PAGE: i64 = 10_000;

impl Inner {
    /// Applies a change here and tells the other replicas.
    pub async fn changed(&self, scope: Scope) -> Result<(), StoreError> {
        self.apply(&scope);
        self.publish(&scope).await
    }

    /// Tells the other replicas of a change this server has already taken into account (a report it stored:
    /// its own cache holds the new digest).
    pub async fn publish(&self, scope: &Scope) -> Result<(), StoreError> {
        let (name, device) = scope.parts();
        self.store.publish_change(&self.replica, name, device, now_ms()).await
    }

    /// Drops what `scope` makes stale from this server's caches, and wakes the long-polls it concerns.
    pub fn apply(&self, scope: &Scope) {
        match scope {
            Scope::All | Scope::Roots => self.invalidate(),
            Scope::Device(id) => {
                self.desired.invalidate(id);
                self.credentials.invalidate(id);
                self.reports.invalidate(id);
                if let Some(waiting) = self.waiters.get(id) {
                    waiting.notify_waiters();
                }
            }
        }
    }

    /// Forgets every cached device and rebuilds the snapshot: for a server that lost track of the log.
    fn apply_everything(&self) {
        self.desired.invalidate_all();
        self.credentials.invalidate_all();
        self.reports.invalidate_all();
        self.invalidate();
    }

    /// Whether this server's caches may be trusted: always on SQLite (one server, nothing else writes), on
    /// PostgreSQL only while the change log was read within `replica_stale_secs`.
    pub fn in_sync(&self) -> bool {
        self.store.backend != crate::store::Backend::Postgres
            || now_ms() - self.synced_at.load(std::sync::atomic::Ordering::Relaxed)
                <= (self.config.replica_stale_secs * 1000.0) as i64
    }
}

/// Where this server is in the log: everything below `next` is applied, except the numbers in `missing`
/// (skipped over, perhaps still to commit, with when they were first missed).
#[derive(Debug, Default)]
struct Cursor {
    next: i64,
    missing: BTreeMap<i64, Instant>,
}

impl Cursor {
    /// Where to read from: just below the lowest number still missing, else after the last applied.
    fn from(&self) -> i64 {
        self.missing.keys().next().map_or(self.next - 1, |m| m - 1)
    }

    /// Takes in rows read from [`Cursor::from`]; answers those to apply (not applied before).
    fn take(&mut self, rows: Vec<ChangeRow>, now: Instant) -> Vec<ChangeRow> {
        let mut fresh = Vec::new();
        for row in rows {
            if row.seq >= self.next {
                for gap in self.next..row.seq {
                    self.missing.insert(gap, now);
                }
                self.next = row.seq + 1;
            } else if self.missing.remove(&row.seq).is_none() {
                continue; // applied before
            }
            fresh.push(row);
        }
        self.missing.retain(|_, since| now.duration_since(*since) < GAP_PATIENCE);
        fresh
    }
}

/// Reads the chain of roots from the database again and swaps it in, if it verifies.
async fn reload_trust(state: &AppState) {
    match crate::app::load_trust(&state.store, &state.config, &state.limits).await {
        Ok(trust) => *state.trust.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(trust),
        Err(e) => tracing::error!(error = %e, "a new trust root from another server does not verify; keeping the old"),
    }
}

async fn apply_rows(state: &AppState, rows: Vec<ChangeRow>) {
    for row in rows {
        if row.origin == state.replica {
            continue;
        }
        match Scope::from_row(&row) {
            Some(Scope::Roots) => {
                reload_trust(state).await;
                state.apply(&Scope::Roots);
            }
            Some(scope) => state.apply(&scope),
            None => {
                tracing::warn!(seq = row.seq, scope = %row.scope, "an unknown change in the log; rebuilding every cache");
                reload_trust(state).await;
                state.apply_everything();
            }
        }
    }
}

/// One pass over the log: read what is new (page by page) and apply it. A server whose place in the log was
/// pruned away (it was cut off for an hour) starts over from an empty cache.
async fn catch_up(state: &AppState, cursor: &mut Cursor) -> Result<(), StoreError> {
    loop {
        let from = cursor.from();
        if from > 0 && state.store.first_change().await? > from + 1 {
            tracing::warn!(from, "this server's place in the change log was pruned; rebuilding every cache");
            reload_trust(state).await;
            state.apply_everything();
            *cursor = Cursor { next: state.store.last_change().await? + 1, ..Cursor::default() };
            continue;
        }
        let rows = state.store.changes_after(from, PAGE).await?;
        let full = rows.len() as i64 == PAGE;
        let fresh = cursor.take(rows, Instant::now());
        apply_rows(state, fresh).await;
        if !full {
            return Ok(());
        }
    }
}

/// Follows the change log for as long as the server runs (PostgreSQL only): LISTEN for wake-ups, read the log
/// on each and every second, prune it every minute. Any failure makes the server unsynced until a read works.
pub async fn follow(state: AppState, database_url: String) {
    let mut cursor = Cursor::default();
    loop {
        match state.store.last_change().await {
            Ok(last) => {
                cursor.next = last + 1;
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the change log failed; retrying");
                tokio::time::sleep(POLL).await;
            }
        }
    }
    state.synced_at.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
    let mut last_prune = Instant::now();
    loop {
        let mut listener = match PgListener::connect(&database_url).await {
            Ok(mut l) => match l.listen(CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; reading the change log every second");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "connecting the change listener failed; reading the change log every second");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match &mut listener {
                Some(l) => tokio::select! {
                    n = l.try_recv() => match n {
                        Ok(Some(_)) => {}
                        // The connection dropped (and notifications with it): read the log, then listen anew.
                        Ok(None) | Err(_) => listener = None,
                    },
                    _ = tick.tick() => {}
                },
                None => {
                    tick.tick().await;
                }
            }
            match catch_up(&state, &mut cursor).await {
                Ok(()) => state.synced_at.store(now_ms(), std::sync::atomic::Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "reading the change log failed"),
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = Instant::now();
                if let Err(e) = state.store.prune_changes(now_ms() - KEEP_MS).await {
                    tracing::warn!(error = %e, "pruning the change log failed");
                }
            }
            if listener.is_none() {
                break;
            }
        }
        // Reconnect (at most once a second: the tick above paced the loop).
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64) -> ChangeRow {
        ChangeRow { seq, origin: "other".into(), scope: "all".into(), device: None }
    }

    #[test]
    fn a_number_committed_late_is_applied_once_and_a_rolled_back_one_is_given_up() {
        let t0 = Instant::now();
        let mut c = Cursor { next: 1, ..Cursor::default() };
        // 1, 2 and 4 committed; 3 still in flight.
        let got: Vec<i64> = c.take(vec![row(1), row(2), row(4)], t0).iter().map(|r| r.seq).collect();
        assert_eq!(got, [1, 2, 4]);
        assert_eq!(c.from(), 2, "3 is read for again");
        // The next read sees 4 again (already applied) and 5.
        let got: Vec<i64> = c.take(vec![row(4), row(5)], t0).iter().map(|r| r.seq).collect();
        assert_eq!(got, [5]);
        // 3 commits late: applied once.
        let got: Vec<i64> = c.take(vec![row(3), row(4), row(5)], t0).iter().map(|r| r.seq).collect();
        assert_eq!(got, [3]);
        assert_eq!(c.from(), 5);
        // 6 never commits (rolled back): after the patience it is no longer read for.
        let got: Vec<i64> = c.take(vec![row(7)], t0).iter().map(|r| r.seq).collect();
        assert_eq!(got, [7]);
        assert_eq!(c.from(), 5);
        c.take(vec![], t0 + GAP_PATIENCE + Duration::from_secs(1));
        assert_eq!(c.from(), 7);
        assert!(c.take(vec![row(7)], t0).is_empty(), "7 was applied");
    }
}
