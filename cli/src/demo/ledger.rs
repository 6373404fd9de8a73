//! Stale-read accounting for the demo, as plain data: which invalidation (candidate,
//! version) the relay confirmed when, and whether a read returned a version older than
//! one already invalidated in Redis before the read began.

use std::collections::HashMap;
use std::time::Instant;

/// What the checker knows: committed invalidations waiting for the relay, and the ones
/// it confirmed, per candidate, in confirmation order.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Event id of `txevents.invalidate` → (candidate, version it made current).
    pending: HashMap<i64, (i32, i32)>,
    /// Candidate → (confirmed at, version), in confirmation order.
    applied: HashMap<i32, Vec<(Instant, i32)>>,
    /// Events the relay acked before their transaction's client recorded the commit
    /// (the relay can be faster than COMMIT's reply): event id → acked at.
    early: HashMap<i64, Instant>,
    /// Reads checked.
    pub reads: u64,
    /// Reads that began after the invalidation of a newer version was applied in
    /// Redis and still returned an older version.
    pub stale_reads: u64,
}

impl Ledger {
    /// A transaction committed `version` of `candidate` with invalidation event `event`.
    pub fn committed(&mut self, event: i64, candidate: i32, version: i32) {
        match self.early.remove(&event) {
            Some(at) => self
                .applied
                .entry(candidate)
                .or_default()
                .push((at, version)),
            None => {
                self.pending.insert(event, (candidate, version));
            }
        }
    }

    /// The relay acked these events at `at` (after Redis applied them).
    pub fn acked(&mut self, events: &[i64], at: Instant) {
        for id in events {
            match self.pending.remove(id) {
                Some((candidate, version)) => {
                    self.applied
                        .entry(candidate)
                        .or_default()
                        .push((at, version));
                }
                None => {
                    self.early.insert(*id, at);
                }
            }
        }
    }

    /// Committed invalidations the relay has not confirmed yet.
    pub fn unconfirmed(&self) -> usize {
        self.pending.len()
    }

    /// Checks a read of `candidate` that began at `started` and returned `version`.
    /// Returns true when it was stale.
    pub fn read(&mut self, candidate: i32, started: Instant, version: i32) -> bool {
        self.reads += 1;
        let newest_before = self
            .applied
            .get(&candidate)
            .into_iter()
            .flatten()
            .filter(|(at, _)| *at <= started)
            .map(|(_, v)| *v)
            .max();
        let stale = newest_before.is_some_and(|newest| version < newest);
        if stale {
            self.stale_reads += 1;
        }
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_read_after_the_invalidation_must_see_the_new_version() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut ledger = Ledger::default();
        ledger.committed(10, 1, 2);
        // Before the relay confirmed: an old version is not stale yet.
        assert!(!ledger.read(1, ms(1), 1));
        ledger.acked(&[10], ms(5));
        assert_eq!(ledger.unconfirmed(), 0);
        // Began before the confirmation: not stale.
        assert!(!ledger.read(1, ms(4), 1));
        // Began after it: stale with version 1, fine with 2 or newer.
        assert!(ledger.read(1, ms(6), 1));
        assert!(!ledger.read(1, ms(6), 2));
        assert!(!ledger.read(1, ms(6), 3));
        // Other candidates are unaffected.
        assert!(!ledger.read(2, ms(6), 1));
        assert_eq!((ledger.reads, ledger.stale_reads), (6, 1));
    }

    #[test]
    fn an_ack_before_the_commit_is_recorded_counts_from_the_ack() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut ledger = Ledger::default();
        // The relay acked event 7 before the updater heard COMMIT's reply.
        ledger.acked(&[7], ms(3));
        assert!(!ledger.read(1, ms(4), 1), "nothing known yet");
        ledger.committed(7, 1, 2);
        assert_eq!(ledger.unconfirmed(), 0);
        assert!(ledger.read(1, ms(5), 1));
        assert!(!ledger.read(1, ms(2), 1));
    }
}
