//! The text form of `pg_snapshot` (`xmin:xmax:xip1,xip2,...`), for the one adjustment
//! Postgres does not offer: counting the caller's own transaction as still running.
//!
//! A consumer group starts from the snapshot of the transaction that creates it: every
//! event visible in that snapshot is "before" the group. Postgres leaves a backend's own
//! transaction id out of its snapshots' `xip` list, so events emitted earlier in the
//! creating transaction would look already visible, and the group would never get them
//! although they commit after it exists. [`with_running`] puts the own id back.

use std::fmt;

/// A parsed `pg_snapshot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Lowest transaction id still running (or `xmax` if none).
    pub xmin: u64,
    /// First transaction id not yet assigned when the snapshot was taken.
    pub xmax: u64,
    /// Transactions in `[xmin, xmax)` that were running, ascending.
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// Parses `xmin:xmax:xip,...`; `None` if the text is not in that form.
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let list = parts.next()?;
        let xip = if list.is_empty() {
            Vec::new()
        } else {
            list.split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?
        };
        if xmin > xmax {
            return None;
        }
        Some(Snapshot { xmin, xmax, xip })
    }

    /// The same snapshot with `xid` counted as running: events of `xid` are then not
    /// visible in it. A no-op when `xid >= xmax` (already invisible) or when listed.
    pub fn with_running(mut self, xid: u64) -> Snapshot {
        if xid >= self.xmax {
            return self;
        }
        if let Err(at) = self.xip.binary_search(&xid) {
            self.xip.insert(at, xid);
        }
        self.xmin = self.xmin.min(xid);
        self
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> Snapshot {
        Snapshot::parse(text).unwrap_or_else(|| panic!("{text}"))
    }

    #[test]
    fn round_trips() {
        for text in ["10:20:", "10:20:10,14,15", "5:5:", "740:742:740"] {
            assert_eq!(snap(text).to_string(), text);
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "1", "1:2", "a:2:", "1:b:", "1:2:x", "1:2:3,", "9:2:"] {
            assert_eq!(Snapshot::parse(text), None, "{text}");
        }
    }

    #[test]
    fn own_transaction_counts_as_running() {
        // Own xid between xmin and xmax, not listed: inserted in order.
        assert_eq!(
            snap("10:20:10,15").with_running(12).to_string(),
            "10:20:10,12,15"
        );
        // Own xid is xmin itself (no other transaction running below it).
        assert_eq!(snap("12:20:15").with_running(12).to_string(), "12:20:12,15");
        // Own xid below xmin cannot happen in Postgres, but stays consistent.
        assert_eq!(snap("12:20:").with_running(11).to_string(), "11:20:11");
        // At or above xmax: already invisible, unchanged.
        assert_eq!(snap("10:20:10").with_running(20).to_string(), "10:20:10");
        // Already listed.
        assert_eq!(
            snap("10:20:10,12").with_running(12).to_string(),
            "10:20:10,12"
        );
    }
}
