//! A release's health as the daemon sees it: requests answered and failed, and a latency histogram, kept with
//! atomics on the request path; [`Window`] is a snapshot of them, and the difference of two snapshots is what
//! happened in between. The health watch after a swap compares the new release's window with the previous
//! release's ([`verdict`], pure).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket `i` holds durations up to `BASE_US * 2^(i/4)` microseconds: 10 µs to about 10 min in steps of 19 %.
const BASE_US: f64 = 10.0;
const PER_OCTAVE: f64 = 4.0;
pub const BUCKETS: usize = 104;

fn bucket_of(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= BASE_US {
        return 0;
    }
    (((us / BASE_US).log2() * PER_OCTAVE).ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`.
pub fn bucket_bound(i: usize) -> Duration {
    Duration::from_secs_f64(BASE_US * 2f64.powf(i as f64 / PER_OCTAVE) / 1e6)
}

/// Live counters of one loaded release.
#[derive(Debug)]
pub struct Health {
    ok: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for Health {
    fn default() -> Self {
        Self { ok: AtomicU64::new(0), errors: AtomicU64::new(0), latency: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl Health {
    /// Records one request: its outcome, and for an answered one how long it took.
    pub fn record(&self, ok: bool, took: Duration) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.latency[bucket_of(took)].fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Window {
        Window {
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: self.latency.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// Counts over some span of a release's life.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    pub ok: u64,
    pub errors: u64,
    /// Answered requests per latency bucket (see [`bucket_bound`]).
    pub latency: Vec<u64>,
}

impl Window {
    /// What happened after `earlier` (a snapshot of the same counters).
    pub fn since(&self, earlier: &Window) -> Window {
        Window {
            ok: self.ok.saturating_sub(earlier.ok),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.latency.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The latency under which a fraction `q` of answered requests fell (a bucket's upper bound, so at most
    /// 19 % above the true value); `None` without answered requests.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.latency.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_bound(i));
            }
        }
        Some(bucket_bound(self.latency.len().saturating_sub(1)))
    }
}

/// The health watch after a swap: for `window`, the new release's failed-request ratio must stay at or below
/// `max_error_rate`, and at the end its p95 latency must stay within `max_latency_ratio` of the previous
/// release's. Each judgement needs `min_requests` on every side it compares; with fewer it is not made.
#[derive(Debug, Clone, Copy)]
pub struct Bake {
    pub window: Duration,
    pub max_error_rate: f64,
    pub max_latency_ratio: f64,
    pub min_requests: u64,
}

impl Default for Bake {
    fn default() -> Self {
        Self { window: Duration::from_secs(30), max_error_rate: 0.05, max_latency_ratio: 1.5, min_requests: 20 }
    }
}

/// What the health watch concludes at one look.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing wrong so far; the window is not over.
    Watching,
    /// The window is over and nothing was wrong. `note` says what could not be judged, if anything.
    Healthy { note: Option<String> },
    /// Roll back, for this reason.
    Unhealthy(String),
}

/// Pure: the health watch's verdict after `elapsed` of the bake window, from the new release's window since the
/// swap and the previous release's whole life (`baseline`; `None` on a first install).
pub fn verdict(bake: &Bake, elapsed: Duration, new: &Window, baseline: Option<&Window>) -> Verdict {
    let total = new.ok + new.errors;
    if total >= bake.min_requests && new.errors as f64 > bake.max_error_rate * total as f64 {
        return Verdict::Unhealthy(format!(
            "{} of {total} requests failed during the bake window (at most {:.1} % allowed)",
            new.errors,
            bake.max_error_rate * 100.0
        ));
    }
    if elapsed < bake.window {
        return Verdict::Watching;
    }
    let note = |why: String| Verdict::Healthy { note: Some(why) };
    let Some(old) = baseline else { return note("no previous release to compare latency with".into()) };
    if new.ok < bake.min_requests || old.ok < bake.min_requests {
        return note(format!(
            "latency not compared: {} answered requests on the new release and {} on the previous one, {} needed",
            new.ok, old.ok, bake.min_requests
        ));
    }
    let (Some(p95_new), Some(p95_old)) = (new.quantile(0.95), old.quantile(0.95)) else {
        return note("latency not compared: no answered requests".into());
    };
    let ratio = p95_new.as_secs_f64() / p95_old.as_secs_f64();
    if ratio > bake.max_latency_ratio {
        return Verdict::Unhealthy(format!(
            "p95 latency {:.2} ms against the previous release's {:.2} ms: {ratio:.2}x, at most {:.2}x allowed",
            p95_new.as_secs_f64() * 1e3,
            p95_old.as_secs_f64() * 1e3,
            bake.max_latency_ratio
        ));
    }
    Verdict::Healthy { note: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(ok: u64, errors: u64, each: Duration) -> Window {
        let h = Health::default();
        for _ in 0..ok {
            h.record(true, each);
        }
        for _ in 0..errors {
            h.record(false, each);
        }
        h.snapshot()
    }

    #[test]
    fn quantiles_come_within_a_bucket() {
        let h = Health::default();
        for ms in 1..=100 {
            h.record(true, Duration::from_millis(ms));
        }
        let w = h.snapshot();
        for (q, exact) in [(0.5, 50.0), (0.95, 95.0), (0.99, 99.0), (1.0, 100.0)] {
            let got = w.quantile(q).expect("samples").as_secs_f64() * 1e3;
            assert!(got >= exact && got <= exact * 1.19 + 1e-9, "q{q}: {got} ms for {exact} ms");
        }
        assert_eq!(Window::default().quantile(0.5), None);
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_secs(86_400)), BUCKETS - 1);
    }

    #[test]
    fn windows_subtract() {
        let h = Health::default();
        h.record(true, Duration::from_millis(1));
        let before = h.snapshot();
        h.record(true, Duration::from_millis(30));
        h.record(false, Duration::ZERO);
        let w = h.snapshot().since(&before);
        assert_eq!((w.ok, w.errors), (1, 1));
        assert!(w.quantile(0.5).expect("one") >= Duration::from_millis(30));
    }

    /// One row: what the new release did, what the previous one did, how far into the window, the verdict.
    fn check(new: Window, old: Option<Window>, elapsed_ms: u64, expected: &str) {
        let bake =
            Bake { window: Duration::from_secs(10), max_error_rate: 0.1, max_latency_ratio: 1.5, min_requests: 10 };
        let got = verdict(&bake, Duration::from_millis(elapsed_ms), &new, old.as_ref());
        let got = match &got {
            Verdict::Watching => "watching".to_owned(),
            Verdict::Healthy { note: None } => "healthy".to_owned(),
            Verdict::Healthy { note: Some(n) } => format!("healthy, {n}"),
            Verdict::Unhealthy(why) => format!("unhealthy, {why}"),
        };
        assert!(got.starts_with(expected), "expected {expected:?}, got {got:?}");
    }

    #[test]
    fn bake_verdicts() {
        let ms = Duration::from_millis;
        // Errors are judged at once, once enough requests came.
        check(window(9, 1, ms(5)), None, 100, "watching");
        check(window(8, 2, ms(5)), None, 100, "unhealthy, 2 of 10 requests failed");
        check(window(0, 9, ms(5)), None, 100, "watching");
        check(window(100, 10, ms(5)), Some(window(50, 0, ms(5))), 100, "watching");
        check(window(100, 12, ms(5)), Some(window(50, 0, ms(5))), 100, "unhealthy, 12 of 112");
        // Latency is judged when the window ends, against the previous release.
        check(window(50, 0, ms(30)), Some(window(50, 0, ms(10))), 9_999, "watching");
        check(window(50, 0, ms(30)), Some(window(50, 0, ms(10))), 10_000, "unhealthy, p95 latency");
        check(window(50, 0, ms(14)), Some(window(50, 0, ms(10))), 10_000, "healthy");
        // Faster is fine.
        check(window(50, 0, ms(2)), Some(window(50, 0, ms(10))), 10_000, "healthy");
        // Too few samples on either side: not judged, and said so.
        check(window(9, 0, ms(30)), Some(window(50, 0, ms(10))), 10_000, "healthy, latency not compared: 9");
        check(window(50, 0, ms(30)), Some(window(3, 0, ms(10))), 10_000, "healthy, latency not compared");
        check(window(50, 0, ms(30)), None, 10_000, "healthy, no previous release");
        // No traffic at all: healthy by default, since nothing failed.
        check(Window::default(), Some(Window::default()), 10_000, "healthy, latency not compared");
    }
}
