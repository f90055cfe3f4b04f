//! Token buckets per caller (a device, or a source address): `per_sec` requests a second with a burst of
//! `burst`, for the routes a device calls on its own (check-ins, events) and for enrollment. Bounded in memory: a bucket that has refilled to its burst is the same as
//! no bucket, so when a shard grows past its cap those are dropped; what remains are devices that called within
//! the last `burst / per_sec` seconds.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use edgefleet_protocol::DeviceId;

const SHARDS: usize = 16;
/// Buckets one shard keeps before it drops the full ones.
const SHARD_CAP: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

#[derive(Debug)]
pub struct Limiter<K = DeviceId> {
    per_sec: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<K, Bucket>>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            per_sec: per_sec.max(1e-6),
            burst: burst.max(1.0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, d: &K) -> &Mutex<HashMap<K, Bucket>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        d.hash(&mut h);
        &self.shards[h.finish() as usize % SHARDS]
    }

    /// Takes one token for `d` at `now_ms`; `Err(seconds)` to wait when there is none.
    pub fn admit(&self, d: &K, now_ms: i64) -> Result<(), u64> {
        let mut shard = self.shard(d).lock().unwrap_or_else(|p| p.into_inner());
        let (per_sec, burst) = (self.per_sec, self.burst);
        let refill = |b: &mut Bucket| {
            b.tokens = (b.tokens + (now_ms - b.at_ms).max(0) as f64 / 1000.0 * per_sec).min(burst);
            b.at_ms = now_ms.max(b.at_ms);
        };
        if shard.len() >= SHARD_CAP && !shard.contains_key(d) {
            shard.retain(|_, b| {
                refill(b);
                b.tokens < burst
            });
        }
        let b = shard.entry(d.clone()).or_insert(Bucket { tokens: burst, at_ms: now_ms });
        refill(b);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }

    /// Buckets held (for tests and `/metrics`).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_full_buckets_are_dropped_past_the_cap() {
        let l: Limiter = Limiter::new(2.0, 3.0);
        let d: DeviceId = "dev-1".parse().expect("id");
        for _ in 0..3 {
            assert!(l.admit(&d, 0).is_ok());
        }
        assert_eq!(l.admit(&d, 0), Err(1), "the burst is spent");
        assert!(l.admit(&d, 500).is_ok(), "half a second at 2/s is one more");
        assert!(l.admit(&d, 500).is_err());
        // Another device is not affected.
        assert!(l.admit(&"dev-2".parse().expect("id"), 500).is_ok());
        // Many devices, each calling once, long ago: past the cap, their full buckets are dropped.
        let many: Limiter = Limiter::new(1.0, 1.0);
        for i in 0..(SHARDS * SHARD_CAP + 1000) {
            let _ = many.admit(&format!("d-{i}").parse().expect("id"), i as i64 * 10_000);
        }
        assert!(many.len() <= SHARDS * SHARD_CAP, "{}", many.len());
    }
}
