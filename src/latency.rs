//! A latency histogram of plain atomics: one `fetch_add` per bucket hit, no lock, so every
//! room can count on its hot path (the `hsm` session pool, the metadata store, each request)
//! and `api::metrics` renders the snapshots at scrape time. Fixed buckets, the same for every
//! histogram, so dashboards can compare them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in µs (the last bucket, `+Inf`, is implied): from a local
/// software token's tens of µs to a network HSM's or an RSA key pair's seconds.
pub const BOUNDS_US: [u64; 16] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000, 5_000_000, 30_000_000,
];

/// Counts of durations by bucket, their sum and their number.
#[derive(Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); index `BOUNDS_US.len()` is `+Inf`.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

/// What a [`Histogram`] held when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `(upper bound in seconds, count of durations in this bucket)`, per bucket (not
    /// cumulative: the Prometheus encoder sums them), without `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Number of durations (the `+Inf` bucket).
    pub count: u64,
    /// Their sum in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&self, took: Duration) {
        self.observe_us(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// Counts one duration given in µs.
    pub fn observe_us(&self, us: u64) {
        let i = BOUNDS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Number of durations counted so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The counts now (each read on its own: a scrape racing a request may see the request in
    /// the sum and not yet in its bucket, which Prometheus tolerates).
    pub fn snapshot(&self) -> Snapshot {
        let mut count = 0u64;
        let mut buckets = Vec::with_capacity(BOUNDS_US.len());
        for (b, bound) in self.buckets.iter().zip(BOUNDS_US) {
            let n = b.load(Ordering::Relaxed);
            count += n;
            buckets.push((bound as f64 / 1e6, n));
        }
        count += self.buckets[BOUNDS_US.len()].load(Ordering::Relaxed);
        Snapshot {
            buckets,
            count,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_and_big_durations_land_in_inf() {
        let h = Histogram::default();
        h.observe_us(25);
        h.observe_us(26);
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (25e-6, 1), "≤ 25 µs");
        assert_eq!(s.buckets[1], (50e-6, 1));
        assert_eq!(s.buckets[7], (5e-3, 1), "2.5 ms < 3 ms ≤ 5 ms");
        assert_eq!(
            s.buckets.iter().map(|b| b.1).sum::<u64>(),
            3,
            "60 s only in +Inf"
        );
        assert!((s.sum_seconds - 60.003051).abs() < 1e-9);
        assert_eq!(h.count(), 4);
    }
}
