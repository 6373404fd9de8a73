//! The metrics' shared-memory layout and its lock-free bookkeeping (SPEC 3.4).
//!
//! Plain Rust over atomics, so it is unit-tested on the heap; `metrics` places it in
//! Postgres's shared memory and feeds it. Every field is an atomic whose zero value
//! is the empty state, so zeroed memory is a valid, empty store.
//!
//! - One [`DbSlot`] per database, claimed on first use (`oid_slots`). Slots are never freed: when all are
//!   taken, the transactions of further databases are counted in [`Header::untracked`].
//! - Per slot: counters, two [`Histogram`]s, and up to [`MAX_ERROR_CODES`] distinct
//!   SQLSTATEs ([`ErrorEntry`]), the rest counted in `errors_overflow`.
//! - An error's last message is written under a sequence lock: a writer that finds it
//!   taken skips the message (the count is still exact), and readers retry, so no
//!   process ever waits on another.

use std::sync::atomic::{fence, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::histogram::{self, BUCKETS};

/// Distinct SQLSTATEs kept per database.
pub const MAX_ERROR_CODES: usize = 32;
/// Bytes of an error's last message kept (cut at a character boundary).
pub const MESSAGE_BYTES: usize = 240;

const RELAXED: Ordering = Ordering::Relaxed;

/// Header of the shared area, followed by the slots.
#[repr(C)]
pub struct Header {
    /// Transactions of databases that found every slot taken.
    pub untracked: AtomicU64,
}

/// A latency histogram: per-bucket counts (see `histogram`) and the largest value.
#[repr(C)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    max: AtomicU64,
}

/// One SQLSTATE's tally in one database.
#[repr(C)]
pub struct ErrorEntry {
    /// The packed SQLSTATE (`ErrorData.sqlerrcode`); 0 while the entry is free.
    code: AtomicI32,
    /// Sequence lock of `len` and `message`: odd while a writer is copying.
    seq: AtomicU32,
    count: AtomicU64,
    /// Postgres timestamp (µs since 2000-01-01) of the last occurrence.
    last_at: AtomicI64,
    len: AtomicU32,
    message: [AtomicU8; MESSAGE_BYTES],
}

/// What gets counted per event (SPEC 3.4's "events emitted, published, ...").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventCounter {
    /// Emitted by a committed transaction.
    Emitted = 0,
    /// Notified on the channel.
    Published = 1,
    /// Acked by a consumer group.
    Acked = 2,
    /// Nacked and scheduled for another attempt.
    Retried = 3,
    /// Moved to the dead letters.
    DeadLettered = 4,
    /// Taken back from the dead letters.
    Redriven = 5,
}

/// Number of [`EventCounter`] kinds.
pub const EVENT_COUNTERS: usize = 6;

/// Everything kept for one database.
#[repr(C)]
pub struct DbSlot {
    /// Database OID + 1; 0 while the slot is free.
    key: AtomicU64,
    /// Postgres timestamp of the last reset (0: never reset).
    reset_at: AtomicI64,
    commits: AtomicU64,
    rollbacks: AtomicU64,
    events: [AtomicU64; EVENT_COUNTERS],
    errors_total: AtomicU64,
    errors_overflow: AtomicU64,
    xact: Histogram,
    commit: Histogram,
    errors: [ErrorEntry; MAX_ERROR_CODES],
}

/// Bytes of shared memory for `slots` databases.
pub fn size_for(slots: usize) -> usize {
    std::mem::size_of::<Header>() + slots * std::mem::size_of::<DbSlot>()
}

/// A store over a header and its slots.
#[derive(Clone, Copy)]
pub struct Store<'a> {
    header: &'a Header,
    slots: &'a [DbSlot],
}

impl Histogram {
    fn record(&self, micros: u64) {
        self.counts[histogram::bucket_of(micros)].fetch_add(1, RELAXED);
        self.max.fetch_max(micros, RELAXED);
    }

    fn read(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.counts.iter().map(|c| c.load(RELAXED)).collect(),
            max: self.max.load(RELAXED),
        }
    }

    fn clear(&self) {
        for c in &self.counts {
            c.store(0, RELAXED);
        }
        self.max.store(0, RELAXED);
    }
}

