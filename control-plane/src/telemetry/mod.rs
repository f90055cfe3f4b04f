//! Telemetry from the fleet: the OTLP receiver's state. Devices export cumulative metrics ([`otlp`] checks
//! them); each series' last point turns the next one into a delta ([`series`]); deltas add up in rollups per
//! (device, model, release, variant, provider, window), held in memory and written by [`flush`] together with
//! the series' last points in one transaction, so a server that restarts neither loses nor double-counts.
//!
//! Energy: the device's energy counter (`hw.energy`) has no model; its delta over an export is shared among
//! the inference series of that export by their inference counts, and the inferences counted beside it are
//! what energy per inference divides by. An export without inferences (an idle device) adds no energy to any
//! release. A device without a sensor sends no energy, and its rollups say so (no energy inferences).
//!
//! The fleet-level totals behind `/metrics` (per model, release and device class; no per-device labels) are
//! kept here too, as they arrive.

pub mod otlp;
pub mod series;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgefleet_protocol::telemetry::{INSTALL_COMMITTED, INSTALL_FAILURES, ROUTE_REASONS};
use edgefleet_protocol::{DeviceId, ModelName, ReleaseVersion};
use otlp::{NBUCKETS, Point, Reason, Target, What};
use series::{Last, Step};

use crate::state::{AppState, now_ms};

/// Deltas of one (device, model, release, variant, provider, window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollup {
    pub class: String,
    pub ok: u64,
    pub errors: u64,
    pub duration_sum: f64,
    pub buckets: [u64; NBUCKETS],
    pub energy_j: f64,
    pub energy_inferences: u64,
    pub installs: u64,
    pub install_failures: u64,
    /// Language models: time to first token and time per output token (histograms on the duration buckets),
    /// tokens read and written, and the output tokens of exports whose energy this rollup got a share of.
    pub ttft: [u64; NBUCKETS],
    pub tpot: [u64; NBUCKETS],
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub energy_tokens: u64,
    /// Routed language-model requests: per reason (in [`ROUTE_REASONS`] order) and those the cloud answered;
    /// cloud calls that failed, request bytes sent to the cloud, and answered calls' latency (histogram).
    pub route: [u64; ROUTE_REASONS.len()],
    pub route_cloud: u64,
    pub cloud_errors: u64,
    pub cloud_bytes: u64,
    pub cloud: [u64; NBUCKETS],
}

impl Rollup {
    fn is_empty(&self) -> bool {
        self.ok == 0
            && self.errors == 0
            && self.installs == 0
            && self.energy_j == 0.0
            && self.tokens_in == 0
            && self.tokens_out == 0
            && self.cloud_errors == 0
            && self.cloud_bytes == 0
            && self
                .buckets
                .iter()
                .chain(&self.ttft)
                .chain(&self.tpot)
                .chain(&self.route)
                .chain(&self.cloud)
                .all(|b| *b == 0)
    }

