//! A backend's event counts of the running transaction, kept per subtransaction until
//! the top-level transaction ends (SPEC 3.4): an event emitted, acked or nacked inside
//! a savepoint that is rolled back did not happen, and a rolled-back transaction
//! counts nothing. Plain Rust; `metrics` feeds it from the transaction callbacks.

use crate::metrics_store::{EventCounter, EVENT_COUNTERS};

/// Counts of the running transaction, tagged with the subtransaction that made them.
#[derive(Debug, Default)]
pub struct Tally {
    /// `(subtransaction id, counter, n)`, in the order they were made; runs of the same
    /// subtransaction and counter are merged, so emitting many events costs no memory.
    entries: Vec<(u32, EventCounter, u64)>,
}

impl Tally {
    /// An empty tally (usable in a `const` context).
    pub const fn new() -> Tally {
        Tally {
            entries: Vec::new(),
        }
    }

    /// Adds `n` to `counter` on behalf of subtransaction `subxact`.
    pub fn add(&mut self, subxact: u32, counter: EventCounter, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(last) = self.entries.last_mut() {
            if last.0 == subxact && last.1 == counter {
                last.2 += n;
                return;
            }
        }
        self.entries.push((subxact, counter, n));
    }

    /// Forgets what subtransaction `subxact` and its children counted: subtransaction
    /// ids only grow, and every one started after `subxact` while it ran is its child.
    pub fn abort_sub(&mut self, subxact: u32) {
        self.entries.retain(|e| e.0 < subxact);
    }

    /// The totals per counter (indexed by [`EventCounter`]), leaving the tally empty.
    pub fn take(&mut self) -> [u64; EVENT_COUNTERS] {
        let mut totals = [0; EVENT_COUNTERS];
        for (_, counter, n) in self.entries.drain(..) {
            totals[counter as usize] += n;
        }
        totals
    }

    /// Drops everything (the transaction rolled back).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolled_back_savepoints_count_nothing() {
        let mut t = Tally::new();
        t.add(1, EventCounter::Emitted, 2);
        t.add(2, EventCounter::Emitted, 5); // savepoint 2 ...
        t.add(3, EventCounter::Acked, 1); // ... and its child 3 roll back
        t.abort_sub(2);
        t.add(4, EventCounter::Emitted, 1);
        let totals = t.take();
        assert_eq!(totals[EventCounter::Emitted as usize], 3);
        assert_eq!(totals[EventCounter::Acked as usize], 0);
        assert_eq!(t.take(), [0; EVENT_COUNTERS], "take empties the tally");
    }

    #[test]
    fn runs_are_merged() {
        let mut t = Tally::new();
        for _ in 0..10_000 {
            t.add(1, EventCounter::Emitted, 1);
        }
        assert_eq!(t.entries.len(), 1);
        t.add(1, EventCounter::Published, 0);
        assert_eq!(t.entries.len(), 1, "zero adds nothing");
        t.clear();
        assert_eq!(t.take(), [0; EVENT_COUNTERS]);
    }
}
