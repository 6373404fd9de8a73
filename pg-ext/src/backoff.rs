//! Retry delays of `txevents.nack`: exponential backoff with jitter, capped.
//!
//! Plain Rust, unit-tested without a server. Durations are microseconds.

/// The delay before delivery attempt `attempt + 1`, after `attempt` failed (attempt >= 1).
///
/// The ceiling doubles with each attempt, `base * 2^(attempt-1)`, and is capped at
/// `max`; the delay is drawn from `[ceiling/2, ceiling]` ("equal jitter"), so it
/// never shrinks from one attempt to the next while workers retrying the same
/// burst of failures still spread out. `random` is any uniformly distributed value.
pub fn delay_micros(attempt: u32, base: i64, max: i64, random: u64) -> i64 {
    let base = base.max(0);
    let max = max.max(0);
    let shift = attempt.saturating_sub(1).min(62);
    let ceiling = base
        .checked_shl(shift)
        .filter(|c| *c >= base && (*c >> shift) == base);
    let ceiling = ceiling.unwrap_or(i64::MAX).min(max);
    let half = ceiling / 2;
    let spread = (ceiling - half) as u64;
    // spread + 1 cannot overflow: ceiling <= i64::MAX.
    half + (random % (spread + 1)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000;

    #[test]
    fn doubles_within_equal_jitter() {
        for attempt in 1..=5u32 {
            let ceiling = SEC << (attempt - 1);
            assert_eq!(delay_micros(attempt, SEC, 300 * SEC, 0), ceiling / 2);
            assert_eq!(
                delay_micros(attempt, SEC, 300 * SEC, (ceiling - ceiling / 2) as u64),
                ceiling
            );
            for r in [1u64, 7, 12345, u64::MAX] {
                let d = delay_micros(attempt, SEC, 300 * SEC, r);
                assert!(d >= ceiling / 2 && d <= ceiling, "{attempt} {r} {d}");
            }
        }
    }

    #[test]
    fn never_shrinks_from_one_attempt_to_the_next() {
        for r1 in [0u64, 3, 999_999, u64::MAX] {
            for r2 in [0u64, 5, u64::MAX / 3] {
                for a in 1..40u32 {
                    assert!(
                        delay_micros(a + 1, SEC, 300 * SEC, r2)
                            >= delay_micros(a, SEC, 300 * SEC, r1)
                            || delay_micros(a, SEC, 300 * SEC, r1) > 150 * SEC,
                        "attempt {a}"
                    );
                }
            }
        }
    }

    #[test]
    fn capped_at_max_and_saturating() {
        assert_eq!(delay_micros(100, SEC, 300 * SEC, u64::MAX), {
            let half = 150 * SEC;
            half + (u64::MAX % ((300 * SEC - half) as u64 + 1)) as i64
        });
        for a in [20u32, 62, 63, 64, 1000, u32::MAX] {
            let d = delay_micros(a, SEC, 300 * SEC, 42);
            assert!((150 * SEC..=300 * SEC).contains(&d), "{a} {d}");
            let huge = delay_micros(a, i64::MAX / 2, i64::MAX, 0);
            assert!(huge > 0, "{a}");
        }
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(delay_micros(0, SEC, 300 * SEC, 0), SEC / 2);
        assert_eq!(delay_micros(3, 0, 300 * SEC, 99), 0);
        assert_eq!(delay_micros(3, SEC, 0, 99), 0);
        assert_eq!(delay_micros(3, -5, -5, 99), 0);
    }
}
