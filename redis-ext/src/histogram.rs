//! Log-bucketed latency histogram in fixed memory (SPEC 2.5: p50, p90, p99, p99.9
//! and max of read and write latency, in µs).
//!
//! [`Histogram::record`] runs once per command on Redis's main thread, so it is a
//! few integer instructions and one array increment: no allocation, no search.
//!
//! # Buckets and error bound
//!
//! Values are nanoseconds. Values below 16 ns have a bucket each. Above, every
//! power of two `[2^e, 2^(e+1))` is split into 8 equal sub-buckets of width
//! `2^(e−3)`, up to `2^40` ns (about 18 minutes); anything larger shares one last
//! bucket. That is 305 `u64` counters (2,440 bytes) whatever the number of
//! recordings.
//!
//! A quantile is the nearest-rank value (the `⌈q·count⌉`-th smallest recording),
//! reported as the upper bound of its bucket, clamped to the exact maximum. So for
//! a true quantile `v` below `2^40` ns the report `r` satisfies
//! `v ≤ r < v · 1.125` (a sub-bucket is at most one eighth of its lower bound):
//! never below, at most 12.5 % above. Quantiles in the last bucket report the
//! maximum. The maximum itself is exact.

use std::fmt;

use cachetx_shared::LatencySummary;

/// log2 of the sub-buckets per power of two.
const SUB_BITS: u32 = 3;
/// Sub-buckets per power of two; 8 keeps the relative error at 12.5 %.
const SUB: usize = 1 << SUB_BITS;
/// Values from `2^LIMIT_EXP` ns on go to the overflow bucket.
const LIMIT_EXP: u32 = 40;
/// The overflow bucket: one group of `SUB` buckets for values below 8, then one per
/// exponent 3..LIMIT_EXP.
const OVERFLOW: usize = (LIMIT_EXP - SUB_BITS + 1) as usize * SUB;
/// All buckets, overflow included.
const BUCKETS: usize = OVERFLOW + 1;

/// Latency histogram; values in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    count: u64,
    max: u64,
}

impl fmt::Debug for Histogram {
    // 305 bucket counts would drown a log line; these two say what matters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: [0; BUCKETS],
            count: 0,
            max: 0,
        }
    }

    /// Records one latency of `nanos` nanoseconds.
    pub fn record(&mut self, nanos: u64) {
        self.counts[bucket(nanos)] += 1;
        self.count += 1;
        self.max = self.max.max(nanos);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest value recorded, exact, in ns; 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `q` quantile in ns (`q` clamped to 0..=1): the upper bound of the bucket
    /// holding the `⌈q·count⌉`-th smallest value, clamped to `max()`; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // NaN, like anything at or below 0, means the minimum.
        let rank = if q.is_nan() || q <= 0.0 {
            1
        } else if q >= 1.0 {
            self.count
        } else {
            let exact = q * self.count as f64;
            // q·count is rounded in binary: 0.07 × 100 gives 7.000000000000001,
            // whose ceiling would skip to the 8th value. Shaving a relative 1e-12
            // undoes that without moving any rank that is meant to round up.
            (exact - exact * 1e-12).ceil() as u64
        };
        self.value_at_rank(rank)
    }

    /// p50, p90, p99, p99.9 and max in µs, rounded up so that any non-empty
    /// recording reports at least 1; all 0 when empty.
    pub fn summary_us(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary::default();
        }
        // Rounding up (and to at least 1) keeps "something was measured" distinct
        // from "nothing was", and keeps the no-underestimate promise in µs.
        let us = |nanos: u64| nanos.div_ceil(1000).max(1);
        LatencySummary {
            p50: us(self.fraction(1, 2)),
            p90: us(self.fraction(9, 10)),
            p99: us(self.fraction(99, 100)),
            p999: us(self.fraction(999, 1000)),
            max: us(self.max),
        }
    }

    /// Forgets every recording.
    pub fn clear(&mut self) {
        *self = Histogram::new();
    }

    /// The `num/den` quantile with an exact integer rank, so the summary's
    /// percentiles do not depend on float rounding.
    fn fraction(&self, num: u64, den: u64) -> u64 {
        let rank = (u128::from(self.count) * u128::from(num)).div_ceil(u128::from(den));
        self.value_at_rank(u64::try_from(rank).unwrap_or(self.count))
    }

    /// Upper bound of the bucket holding the `rank`-th smallest value (1-based,
    /// clamped to 1..=count), clamped to the exact maximum.
    fn value_at_rank(&self, rank: u64) -> u64 {
        let rank = rank.clamp(1, self.count);
        let mut seen = 0u64;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper_bound(index).min(self.max);
            }
        }
        self.max
    }
}

