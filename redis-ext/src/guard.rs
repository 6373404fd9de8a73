//! Keeping panics out of Redis: every callback Redis calls through C runs
//! inside [`catch`].
//!
//! An unwind that reaches an `extern "C"` frame aborts redis-server, taking
//! every client and the unsaved dataset with it. A callback that panics
//! instead returns a safe default its C contract allows (null, 0, an error
//! status or nothing); the panic hook set at load has already written the
//! panic message to the Redis log, and this adds which callback it was.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, returning `fallback` (and logging) if it panics.
pub fn catch<T>(callback: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_with(callback, fallback, f, crate::log::warning)
}

/// [`catch`] with the log line going to `report` (unit tests run without Redis).
pub fn catch_with<T>(
    callback: &str,
    fallback: T,
    f: impl FnOnce() -> T,
    report: impl FnOnce(&str),
) -> T {
    // AssertUnwindSafe: the callbacks share only atomics and poison-tolerant
    // locks, which stay usable after a panic.
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(_) => {
            let message =
                format!("nscache: panic in the {callback} callback; it returned a safe default");
            // The log itself must not unwind into C either.
            let _ = catch_unwind(AssertUnwindSafe(|| report(&message)));
            fallback
        }
    }
}

/// Test builds only (cargo feature `fault-injection`, never enabled by the
/// release build): panics in `callback` when an entry's value is
/// `nscache-fault:<callback>`, so integration tests can prove the guards hold.
#[cfg(feature = "fault-injection")]
pub fn inject_fault(callback: &str, value: &[u8]) {
    if value.strip_prefix(b"nscache-fault:") == Some(callback.as_bytes()) {
        panic!("nscache: injected fault in {callback}");
    }
}

/// Without the `fault-injection` feature: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn inject_fault(_callback: &str, _value: &[u8]) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_the_fallback_and_is_reported() {
        let mut reported = String::new();
        let got = catch_with(
            "rdb_load",
            -1,
            || -> i32 { panic!("boom") },
            |m| reported = m.to_string(),
        );
        assert_eq!(got, -1);
        assert!(reported.contains("rdb_load"), "{reported}");
    }

    #[test]
    fn a_normal_return_passes_through_unreported() {
        let mut reported = false;
        assert_eq!(catch_with("free", 0, || 7, |_| reported = true), 7);
        assert!(!reported);
    }

    #[test]
    fn a_panicking_reporter_does_not_escape() {
        let () = catch_with("digest", (), || panic!("first"), |_| panic!("second"));
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn faults_fire_only_for_their_callback() {
        inject_fault("free", b"nscache-fault:digest");
        assert!(catch_unwind(|| inject_fault("digest", b"nscache-fault:digest")).is_err());
    }
}