    fn add(&mut self, o: &Rollup) {
        self.class.clone_from(&o.class);
        self.ok += o.ok;
        self.errors += o.errors;
        self.duration_sum += o.duration_sum;
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
        self.energy_j += o.energy_j;
        self.energy_inferences += o.energy_inferences;
        self.installs += o.installs;
        self.install_failures += o.install_failures;
        for (a, b) in self.ttft.iter_mut().zip(&o.ttft).chain(self.tpot.iter_mut().zip(&o.tpot)) {
            *a += b;
        }
        self.tokens_in += o.tokens_in;
        self.tokens_out += o.tokens_out;
        self.energy_tokens += o.energy_tokens;
        for (a, b) in self.route.iter_mut().zip(&o.route).chain(self.cloud.iter_mut().zip(&o.cloud)) {
            *a += b;
        }
        self.route_cloud += o.route_cloud;
        self.cloud_errors += o.cloud_errors;
        self.cloud_bytes += o.cloud_bytes;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RollupKey {
    pub device: DeviceId,
    pub target: Target,
    pub window_start: i64,
}

/// A device's series, as persisted: series key → last point.
pub type SeriesMap = HashMap<u64, Last>;

/// Series one device may have: a few per release it runs (requests by outcome, durations, tokens, installs by
/// kind) and the hardware's; far more is a device inventing attributes.
pub const MAX_SERIES_PER_DEVICE: usize = 512;

/// The fastest a counter can honestly rise on one device, per second: requests (a tiny model on a fast CPU
/// answers thousands a second, not 100,000) and tokens. Faster is refused, so one device cannot drown its
/// class's numbers in invented ones. `None`: not a rate of work.
fn max_rate(what: &What) -> Option<f64> {
    match what {
        What::Inferences { .. }
        | What::Duration { .. }
        | What::Ttft { .. }
        | What::Tpot { .. }
        | What::Routed { .. }
        | What::CloudDuration { .. }
        | What::CloudErrors { .. } => Some(100_000.0),
        What::Tokens { .. } => Some(1_000_000.0),
        // Request bytes to the cloud: a gigabyte a second is past any device's uplink.
        What::CloudBytes { .. } => Some(1e9),
        What::Install { .. } => Some(100.0),
        What::Energy | What::Power | What::Memory => None,
    }
}

#[derive(Debug, Default)]
struct DeviceLive {
    series: SeriesMap,
    class: String,
    /// When it last exported (ms), for eviction.
    seen_ms: i64,
}

#[derive(Debug, Default)]
struct Shard {
    devices: HashMap<DeviceId, DeviceLive>,
    pending: HashMap<RollupKey, Rollup>,
    dirty: HashSet<DeviceId>,
}

/// Fleet totals for one (model, release, device class): what `/metrics` shows. The same sums as a rollup.
pub type FleetTotals = Rollup;

pub type FleetKey = (ModelName, ReleaseVersion, String);

#[derive(Debug, Default)]
struct Fleet {
    /// Since the server started (Prometheus counters).
    totals: BTreeMap<FleetKey, FleetTotals>,
    /// Per window, the recent ones only (quantile gauges over the last minutes).
    recent: VecDeque<(i64, BTreeMap<FleetKey, FleetTotals>)>,
}

/// Counters of what the receiver did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub exports: AtomicU64,
    pub exports_malformed: AtomicU64,
    pub exports_rate_limited: AtomicU64,
    pub points_accepted: AtomicU64,
    pub points_stale: AtomicU64,
    pub points_ignored: AtomicU64,
    pub refused: [AtomicU64; Reason::ALL.len()],
    pub flushes_failed: AtomicU64,
}

impl Counters {
    pub fn refused(&self, r: Reason) -> u64 {
        self.refused[r as usize].load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub window_ms: i64,
    /// Exports per second each device may send, and the burst it may save up.
    pub exports_per_sec: f64,
    pub burst: f64,
    /// How far back the quantile gauges of `/metrics` look.
    pub recent_ms: i64,
}

/// What one export did.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub accepted: u64,
    pub stale: u64,
    pub refused: Vec<(Reason, String)>,
}

/// The receiver's state (one per server).
#[derive(Debug)]
pub struct Ingest {
    shards: Vec<Mutex<Shard>>,
    /// Exports per device: a token bucket each.
    limiter: crate::limiter::Limiter,
    fleet: Mutex<Fleet>,
    pub settings: Settings,
    pub counters: Counters,
}

/// What [`Ingest::take`] hands to the store: rollup deltas and the series of every device they came from.
#[derive(Debug, Default)]
pub struct Batch {
    pub rollups: Vec<(RollupKey, Rollup)>,
    pub series: Vec<(DeviceId, String)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ingest {
    pub fn new(settings: Settings) -> Self {
        Self {
            shards: (0..16).map(|_| Mutex::new(Shard::default())).collect(),
            limiter: crate::limiter::Limiter::new(settings.exports_per_sec, settings.burst),
            fleet: Mutex::new(Fleet::default()),
            settings,
            counters: Counters::default(),
        }
    }

    fn shard(&self, d: &DeviceId) -> &Mutex<Shard> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        d.hash(&mut h);
        &self.shards[(h.finish() as usize) % self.shards.len()]
    }