/// A histogram as read at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Count per bucket (see `histogram::bounds`).
    pub counts: Vec<u64>,
    /// Largest recorded value, µs.
    pub max: u64,
}

impl HistogramSnapshot {
    /// The `q`-quantile in µs (see `histogram::quantile`).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        histogram::quantile(&self.counts, self.max, q)
    }
}

/// One SQLSTATE's tally as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorSnapshot {
    /// Packed SQLSTATE.
    pub code: i32,
    /// Occurrences since the last reset.
    pub count: u64,
    /// The last occurrence's message (possibly cut, possibly an earlier one's when
    /// two were written at the same instant).
    pub message: String,
    /// Postgres timestamp of the last occurrence.
    pub last_at: i64,
}

/// One database's metrics as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbSnapshot {
    /// Database OID.
    pub oid: u32,
    /// Last reset (Postgres timestamp), if any.
    pub reset_at: Option<i64>,
    /// Committed transactions.
    pub commits: u64,
    /// Rolled-back transactions.
    pub rollbacks: u64,
    /// Event counters, indexed by [`EventCounter`].
    pub events: [u64; EVENT_COUNTERS],
    /// Errors of every code.
    pub errors_total: u64,
    /// Errors whose code found no free entry.
    pub errors_overflow: u64,
    /// Transaction durations.
    pub xact: HistogramSnapshot,
    /// Commit durations.
    pub commit: HistogramSnapshot,
    /// Per-SQLSTATE tallies.
    pub errors: Vec<ErrorSnapshot>,
}

impl ErrorEntry {
    fn write_message(&self, message: &[u8]) {
        let seq = self.seq.load(RELAXED);
        if seq % 2 == 1
            || self
                .seq
                .compare_exchange(seq, seq + 1, Ordering::Acquire, RELAXED)
                .is_err()
        {
            // Another process is writing this entry's message right now: its message
            // is as recent as ours.
            return;
        }
        let len = cut(message, MESSAGE_BYTES);
        for (slot, &b) in self.message.iter().zip(&message[..len]) {
            slot.store(b, RELAXED);
        }
        self.len.store(len as u32, RELAXED);
        self.seq.store(seq + 2, Ordering::Release);
    }

