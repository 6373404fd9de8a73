//! Shared state of `txevents.notify = coalesced` (SPEC 3.2), plain Rust over atomics:
//! one [`WorkerEntry`] per database that uses the mode, telling committing backends
//! whether that database's notify worker runs (and which latch wakes it) or must be
//! launched; and the list of such databases kept on disk, so that the workers are
//! started again after a server restart.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};

/// Databases that can use the coalesced mode at the same time.
pub const MAX_DATABASES: usize = 64;
/// A launch not followed by a running worker within this time (µs) may be retried.
pub const LAUNCH_GRACE_MICROS: i64 = 10_000_000;

/// One database's notify worker.
#[repr(C)]
pub struct WorkerEntry {
    /// Database OID + 1 (see `oid_slots`).
    key: AtomicU64,
    /// Process id of the running worker, 0 when none.
    pid: AtomicI32,
    /// Address of the running worker's latch (in shared memory), 0 when none.
    latch: AtomicUsize,
    /// When a backend last asked the postmaster for a worker (Postgres timestamp).
    launched_at: AtomicI64,
    /// DROP DATABASE is under way: the worker must exit for good, not be restarted.
    dropping: AtomicBool,
}

/// The shared area: a lock for the on-disk list, then the entries.
#[repr(C)]
struct Area {
    file_lock: AtomicU64,
    entries: [WorkerEntry; MAX_DATABASES],
}

/// Bytes of shared memory for the area.
pub const fn size() -> usize {
    std::mem::size_of::<Area>()
}

/// The entries, over shared (or, in tests, heap) memory.
#[derive(Clone, Copy)]
pub struct Registry<'a> {
    area: &'a Area,
}

/// Holds the on-disk list's lock until dropped.
pub struct FileGuard<'a>(&'a AtomicU64);

impl Drop for FileGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

impl<'a> Registry<'a> {
    /// A registry over `size()` bytes at `base`.
    ///
    /// # Safety
    /// `base` must be valid for `size()` bytes for `'a`, aligned for `u64`, and hold
    /// zeroes or entries written by this code.
    pub unsafe fn from_raw(base: *mut u8) -> Registry<'a> {
        // SAFETY: per the contract; all fields are atomics, zero is their empty state.
        Registry {
            area: unsafe { &*base.cast::<Area>() },
        }
    }

    /// The entry of database `oid`, claimed if need be; `None` when all are taken.
    pub fn entry(&self, oid: u32) -> Option<&'a WorkerEntry> {
        crate::oid_slots::claim(&self.area.entries, |e| &e.key, oid)
    }

    /// Takes the on-disk list's lock (held for a file read and write: it sleeps a
    /// millisecond at a time while another process holds it).
    pub fn lock_file(&self) -> FileGuard<'a> {
        let lock = &self.area.file_lock;
        while lock
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        FileGuard(lock)
    }
}

impl WorkerEntry {
    /// The running worker's latch address, if a worker runs.
    pub fn latch(&self) -> Option<usize> {
        match self.latch.load(Ordering::Acquire) {
            0 => None,
            l => Some(l),
        }
    }

    /// Whether the caller should ask for a worker now: none runs and no launch is under
    /// way (or the last one is older than [`LAUNCH_GRACE_MICROS`] without a worker to
    /// show for it). Exactly one of concurrent callers gets `true`.
    pub fn should_launch(&self, now: i64) -> bool {
        if self.pid.load(Ordering::Acquire) != 0 {
            return false;
        }
        let last = self.launched_at.load(Ordering::Acquire);
        if last != 0 && now.saturating_sub(last) < LAUNCH_GRACE_MICROS {
            return false;
        }
        self.launched_at
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A started worker takes the entry; `false` when another worker holds it (the
    /// caller then exits: one worker per database).
    pub fn claim(&self, pid: i32, latch: usize) -> bool {
        if self
            .pid
            .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.dropping.store(false, Ordering::Release);
        self.latch.store(latch, Ordering::Release);
        self.launched_at.store(0, Ordering::Release);
        true
    }

    /// The exiting worker `pid` gives the entry up.
    pub fn release(&self, pid: i32) {
        if self.pid.load(Ordering::Acquire) == pid {
            self.latch.store(0, Ordering::Release);
            self.pid.store(0, Ordering::Release);
        }
    }

    /// Marks the database as being dropped (its worker exits for good).
    pub fn set_dropping(&self) {
        self.dropping.store(true, Ordering::Release);
    }

    /// Whether the database is being dropped.
    pub fn dropping(&self) -> bool {
        self.dropping.load(Ordering::Acquire)
    }
}

/// The database OIDs of the on-disk list (one decimal OID per line; anything else is
/// skipped), without duplicates, in order.
pub fn parse_oids(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for oid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if oid != 0 && !out.contains(&oid) {
            out.push(oid);
        }
    }
    out
}

/// The on-disk list's text for `oids`.
pub fn format_oids(oids: &[u32]) -> String {
    oids.iter().map(|o| format!("{o}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area() -> Vec<u64> {
        vec![0u64; size().div_ceil(8)]
    }

    #[test]
    fn one_launch_until_a_worker_runs_or_the_grace_ends() {
        let mut mem = area();
        // SAFETY: zeroed, aligned, outlives the registry.
        let r = unsafe { Registry::from_raw(mem.as_mut_ptr().cast()) };
        let e = r.entry(5).unwrap();
        assert!(e.latch().is_none());
        assert!(e.should_launch(1_000));
        assert!(!e.should_launch(2_000), "a launch is under way");
        assert!(
            e.should_launch(1_000 + LAUNCH_GRACE_MICROS),
            "it never showed up"
        );
        assert!(e.claim(42, 0xdead));
        assert_eq!(e.latch(), Some(0xdead));
        assert!(!e.should_launch(i64::MAX), "a worker runs");
        assert!(!e.claim(43, 0xbeef), "one worker per database");
        e.release(43);
        assert!(!e.claim(45, 2), "only the holder releases");
        e.set_dropping();
        assert!(e.dropping());
        e.release(42);
        assert!(e.latch().is_none());
        assert!(e.should_launch(5));
        assert!(e.claim(44, 1));
        assert!(
            !e.dropping(),
            "a new worker clears a drop that did not happen"
        );
        let guard = r.lock_file();
        let other = std::thread::scope(|s| {
            let t = s.spawn(|| {
                let _g = r.lock_file();
                "second"
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!t.is_finished(), "the lock is held");
            drop(guard);
            t.join().unwrap()
        });
        assert_eq!(other, "second");
    }

    #[test]
    fn the_database_list_round_trips_and_skips_junk() {
        assert_eq!(
            parse_oids("16384\n\n16385\nx\n16384\n0\n"),
            vec![16384, 16385]
        );
        assert_eq!(parse_oids(&format_oids(&[1, 2, 3])), vec![1, 2, 3]);
        assert_eq!(format_oids(&[]), "");
    }
}
