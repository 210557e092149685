//! A lock-free latency histogram in microseconds with about 3 % resolution, cheap enough to be
//! recorded into by thousands of socket tasks at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Values below this are exact; above it each power of two is split into `SUB_BUCKETS` buckets.
const LINEAR_LIMIT: u64 = 64;
const SUB_BUCKETS: u64 = 32;
/// Enough powers of two to hold any duration up to about 2^41 µs (25 days).
const BUCKET_COUNT: usize = (LINEAR_LIMIT + 36 * SUB_BUCKETS) as usize;

pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKET_COUNT).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros < LINEAR_LIMIT {
        return micros as usize;
    }
    let exponent = 63 - u64::from(micros.leading_zeros());
    let sub = (micros >> (exponent - 5)) - SUB_BUCKETS;
    let index = LINEAR_LIMIT + (exponent - 6) * SUB_BUCKETS + sub;
    (index as usize).min(BUCKET_COUNT - 1)
}

/// The midpoint of a bucket, in microseconds.
fn value_of(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < LINEAR_LIMIT {
        return bucket;
    }
    let exponent = (bucket - LINEAR_LIMIT) / SUB_BUCKETS + 6;
    let sub = (bucket - LINEAR_LIMIT) % SUB_BUCKETS;
    let low = (SUB_BUCKETS + sub) << (exponent - 5);
    low + (1u64 << (exponent - 5)) / 2
}

impl Histogram {
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds every sample of `other` to this histogram.
    pub fn absorb(&self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter().zip(other.buckets.iter()) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }

    /// The value below which `quantile` (0–1) of the samples fall; `None` when empty.
    pub fn quantile(&self, quantile: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(value_of(bucket)));
            }
        }
        None
    }

    /// "p50 / p99 / max" in milliseconds, or "none" without samples.
    pub fn summary_ms(&self) -> String {
        match (self.quantile(0.5), self.quantile(0.99), self.quantile(1.0)) {
            (Some(p50), Some(p99), Some(max)) => {
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    millis(p50),
                    millis(p99),
                    millis(max)
                )
            }
            _ => "none".into(),
        }
    }
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut previous = 0;
        for micros in [0u64, 1, 63, 64, 65, 100, 1_000, 12_345, 250_000, 10_000_000] {
            let bucket = bucket_of(micros);
            assert!(bucket >= previous);
            previous = bucket;
            let value = value_of(bucket) as f64;
            assert!(
                (value - micros as f64).abs() <= micros as f64 * 0.04 + 1.0,
                "{micros} -> {value}"
            );
        }
    }

    #[test]
    fn quantiles() {
        let histogram = Histogram::default();
        for millis in 1..=100 {
            histogram.record(Duration::from_millis(millis));
        }
        let p99 = histogram.quantile(0.99).unwrap().as_millis();
        assert!((97..=101).contains(&p99), "{p99}");
        assert_eq!(histogram.count(), 100);
    }
}
