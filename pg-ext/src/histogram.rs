//! Log-bucketed latency histograms (SPEC 3.4): the bucket arithmetic and the
//! percentiles, over plain counts. The shared-memory counters live in `metrics_store`.
//!
//! Values are microseconds. Below 4 µs every microsecond has its bucket; from there
//! on each power of two is split into [`SUB_BUCKETS`] equal buckets, so a bucket's
//! upper bound is at most 25% above its lower bound (a percentile read from the
//! buckets is within 25% of the true value, and never below it). The last bucket
//! holds everything from 2^[`MAX_EXP`]+1 µs (about 19 hours) up.

/// Buckets per power of two.
pub const SUB_BUCKETS: usize = 4;
/// Exponent of the largest finite bucket's power of two.
pub const MAX_EXP: u32 = 35;
/// Buckets per histogram: 4 exact ones, 4 per octave from 2^2 to 2^MAX_EXP, 1 overflow.
pub const BUCKETS: usize = 4 + (MAX_EXP as usize - 1) * SUB_BUCKETS + 1;

/// The bucket a value (µs) falls in.
pub fn bucket_of(micros: u64) -> usize {
    if micros < 4 {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros();
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = ((micros >> (exp - 2)) & 3) as usize;
    4 + (exp as usize - 2) * SUB_BUCKETS + sub
}

/// The bounds `[lower, upper)` of a bucket in µs; `upper` is `None` for the last one.
pub fn bounds(bucket: usize) -> (u64, Option<u64>) {
    if bucket < 4 {
        return (bucket as u64, Some(bucket as u64 + 1));
    }
    if bucket >= BUCKETS - 1 {
        return (1u64 << (MAX_EXP + 1), None);
    }
    let exp = (bucket - 4) / SUB_BUCKETS + 2;
    let sub = ((bucket - 4) % SUB_BUCKETS) as u64;
    ((4 + sub) << (exp - 2), Some((5 + sub) << (exp - 2)))
}

/// The `q`-quantile (0 < q ≤ 1) of the recorded values, in µs: the upper bound of the
/// bucket holding the value of rank ⌈q·n⌉, capped at `max` (the largest value
/// recorded). `None` when nothing was recorded.
pub fn quantile(counts: &[u64], max: u64, q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (bucket, &n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(match bounds(bucket).1 {
                // Upper bounds are exclusive: the largest value in the bucket is one less.
                Some(upper) => (upper - 1).min(max),
                None => max,
            });
        }
    }
    // Counters read one by one while others record may not add up: the largest value.
    Some(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        assert_eq!(bounds(0), (0, Some(1)));
        for b in 0..BUCKETS - 1 {
            let (lo, hi) = bounds(b);
            let hi = hi.expect("finite bucket");
            assert!(lo < hi, "bucket {b}");
            assert_eq!(
                bounds(b + 1).0,
                hi,
                "bucket {b} ends where {} starts",
                b + 1
            );
            assert_eq!(bucket_of(lo), b);
            assert_eq!(bucket_of(hi - 1), b);
            // The relative width stays at or under 25% past the exact buckets.
            if lo >= 4 {
                assert!((hi - lo) * 4 <= lo, "bucket {b}: [{lo}, {hi})");
            }
        }
        assert_eq!(bounds(BUCKETS - 1).1, None);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn two_hundred_milliseconds_land_in_the_bucket_that_contains_them() {
        let b = bucket_of(200_000);
        let (lo, hi) = bounds(b);
        assert!(lo <= 200_000 && 200_000 < hi.unwrap(), "[{lo}, {hi:?})");
        assert_eq!((lo, hi), (196_608, Some(229_376)));
    }

    #[test]
    fn quantiles_read_the_right_bucket() {
        let mut counts = [0u64; BUCKETS];
        assert_eq!(quantile(&counts, 0, 0.5), None);
        // 90 fast (10 µs), 9 at 1 ms, 1 at 1 s.
        counts[bucket_of(10)] += 90;
        counts[bucket_of(1_000)] += 9;
        counts[bucket_of(1_000_000)] += 1;
        let max = 1_000_000;
        let p50 = quantile(&counts, max, 0.5).unwrap();
        assert!((10..=12).contains(&p50), "{p50}");
        let p90 = quantile(&counts, max, 0.9).unwrap();
        assert!((10..=12).contains(&p90), "{p90}");
        let p99 = quantile(&counts, max, 0.99).unwrap();
        assert!((1_000..=1_250).contains(&p99), "{p99}");
        assert_eq!(quantile(&counts, max, 0.999), Some(max));
        assert_eq!(quantile(&counts, max, 1.0), Some(max));
    }

    #[test]
    fn the_overflow_bucket_reports_the_max() {
        let mut counts = [0u64; BUCKETS];
        counts[BUCKETS - 1] = 1;
        assert_eq!(quantile(&counts, u64::MAX / 2, 0.5), Some(u64::MAX / 2));
    }
}
