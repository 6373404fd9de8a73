//! The stopwatch of the per-command latency histograms (SPEC 2.5).
//!
//! `Instant::now()` is a vDSO `clock_gettime`, about 40 ns in a virtual
//! machine, and each command took two readings: on a pipelined NSCACHE.GET of
//! about 2 µs that was 4 % of its time. Where the kernel itself keeps time with
//! an invariant time stamp counter (x86-64, `current_clocksource` = `tsc`),
//! the stopwatch reads the TSC instead (about 15 ns) and converts ticks to
//! nanoseconds with a ratio measured against the monotonic clock: at load over
//! one millisecond, then refined on every sweeper tick over the whole time
//! since load. Anywhere else it uses `Instant`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Fraction bits of [`NS_PER_TICK`].
const FRACTION_BITS: u32 = 32;

/// Whether the TSC is read (decided once, at load).
static USE_TSC: AtomicBool = AtomicBool::new(false);

/// Nanoseconds per TSC tick in 32.32 fixed point.
static NS_PER_TICK: AtomicU64 = AtomicU64::new(0);

/// A (monotonic clock, TSC) reading taken at load: the ratio's base.
static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();

/// A started stopwatch.
#[derive(Clone, Copy, Debug)]
pub enum Stopwatch {
    /// TSC reading at start.
    Ticks(u64),
    /// Monotonic clock reading at start.
    Clock(Instant),
}

impl Stopwatch {
    /// Starts a stopwatch.
    #[inline]
    pub fn start() -> Stopwatch {
        if USE_TSC.load(Ordering::Relaxed) {
            Stopwatch::Ticks(tsc::read())
        } else {
            Stopwatch::Clock(Instant::now())
        }
    }

    /// Nanoseconds since [`Stopwatch::start`].
    #[inline]
    pub fn elapsed_ns(&self) -> u64 {
        match *self {
            Stopwatch::Ticks(start) => ticks_to_ns(
                tsc::read().saturating_sub(start),
                NS_PER_TICK.load(Ordering::Relaxed),
            ),
            Stopwatch::Clock(start) => {
                u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
            }
        }
    }
}

/// Converts `ticks` with a 32.32 fixed-point ratio, saturating.
fn ticks_to_ns(ticks: u64, ns_per_tick: u64) -> u64 {
    let ns = (u128::from(ticks) * u128::from(ns_per_tick)) >> FRACTION_BITS;
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The 32.32 ratio of `ns` nanoseconds over `ticks` ticks, if it is sane.
fn ratio(ns: u128, ticks: u64) -> Option<u64> {
    if ticks == 0 || ns == 0 {
        return None;
    }
    let fixed = (ns << FRACTION_BITS) / u128::from(ticks);
    // Between 0.01 and 100 ns per tick: 10 MHz to 100 GHz counters.
    let (low, high) = ((1u128 << FRACTION_BITS) / 100, 100u128 << FRACTION_BITS);
    (low..=high)
        .contains(&fixed)
        .then(|| u64::try_from(fixed).ok())
        .flatten()
}

/// Decides at load whether the TSC is usable and measures its rate; leaves
/// the stopwatch on `Instant` otherwise. Busy-waits about a millisecond.
pub fn init() {
    if !tsc::usable() {
        return;
    }
    let origin = tsc::pair();
    let deadline = origin.0 + Duration::from_millis(1);
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
    let now = tsc::pair();
    let Some(fixed) = ratio(
        now.0.duration_since(origin.0).as_nanos(),
        now.1.saturating_sub(origin.1),
    ) else {
        return;
    };
    if ORIGIN.set(origin).is_err() {
        return;
    }
    NS_PER_TICK.store(fixed, Ordering::Relaxed);
    USE_TSC.store(true, Ordering::Relaxed);
}

/// Refines the TSC rate over the whole time since load (called on the
/// sweeper's timer; the error of the readings shrinks as that time grows).
pub fn recalibrate() {
    let Some(origin) = ORIGIN.get() else {
        return;
    };
    let now = tsc::pair();
    if let Some(fixed) = ratio(
        now.0.duration_since(origin.0).as_nanos(),
        now.1.saturating_sub(origin.1),
    ) {
        NS_PER_TICK.store(fixed, Ordering::Relaxed);
    }
}

#[cfg(target_arch = "x86_64")]
mod tsc {
    use std::time::Instant;

    /// Reads the time stamp counter.
    #[inline]
    pub fn read() -> u64 {
        // SAFETY: RDTSC exists on every x86-64 CPU and has no side effects.
        unsafe { std::arch::x86_64::_rdtsc() }
    }

    /// Whether the TSC runs at a constant rate in every power state (CPUID
    /// 0x80000007, EDX bit 8) and the kernel trusts it as its clock source
    /// (which it does only when the counters of all CPUs are in step).
    pub fn usable() -> bool {
        // The extended leaf is checked to exist first.
        let invariant = std::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0007
            && std::arch::x86_64::__cpuid(0x8000_0007).edx & (1 << 8) != 0;
        invariant
            && std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .is_ok_and(|source| source.trim() == "tsc")
    }

    /// A monotonic clock reading and the TSC at the same moment: of a few
    /// tries, the one whose two TSC readings around the clock are closest.
    pub fn pair() -> (Instant, u64) {
        let mut best: Option<(u64, Instant, u64)> = None;
        for _ in 0..5 {
            let before = read();
            let clock = Instant::now();
            let after = read();
            let spread = after.saturating_sub(before);
            let middle = before + spread / 2;
            if best.is_none_or(|(s, _, _)| spread < s) {
                best = Some((spread, clock, middle));
            }
        }
        match best {
            Some((_, clock, ticks)) => (clock, ticks),
            None => (Instant::now(), read()),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod tsc {
    use std::time::Instant;

    pub fn read() -> u64 {
        0
    }

    pub fn usable() -> bool {
        false
    }

    pub fn pair() -> (Instant, u64) {
        (Instant::now(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_with_the_fixed_point_ratio() {
        let one = 1u64 << FRACTION_BITS;
        assert_eq!(ticks_to_ns(1000, one), 1000);
        assert_eq!(ticks_to_ns(1000, one / 2), 500);
        assert_eq!(ticks_to_ns(3, one / 3 + 1), 1);
        assert_eq!(ticks_to_ns(u64::MAX, 100 * one), u64::MAX, "saturates");
    }

    #[test]
    fn ratios_outside_sane_rates_are_refused() {
        assert_eq!(ratio(1_000_000, 2_000_000), Some(1u64 << 31));
        assert_eq!(ratio(1_000_000, 0), None);
        assert_eq!(ratio(0, 10), None);
        assert_eq!(ratio(1, 1_000_000), None, "a 1 THz counter");
        assert_eq!(ratio(1_000_000, 1), None, "a 1 Hz counter");
    }

    #[test]
    fn the_stopwatch_measures_real_time() {
        init();
        let watch = Stopwatch::start();
        std::thread::sleep(Duration::from_millis(20));
        recalibrate();
        let ns = watch.elapsed_ns();
        assert!(
            (15_000_000..2_000_000_000).contains(&ns),
            "{ns} ns for a 20 ms sleep"
        );
    }
}
