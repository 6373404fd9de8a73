//! When the background sweep has work: a full keyspace pass is owed after every
//! invalidation, and a pass only settles the invalidations requested before it began.

/// Bookkeeping of requested and completed sweep passes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepSchedule {
    requested: u64,
    settled: u64,
    running_for: Option<u64>,
}

impl SweepSchedule {
    /// Nothing requested, nothing running.
    pub const fn new() -> SweepSchedule {
        SweepSchedule {
            requested: 0,
            settled: 0,
            running_for: None,
        }
    }

    /// Asks for a pass (after INVALIDATE, or after loading data that may hold
    /// entries of older generations).
    pub fn request(&mut self) {
        self.requested += 1;
    }

    /// Whether a pass is owed or under way.
    pub fn has_work(&self) -> bool {
        self.running_for.is_some() || self.requested != self.settled
    }

    /// Marks the start of a pass from the beginning of the keyspace; returns
    /// false when a pass is already running (it continues).
    pub fn start_pass(&mut self) -> bool {
        if self.running_for.is_some() || self.requested == self.settled {
            return false;
        }
        self.running_for = Some(self.requested);
        true
    }

    /// Whether a pass is under way.
    pub fn is_running(&self) -> bool {
        self.running_for.is_some()
    }

    /// Settles every request without a pass (a replica: its primary sweeps and
    /// replicates the deletions).
    pub fn settle_all(&mut self) {
        self.running_for = None;
        self.settled = self.requested;
    }

    /// Marks the end of the running pass: requests made before it began are
    /// settled, later ones still owe a pass.
    pub fn finish_pass(&mut self) {
        if let Some(covered) = self.running_for.take() {
            self.settled = covered;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_until_requested() {
        let mut s = SweepSchedule::default();
        assert!(!s.has_work());
        assert!(!s.start_pass());
        s.request();
        assert!(s.has_work());
        assert!(s.start_pass());
        assert!(!s.start_pass(), "one pass at a time");
        s.finish_pass();
        assert!(!s.has_work());
    }

    #[test]
    fn a_request_during_a_pass_owes_another_pass() {
        let mut s = SweepSchedule::default();
        s.request();
        assert!(s.start_pass());
        s.request();
        s.finish_pass();
        assert!(s.has_work(), "the second request came after the pass began");
        assert!(s.start_pass());
        s.finish_pass();
        assert!(!s.has_work());
    }

    #[test]
    fn settle_all_clears_owed_and_running_passes() {
        let mut s = SweepSchedule::new();
        s.request();
        assert!(s.start_pass());
        s.request();
        s.settle_all();
        assert!(!s.has_work() && !s.is_running());
    }

    #[test]
    fn many_requests_before_a_pass_need_one_pass() {
        let mut s = SweepSchedule::default();
        for _ in 0..5 {
            s.request();
        }
        assert!(s.start_pass());
        s.finish_pass();
        assert!(!s.has_work());
    }
}