    /// Takes a token from the device's bucket, or says how many seconds until one is there.
    pub fn admit(&self, d: &DeviceId, now_ms: i64) -> Result<(), u64> {
        self.limiter.admit(d, now_ms).inspect_err(|_| {
            self.counters.exports_rate_limited.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Devices whose series are in memory.
    pub fn devices_loaded(&self) -> usize {
        self.shards.iter().map(|s| lock(s).devices.len()).sum()
    }

    /// Keeps at most `max` devices' series in memory: past it, those quiet longest whose series are written
    /// (not dirty) are dropped; a device that exports again is read back from the store (`ensure_loaded`).
    /// Call after a flush.
    pub fn evict(&self, max: usize) {
        let per_shard = max / self.shards.len();
        for s in &self.shards {
            let mut shard = lock(s);
            if shard.devices.len() <= per_shard {
                continue;
            }
            let keep = per_shard - per_shard / 10;
            let mut quiet: Vec<(i64, DeviceId)> = shard
                .devices
                .iter()
                .filter(|(d, _)| !shard.dirty.contains(*d))
                .map(|(d, l)| (l.seen_ms, d.clone()))
                .collect();
            quiet.sort_unstable();
            let excess = shard.devices.len().saturating_sub(keep);
            for (_, d) in quiet.into_iter().take(excess) {
                shard.devices.remove(&d);
            }
        }
    }

    pub fn is_loaded(&self, d: &DeviceId) -> bool {
        lock(self.shard(d)).devices.contains_key(d)
    }

    /// Puts a device's persisted series in place (after a restart), unless an export got there first.
    pub fn load(&self, d: &DeviceId, series: SeriesMap, class: String) {
        let seen_ms = crate::state::now_ms();
        lock(self.shard(d)).devices.entry(d.clone()).or_insert(DeviceLive { series, class, seen_ms });
    }

    /// Applies an export's checked points. `told` says whether the server told the device to run a release.
    pub fn apply(
        &self,
        d: &DeviceId,
        decoded: otlp::Decoded,
        told: impl Fn(&ModelName, ReleaseVersion) -> bool,
        now_ms: i64,
    ) -> Applied {
        let mut applied = Applied { refused: decoded.refused, ..Default::default() };
        let mut fresh: BTreeMap<RollupKey, Rollup> = BTreeMap::new();
        let mut energy = 0.0;
        let window = |time_ns: u64| {
            let ms = ((time_ns / 1_000_000) as i64).min(now_ms);
            ms - ms.rem_euclid(self.settings.window_ms.max(1))
        };
        let class;
        {
            let mut shard = lock(self.shard(d));
            let live = shard.devices.entry(d.clone()).or_default();
            live.seen_ms = now_ms;
            // The class is the one the device enrolled with (read from the store by `ensure_loaded`), never the
            // export's own attribute: one device must not count its numbers under another class's gates.
            if live.class.is_empty() {
                live.class = "unknown".into();
            }
            class = live.class.clone();
            for p in decoded.points {
                let Point { what, metric, key, start_ns, time_ns, values } = p;
                if let What::Inferences { target, .. }
                | What::Duration { target }
                | What::Install { target, .. }
                | What::Ttft { target }
                | What::Tpot { target }
                | What::Tokens { target, .. }
                | What::Routed { target, .. }
                | What::CloudDuration { target }
                | What::CloudErrors { target }
                | What::CloudBytes { target } = &what
                    && !told(&target.model, target.release)
                {
                    let why = format!("this device was not told to run release {} of {}", target.release, target.model);
                    applied.refused.push((Reason::UnknownModel, why));
                    continue;
                }
                if matches!(what, What::Power | What::Memory) {
                    // Checked (finite, not negative) and counted; rollouts and rollups do not use them.
                    applied.accepted += 1;
                    continue;
                }
                if !live.series.contains_key(&key) && live.series.len() >= MAX_SERIES_PER_DEVICE {
                    let why = format!("{metric}: this device already has {MAX_SERIES_PER_DEVICE} series");
                    applied.refused.push((Reason::TooManySeries, why));
                    continue;
                }
                let since_ns = live.series.get(&key).filter(|l| l.start_ns == start_ns).map_or(start_ns, |l| l.time_ns);
                let delta = match series::step(live.series.get(&key), start_ns, time_ns, &values) {
                    Step::Delta(d) => d,
                    Step::Stale => {
                        applied.stale += 1;
                        continue;
                    }
                    Step::Backwards => {
                        let why = format!("{metric} went below its last value without a new start time");
                        applied.refused.push((Reason::CounterBackwards, why));
                        continue;
                    }
                };
                if let Some(limit) = max_rate(&what) {
                    let secs = (time_ns.saturating_sub(since_ns) as f64 / 1e9).max(1.0);
                    if delta[0] / secs > limit {
                        let why = format!("{metric} rose by {:.0} in {secs:.0} s, over {limit:.0}/s", delta[0]);
                        applied.refused.push((Reason::Implausible, why));
                        continue;
                    }
                }
                live.series.insert(key, Last { start_ns, time_ns, values });
                applied.accepted += 1;
                let rollup_key =
                    |target: Target| RollupKey { device: d.clone(), target, window_start: window(time_ns) };
                match what {
                    What::Inferences { target, ok } => {
                        let n = delta[0].round() as u64;
                        let r = fresh.entry(rollup_key(target)).or_default();
                        if ok { r.ok += n } else { r.errors += n }
                    }
                    What::Duration { target } => {
                        let r = fresh.entry(rollup_key(target)).or_default();
                        r.duration_sum += delta[1];
                        for (b, v) in r.buckets.iter_mut().zip(&delta[2..]) {
                            *b += v.round() as u64;
                        }
                    }
                    What::Install { target, kind } => {
                        let n = delta[0].round() as u64;
                        let r = fresh.entry(rollup_key(target)).or_default();
                        if kind == INSTALL_COMMITTED {
                            r.installs += n;
                        } else if INSTALL_FAILURES.contains(&kind.as_str()) {
                            r.installs += n;
                            r.install_failures += n;
                        }
                    }
                    What::Ttft { target } | What::Tpot { target } => {
                        let r = fresh.entry(rollup_key(target)).or_default();
                        let h =
                            if metric == edgefleet_protocol::telemetry::LLM_TTFT { &mut r.ttft } else { &mut r.tpot };
                        for (b, v) in h.iter_mut().zip(&delta[2..]) {
                            *b += v.round() as u64;
                        }
                    }
                    What::Tokens { target, output } => {
                        let n = delta[0].round() as u64;
                        let r = fresh.entry(rollup_key(target)).or_default();
                        if output { r.tokens_out += n } else { r.tokens_in += n }
                    }
                    What::Routed { target, cloud, reason } => {
                        let n = delta[0].round() as u64;
                        let r = fresh.entry(rollup_key(target)).or_default();
                        r.route[reason] += n;
                        if cloud {
                            r.route_cloud += n;
                        }
                    }
                    What::CloudDuration { target } => {
                        let r = fresh.entry(rollup_key(target)).or_default();
                        for (b, v) in r.cloud.iter_mut().zip(&delta[2..]) {
                            *b += v.round() as u64;
                        }
                    }
                    What::CloudErrors { target } => {
                        fresh.entry(rollup_key(target)).or_default().cloud_errors += delta[0].round() as u64
                    }
                    What::CloudBytes { target } => {
                        fresh.entry(rollup_key(target)).or_default().cloud_bytes += delta[0].round() as u64
                    }
                    What::Energy => energy += delta[0],
                    What::Power | What::Memory => {}
                }
            }
            let total: u64 = fresh.values().map(|r| r.ok + r.errors).sum();
            if energy > 0.0 && total > 0 {
                for r in fresh.values_mut() {
                    let n = r.ok + r.errors;
                    r.energy_j += energy * n as f64 / total as f64;
                    r.energy_inferences += n;
                    if n > 0 {
                        r.energy_tokens += r.tokens_out;
                    }
                }
            }
            // An unchanged counter (an idle device, installs long done) is no news: no row for it.
            fresh.retain(|_, r| !r.is_empty());
            for r in fresh.values_mut() {
                r.class.clone_from(&class);
            }
            for (k, r) in &fresh {
                shard.pending.entry(k.clone()).or_default().add(r);
            }
            shard.dirty.insert(d.clone());
        }
        self.add_to_fleet(&fresh, now_ms);
        let c = &self.counters;
        c.exports.fetch_add(1, Ordering::Relaxed);
        c.points_accepted.fetch_add(applied.accepted, Ordering::Relaxed);
        c.points_stale.fetch_add(applied.stale, Ordering::Relaxed);
        c.points_ignored.fetch_add(decoded.ignored, Ordering::Relaxed);
        for (r, _) in &applied.refused {
            c.refused[*r as usize].fetch_add(1, Ordering::Relaxed);
        }
        applied
    }

    fn add_to_fleet(&self, fresh: &BTreeMap<RollupKey, Rollup>, now_ms: i64) {
        if fresh.is_empty() {
            return;
        }
        let mut fleet = lock(&self.fleet);
        let w = self.settings.window_ms.max(1);
        let window = now_ms - now_ms.rem_euclid(w);
        if fleet.recent.back().is_none_or(|(start, _)| *start != window) {
            fleet.recent.push_back((window, BTreeMap::new()));
        }
        let horizon = now_ms - self.settings.recent_ms;
        while fleet.recent.front().is_some_and(|(start, _)| start + w < horizon) {
            fleet.recent.pop_front();
        }
        for (k, r) in fresh {
            let key = (k.target.model.clone(), k.target.release, r.class.clone());
            fleet.totals.entry(key.clone()).or_default().add(r);
            if let Some((_, m)) = fleet.recent.back_mut() {
                m.entry(key).or_default().add(r);
            }
        }
    }

    /// Fleet totals since the server started, and summed over the recent windows.
    pub fn fleet(&self, now_ms: i64) -> (BTreeMap<FleetKey, FleetTotals>, BTreeMap<FleetKey, FleetTotals>) {
        let fleet = lock(&self.fleet);
        let horizon = now_ms - self.settings.recent_ms;
        let mut recent: BTreeMap<FleetKey, FleetTotals> = BTreeMap::new();
        for (_, m) in fleet.recent.iter().filter(|(start, _)| start + self.settings.window_ms >= horizon) {
            for (k, t) in m {
                recent.entry(k.clone()).or_default().add(t);
            }
        }
        (fleet.totals.clone(), recent)
    }

    /// Takes what is pending for the store: rollup deltas, and the series of the devices they came from.
    pub fn take(&self) -> Batch {
        let mut batch = Batch::default();
        for s in &self.shards {
            let mut shard = lock(s);
            batch.rollups.extend(shard.pending.drain());
            let dirty: Vec<DeviceId> = shard.dirty.drain().collect();
            for d in dirty {
                if let Some(live) = shard.devices.get(&d) {
                    batch.series.push((d, serde_json::to_string(&live.series).unwrap_or_else(|_| "{}".into())));
                }
            }
        }
        batch
    }

    /// Puts a batch back after the store refused it; the next flush writes it with whatever came since.
    pub fn restore(&self, batch: Batch) {
        self.counters.flushes_failed.fetch_add(1, Ordering::Relaxed);
        for (k, r) in batch.rollups {
            lock(self.shard(&k.device)).pending.entry(k).or_default().add(&r);
        }
        for (d, _) in batch.series {
            lock(self.shard(&d)).dirty.insert(d);
        }
    }
}

/// Writes what is pending; on failure puts it back for the next try. Answers whether it was written.
pub async fn flush(state: &AppState) -> bool {
    let batch = state.ingest.take();
    if batch.rollups.is_empty() && batch.series.is_empty() {
        return true;
    }
    match state.store.write_telemetry(&batch, now_ms()).await {
        Ok(()) => {
            state.ingest.evict(state.config.device_cache_entries as usize);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, rollups = batch.rollups.len(), "writing telemetry failed; will retry");
            state.ingest.restore(batch);
            false
        }
    }
}

/// Flushes every `telemetry_flush_ms`; every ten minutes drops rollups, device events and audit entries past
/// their retention.
pub async fn background(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_millis(state.config.telemetry_flush_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_retention = 0;
    loop {
        tick.tick().await;
        flush(&state).await;
        let now = now_ms();
        if now >= next_retention {
            next_retention = now + 600_000;
            let keep_ms = (state.config.telemetry_retention_hours as i64).saturating_mul(3_600_000);
            match state.store.delete_rollups_before(now - keep_ms).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rollups = n, "dropped rollups past their retention"),
                Err(e) => tracing::warn!(error = %e, "dropping old rollups failed"),
            }
            let days = |d: u64| (d as i64).saturating_mul(86_400_000);
            let (events, audit) =
                (now - days(state.config.events_retention_days), now - days(state.config.audit_retention_days));
            match state.store.delete_history_before(events, audit).await {
                Ok((0, 0)) => {}
                Ok((e, a)) => tracing::info!(
                    events = e,
                    audit = a,
                    "dropped device events and audit entries past their retention"
                ),
                Err(e) => tracing::warn!(error = %e, "dropping old events and audit entries failed"),
            }
        }
    }
}

/// Makes sure a device's series are in memory: after a restart, or after they left it, read back from the store
/// with the device's enrolled class.
pub async fn ensure_loaded(state: &AppState, d: &DeviceId) -> Result<(), crate::store::StoreError> {
    if state.ingest.is_loaded(d) {
        return Ok(());
    }
    let series: SeriesMap = match state.store.telemetry_series(d).await? {
        Some(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(device = %d, error = %e, "stored telemetry series unreadable; starting afresh");
            SeriesMap::new()
        }),
        None => SeriesMap::new(),
    };
    let class = state.store.device(d).await?.map(|r| r.device_class).unwrap_or_default();
    state.ingest.load(d, series, class);
    Ok(())
}

/// The value below which `q` (0–1) of the observations in `buckets` fall, read by linear interpolation inside
/// the bucket (seconds); `None` without observations. Observations above the last bound read as that bound.
pub fn quantile(buckets: &[u64; NBUCKETS], q: f64) -> Option<f64> {
    use edgefleet_protocol::telemetry::DURATION_BUCKETS as B;
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0.0;
    for (i, &c) in buckets.iter().enumerate() {
        let next = seen + c as f64;
        if c > 0 && next >= rank {
            let lo = if i == 0 { 0.0 } else { B[i - 1] };
            let Some(&hi) = B.get(i) else { return Some(B[B.len() - 1]) };
            return Some(lo + (hi - lo) * ((rank - seen) / c as f64).clamp(0.0, 1.0));
        }
        seen = next;
    }
    Some(B[B.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut b = [0u64; NBUCKETS];
        assert_eq!(quantile(&b, 0.95), None);
        b[6] = 100; // (5 ms, 10 ms]
        let p50 = quantile(&b, 0.5).expect("p50");
        assert!((p50 - 0.0075).abs() < 1e-9, "{p50}");
        b[NBUCKETS - 1] = 100; // above 10 s
        assert_eq!(quantile(&b, 0.99), Some(10.0));
    }
}
