//! Latency statistics shared by the benchmarks.

/// Latency statistics of a set of samples, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub count: usize,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Stats {
    /// Statistics of `samples` (sorted in place). `None` when empty.
    pub fn of(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        Some(Self {
            count: samples.len(),
            median: median_sorted(samples),
            p90: percentile_sorted(samples, 0.90),
            p99: percentile_sorted(samples, 0.99),
            mean: sum as f64 / samples.len() as f64,
        })
    }
}

/// The median of sorted samples (mean of the two middle ones for an even count).
pub fn median_sorted(sorted: &[u64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2] as f64
    } else {
        (sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0
    }
}

/// The nearest-rank percentile `p` (0..=1) of sorted samples.
pub fn percentile_sorted(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}