    fn read_message(&self) -> String {
        let mut bytes = Vec::with_capacity(MESSAGE_BYTES);
        for _ in 0..1000 {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            bytes.clear();
            let len = (self.len.load(RELAXED) as usize).min(MESSAGE_BYTES);
            bytes.extend(self.message[..len].iter().map(|b| b.load(RELAXED)));
            fence(Ordering::Acquire);
            if self.seq.load(RELAXED) == before {
                break;
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The length of the longest prefix of `message` of at most `limit` bytes that does not
/// end inside a UTF-8 character.
fn cut(message: &[u8], limit: usize) -> usize {
    if message.len() <= limit {
        return message.len();
    }
    let mut len = limit;
    // Continuation bytes are 0b10xx_xxxx: back up to the start of the cut character.
    while len > 0 && message[len] & 0xC0 == 0x80 {
        len -= 1;
    }
    len
}

impl DbSlot {
    /// Records the end of a transaction: its duration and, for a commit, the commit's.
    pub fn record_xact(&self, committed: bool, xact_micros: u64, commit_micros: Option<u64>) {
        if committed {
            self.commits.fetch_add(1, RELAXED);
        } else {
            self.rollbacks.fetch_add(1, RELAXED);
        }
        self.xact.record(xact_micros);
        if let Some(micros) = commit_micros {
            self.commit.record(micros);
        }
    }

    /// Adds `n` to an event counter.
    pub fn add_events(&self, counter: EventCounter, n: u64) {
        self.events[counter as usize].fetch_add(n, RELAXED);
    }

    /// Counts one error of SQLSTATE `code` (packed) with its message, at `now`.
    pub fn record_error(&self, code: i32, message: &[u8], now: i64) {
        self.errors_total.fetch_add(1, RELAXED);
        for entry in &self.errors {
            let current = entry.code.load(Ordering::Acquire);
            let mine = current == code
                || (current == 0
                    && match entry.code.compare_exchange(
                        0,
                        code,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => true,
                        Err(other) => other == code,
                    });
            if mine {
                entry.count.fetch_add(1, RELAXED);
                entry.last_at.fetch_max(now, RELAXED);
                entry.write_message(message);
                return;
            }
        }
        self.errors_overflow.fetch_add(1, RELAXED);
    }

    /// Zeroes everything but the slot's database, and notes when.
    pub fn reset(&self, now: i64) {
        self.commits.store(0, RELAXED);
        self.rollbacks.store(0, RELAXED);
        for e in &self.events {
            e.store(0, RELAXED);
        }
        self.errors_total.store(0, RELAXED);
        self.errors_overflow.store(0, RELAXED);
        self.xact.clear();
        self.commit.clear();
        for entry in &self.errors {
            entry.count.store(0, RELAXED);
            entry.last_at.store(0, RELAXED);
            entry.code.store(0, Ordering::Release);
        }
        self.reset_at.store(now, RELAXED);
    }

    fn read(&self, oid: u32) -> DbSnapshot {
        let mut events = [0; EVENT_COUNTERS];
        for (out, e) in events.iter_mut().zip(&self.events) {
            *out = e.load(RELAXED);
        }
        let errors = self
            .errors
            .iter()
            .filter_map(|entry| {
                let code = entry.code.load(Ordering::Acquire);
                let count = entry.count.load(RELAXED);
                (code != 0 && count > 0).then(|| ErrorSnapshot {
                    code,
                    count,
                    message: entry.read_message(),
                    last_at: entry.last_at.load(RELAXED),
                })
            })
            .collect();
        let reset_at = self.reset_at.load(RELAXED);
        DbSnapshot {
            oid,
            reset_at: (reset_at != 0).then_some(reset_at),
            commits: self.commits.load(RELAXED),
            rollbacks: self.rollbacks.load(RELAXED),
            events,
            errors_total: self.errors_total.load(RELAXED),
            errors_overflow: self.errors_overflow.load(RELAXED),
            xact: self.xact.read(),
            commit: self.commit.read(),
            errors,
        }
    }
}

impl<'a> Store<'a> {
    /// A store over `size_for(slots)` bytes at `base`, zeroed or written by this code.
    ///
    /// # Safety
    /// `base` must be valid for `size_for(slots)` bytes for `'a`, aligned for `u64`, and
    /// hold zeroes or a store of the same `slots` (all fields are atomics).
    pub unsafe fn from_raw(base: *mut u8, slots: usize) -> Store<'a> {
        // SAFETY: per the contract; the slots follow the header, whose size is a
        // multiple of 8 (one u64).
        unsafe {
            let header = &*base.cast::<Header>();
            let first = base.add(std::mem::size_of::<Header>()).cast::<DbSlot>();
            Store {
                header,
                slots: std::slice::from_raw_parts(first, slots),
            }
        }
    }

    /// The slot of database `oid`, claimed if it has none yet; `None` when every slot
    /// is taken by other databases (the caller counts that in `untracked`).
    pub fn slot(&self, oid: u32) -> Option<&'a DbSlot> {
        crate::oid_slots::claim(self.slots, |s| &s.key, oid)
    }

    /// Counts a transaction of a database that has no slot.
    pub fn count_untracked(&self) {
        self.header.untracked.fetch_add(1, RELAXED);
    }

    /// Transactions of databases that found no free slot.
    pub fn untracked(&self) -> u64 {
        self.header.untracked.load(RELAXED)
    }

    /// Every database's metrics, in slot order.
    pub fn read_all(&self) -> Vec<DbSnapshot> {
        self.slots
            .iter()
            .filter_map(|slot| crate::oid_slots::oid_of(&slot.key).map(|oid| slot.read(oid)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zeroed heap area of `size_for(slots)` bytes, 8-aligned.
    fn area(slots: usize) -> Vec<u64> {
        vec![0u64; size_for(slots).div_ceil(8)]
    }

    fn store(area: &mut [u64], slots: usize) -> Store<'_> {
        // SAFETY: a zeroed, u64-aligned area of the right size that outlives the store.
        unsafe { Store::from_raw(area.as_mut_ptr().cast(), slots) }
    }

    #[test]
    fn databases_get_their_own_slots_until_they_run_out() {
        let mut mem = area(3);
        let s = store(&mut mem, 3);
        let a = s.slot(5).unwrap();
        let b = s.slot(6).unwrap();
        assert!(!std::ptr::eq(a, b));
        assert!(std::ptr::eq(a, s.slot(5).unwrap()));
        // OID 0 (errors before a database is chosen) has a slot like any other.
        assert!(s.slot(0).is_some());
        assert!(s.slot(7).is_none(), "three slots, fourth database");
        a.record_xact(true, 10, Some(3));
        b.record_xact(false, 20, None);
        s.count_untracked();
        let all = s.read_all();
        let a = all.iter().find(|d| d.oid == 5).unwrap();
        assert_eq!((a.commits, a.rollbacks), (1, 0));
        assert_eq!(a.commit.counts.iter().sum::<u64>(), 1);
        let b = all.iter().find(|d| d.oid == 6).unwrap();
        assert_eq!((b.commits, b.rollbacks), (0, 1));
        assert_eq!(
            b.commit.counts.iter().sum::<u64>(),
            0,
            "no commit duration for a rollback"
        );
        assert_eq!(b.xact.max, 20);
        assert_eq!(s.untracked(), 1);
    }

    #[test]
    fn errors_are_counted_by_code_with_a_bound() {
        let mut mem = area(1);
        let s = store(&mut mem, 1);
        let db = s.slot(1).unwrap();
        db.record_error(7, b"first", 100);
        db.record_error(7, b"second", 200);
        for code in 0..MAX_ERROR_CODES as i32 + 5 {
            db.record_error(1000 + code, b"x", 300);
        }
        let snap = &s.read_all()[0];
        let seven = snap.errors.iter().find(|e| e.code == 7).unwrap();
        assert_eq!(seven.count, 2);
        assert_eq!(seven.message, "second");
        assert_eq!(seven.last_at, 200);
        assert_eq!(snap.errors.len(), MAX_ERROR_CODES);
        assert_eq!(snap.errors_total, 2 + MAX_ERROR_CODES as u64 + 5);
        // 7 took one entry: 31 of the 37 other codes fit.
        assert_eq!(snap.errors_overflow, 6);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let mut mem = area(1);
        let s = store(&mut mem, 1);
        let db = s.slot(1).unwrap();
        let long = "é".repeat(MESSAGE_BYTES); // 2 bytes each
        db.record_error(9, long.as_bytes(), 1);
        let msg = &s.read_all()[0].errors[0].message;
        assert_eq!(msg.len(), MESSAGE_BYTES);
        assert!(msg.chars().all(|c| c == 'é'));
        assert_eq!(cut("aé".as_bytes(), 2), 1);
    }

    #[test]
    fn reset_empties_a_slot_but_keeps_it() {
        let mut mem = area(2);
        let s = store(&mut mem, 2);
        let db = s.slot(3).unwrap();
        db.record_xact(true, 5, Some(1));
        db.add_events(EventCounter::Acked, 4);
        db.record_error(7, b"boom", 1);
        db.reset(42);
        let snap = &s.read_all()[0];
        assert_eq!(snap.oid, 3);
        assert_eq!(snap.reset_at, Some(42));
        assert_eq!(
            (snap.commits, snap.events, snap.errors_total),
            (0, [0; 6], 0)
        );
        assert!(snap.errors.is_empty());
        assert_eq!(snap.xact.quantile(0.5), None);
        assert!(std::ptr::eq(db, s.slot(3).unwrap()));
    }

    #[test]
    fn concurrent_writers_lose_no_counts() {
        let mut mem = area(4);
        let s = store(&mut mem, 4);
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                scope.spawn(move || {
                    for i in 0..10_000u64 {
                        let db = s.slot(t % 2).unwrap();
                        db.record_xact(i % 3 != 0, i, Some(1));
                        db.record_error(77, format!("message {t} {i}").as_bytes(), i as i64);
                    }
                });
            }
        });
        let all = s.read_all();
        assert_eq!(all.len(), 2);
        for db in all {
            assert_eq!(db.commits + db.rollbacks, 20_000);
            assert_eq!(db.errors[0].count, 20_000);
            assert!(db.errors[0].message.starts_with("message "));
            assert_eq!(db.xact.counts.iter().sum::<u64>(), 20_000);
        }
    }
}