/// The bucket of `nanos`. The group is the position of the highest set bit above
/// the sub-bucket bits (0 for values below 8); the next three bits below the
/// highest one pick the sub-bucket, so values below 16 map to themselves.
#[inline]
fn bucket(nanos: u64) -> usize {
    if nanos >> LIMIT_EXP != 0 {
        return OVERFLOW;
    }
    let group = 64 - (nanos >> SUB_BITS).leading_zeros();
    let shift = group.saturating_sub(1);
    ((group as usize) << SUB_BITS) + ((nanos >> shift) as usize & (SUB - 1))
}

/// The largest value that maps to bucket `index`.
fn upper_bound(index: usize) -> u64 {
    if index >= OVERFLOW {
        return u64::MAX;
    }
    let group = (index >> SUB_BITS) as u32;
    let sub = (index & (SUB - 1)) as u64;
    if group == 0 {
        return sub;
    }
    let shift = group - 1;
    (((SUB as u64 + sub) + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64, for reproducible samples without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// Checks every per-mille quantile against the exact nearest-rank value.
    fn check_quantiles(values: &[u64]) {
        let mut h = Histogram::new();
        for &v in values {
            h.record(v);
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let n = sorted.len() as u64;
        for per_mille in 0..=1000u64 {
            let rank = (n * per_mille).div_ceil(1000).max(1);
            let truth = sorted[rank as usize - 1];
            let got = h.quantile(per_mille as f64 / 1000.0);
            assert!(got >= truth, "q={per_mille}‰: {got} < {truth}");
            assert!(got - truth <= truth / 8, "q={per_mille}‰: {got} vs {truth}");
            assert!(got <= h.max());
        }
        assert_eq!(h.max(), *sorted.last().unwrap());
        assert_eq!(h.count(), n);
    }

    #[test]
    fn buckets_are_contiguous_and_tight() {
        // Every bucket's range starts right after the previous one's, and each is at
        // most an eighth of its lower bound wide.
        let mut lower = 0u64;
        for index in 0..OVERFLOW {
            let upper = upper_bound(index);
            assert_eq!(bucket(lower), index);
            assert_eq!(bucket(upper), index);
            assert!(
                upper - lower <= lower / 8,
                "bucket {index}: {lower}..={upper}"
            );
            lower = upper + 1;
        }
        assert_eq!(lower, 1 << LIMIT_EXP);
        assert_eq!(bucket(lower), OVERFLOW);
        assert_eq!(bucket(u64::MAX), OVERFLOW);
        assert!(std::mem::size_of::<Histogram>() < 3 * 1024);
    }

    #[test]
    fn uniform_quantiles_within_an_eighth() {
        let values: Vec<u64> = (1..=10_000).collect();
        check_quantiles(&values);
    }

    #[test]
    fn bimodal_quantiles_within_an_eighth() {
        let mut rng = Rng(9);
        let values: Vec<u64> = (0..20_000)
            .map(|i| {
                if i % 10 == 0 {
                    1_000_000 + rng.next() % 4_000_000 // slow path: 1–5 ms
                } else {
                    200 + rng.next() % 1_800 // fast path: 0.2–2 µs
                }
            })
            .collect();
        check_quantiles(&values);
    }

    #[test]
    fn p999_ignores_a_single_outlier_in_a_thousand() {
        let mut h = Histogram::new();
        for _ in 0..999 {
            h.record(100);
        }
        h.record(1_000_000_000);
        assert!((100..=112).contains(&h.quantile(0.999)));
        assert_eq!(h.quantile(1.0), 1_000_000_000);
        let s = h.summary_us();
        assert_eq!(
            s,
            LatencySummary {
                p50: 1,
                p90: 1,
                p99: 1,
                p999: 1,
                max: 1_000_000
            }
        );
        // One more outlier makes it the 999th-per-mille value.
        h.record(1_000_000_000);
        assert_eq!(h.summary_us().p999, 1_000_000);
    }

    #[test]
    fn max_is_exact() {
        let mut h = Histogram::new();
        for v in [5, 123_456_789, 77] {
            h.record(v);
        }
        assert_eq!(h.max(), 123_456_789);
        assert_eq!(h.quantile(1.0), 123_456_789);
        assert_eq!(h.summary_us().max, 123_457);
    }

    #[test]
    fn summary_rounds_up_to_whole_microseconds() {
        let mut h = Histogram::new();
        assert_eq!(h.summary_us(), LatencySummary::default());
        h.record(1);
        let one = LatencySummary {
            p50: 1,
            p90: 1,
            p99: 1,
            p999: 1,
            max: 1,
        };
        assert_eq!(h.summary_us(), one);
        h.clear();
        h.record(0);
        assert_eq!(h.summary_us(), one);
        h.record(1_001);
        assert_eq!(h.summary_us().max, 2);
    }

    #[test]
    fn extremes_do_not_panic() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        assert_eq!(h.max(), 0);
        h.record(0);
        h.record(u64::MAX);
        h.record(1 << LIMIT_EXP);
        assert_eq!(h.max(), u64::MAX);
        assert_eq!(h.quantile(0.0), 0);
        assert_eq!(h.quantile(f64::NAN), 0);
        assert_eq!(h.quantile(-1.0), 0);
        assert_eq!(h.quantile(2.0), u64::MAX);
        assert_eq!(h.quantile(0.5), u64::MAX);
        let s = h.summary_us();
        assert_eq!(s.max, u64::MAX.div_ceil(1000));
        assert_eq!(s.p50, s.max);
    }

    #[test]
    fn clear_resets() {
        let mut h = Histogram::new();
        h.record(42);
        h.record(4_200);
        h.clear();
        assert_eq!(h.count(), 0);
        assert_eq!(h.max(), 0);
        assert_eq!(h.quantile(0.99), 0);
        assert_eq!(h.summary_us(), LatencySummary::default());
        h.record(7);
        assert_eq!(h.quantile(0.5), 7);
    }

    #[test]
    #[ignore = "timing, run with --release -- --ignored --nocapture"]
    fn bench_record() {
        use std::hint::black_box;
        use std::time::Instant;
        const ROUNDS: usize = 2_000;
        let mut rng = Rng(1);
        // Latency-like values over many buckets, few enough to stay in L1 so the
        // loop times the histogram, not memory.
        let values: Vec<u64> = (0..4096)
            .map(|_| rng.next() >> (20 + rng.next() % 44))
            .collect();
        let mut h = Histogram::new();
        let mut rounds: Vec<f64> = Vec::new();
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for &v in &values {
                h.record(black_box(v));
            }
            rounds.push(start.elapsed().as_nanos() as f64 / values.len() as f64);
        }
        black_box(&h);
        // The fastest and the median round, as the machine may be shared.
        rounds.sort_by(f64::total_cmp);
        let (min, median) = (rounds[0], rounds[rounds.len() / 2]);
        println!("histogram record: min {min:.2} ns, median {median:.2} ns");
    }
}
