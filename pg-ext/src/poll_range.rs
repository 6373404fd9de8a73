//! Where a consumer group's poll reads next: the pure decisions of `poll::poll`,
//! kept free of SPI so that they are unit-tested.
//!
//! A group has claimed every event whose transaction is visible in its `done`
//! snapshot. A poll works through a newer snapshot (the range) in `(txid, id)` order
//! from a stored position. The events not visible in `done` are those of its running
//! transactions (`xip`) and those of transactions from its `xmax` on; reading the two
//! parts apart keeps a poll from re-reading every event committed since a long
//! transaction began, and each part is read in `(txid, id)` order after the position.

use crate::snapshot::Snapshot;

/// A point in `(txid, id)` order: reading continues strictly after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Transaction id (xid8) of the last event claimed, or where to start.
    pub txid: u64,
    /// Event id of the last event claimed, 0 at the start of a transaction.
    pub id: i64,
}

/// The next read of the outbox within a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// Events of `done`'s running transactions `xids` (ascending), after `from`.
    Running {
        /// The transactions to read, each at or after `from.txid`.
        xids: Vec<u64>,
        /// Read strictly after this point.
        from: Position,
    },
    /// Events of transactions at or above `done.xmax`, after `from`.
    Tail {
        /// Read strictly after this point.
        from: Position,
    },
}

impl Read {
    /// The point this read continues strictly after.
    pub fn from(&self) -> Position {
        match self {
            Read::Running { from, .. } | Read::Tail { from } => *from,
        }
    }
}

/// Where a fresh range starts: every transaction below `done.xmin` is visible in
/// `done`, so nothing before it is new.
pub fn start(done: &Snapshot) -> Position {
    Position {
        txid: done.xmin,
        id: 0,
    }
}

/// Where reading goes on once `done`'s running transactions are read: its `xmax`.
pub fn after_running(done: &Snapshot) -> Position {
    Position {
        txid: done.xmax,
        id: 0,
    }
}

/// The read that follows position `pos` in a range started after `done`.
pub fn next_read(done: &Snapshot, pos: Position) -> Read {
    if pos.txid >= done.xmax {
        return Read::Tail { from: pos };
    }
    // Below xmax only the transactions running at `done` can hold unclaimed events;
    // the ones below `pos.txid` are read already.
    let xids: Vec<u64> = done
        .xip
        .iter()
        .copied()
        .filter(|&x| x >= pos.txid)
        .collect();
    if xids.is_empty() {
        Read::Tail {
            from: after_running(done),
        }
    } else {
        Read::Running { xids, from: pos }
    }
}

/// A group's stored position, checked: a range snapshot comes with both position
/// columns and no range with neither. Anything else is corrupt state, reported rather
/// than replaced by a default (a position of 0 would redeliver the whole range).
pub fn stored_position(
    has_range: bool,
    txid: Option<&str>,
    id: Option<i64>,
) -> Result<Option<Position>, String> {
    match (has_range, txid, id) {
        (false, None, None) => Ok(None),
        (false, _, _) => Err("range_txid or range_id is set without a range_snapshot".into()),
        (true, Some(txid), Some(id)) => {
            let txid = txid
                .parse()
                .map_err(|_| format!("range_txid {txid:?} is not a transaction id"))?;
            if id < 0 {
                return Err(format!("range_id {id} is negative"));
            }
            Ok(Some(Position { txid, id }))
        }
        (true, _, _) => Err("range_snapshot is set without range_txid and range_id".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> Snapshot {
        Snapshot::parse(text).unwrap_or_else(|| panic!("{text}"))
    }

    fn at(txid: u64, id: i64) -> Position {
        Position { txid, id }
    }

    #[test]
    fn a_fresh_range_starts_at_dones_xmin() {
        assert_eq!(start(&snap("10:20:10,15")), at(10, 0));
        assert_eq!(start(&snap("20:20:")), at(20, 0));
        assert_eq!(after_running(&snap("10:20:10,15")), at(20, 0));
    }

    #[test]
    fn running_transactions_are_read_first_then_the_tail() {
        let done = snap("10:20:10,15,18");
        // From the start: every running transaction.
        assert_eq!(
            next_read(&done, start(&done)),
            Read::Running {
                xids: vec![10, 15, 18],
                from: at(10, 0)
            }
        );
        // In the middle of transaction 15: 15 again (after id 7) and 18, not 10.
        assert_eq!(
            next_read(&done, at(15, 7)),
            Read::Running {
                xids: vec![15, 18],
                from: at(15, 7)
            }
        );
        // Past the last running transaction but below xmax: jump to xmax.
        assert_eq!(next_read(&done, at(19, 3)), Read::Tail { from: at(20, 0) });
        // At or above xmax: the tail, from the position itself.
        assert_eq!(next_read(&done, at(20, 0)), Read::Tail { from: at(20, 0) });
        assert_eq!(next_read(&done, at(25, 9)), Read::Tail { from: at(25, 9) });
    }

    #[test]
    fn nothing_running_goes_straight_to_the_tail() {
        let done = snap("20:20:");
        assert_eq!(
            next_read(&done, start(&done)),
            Read::Tail { from: at(20, 0) }
        );
        let done = snap("12:30:");
        assert_eq!(next_read(&done, at(12, 0)), Read::Tail { from: at(30, 0) });
    }

    #[test]
    fn own_transaction_counted_as_running_is_read() {
        // create_consumer adds its own xid to xip; its events are then delivered.
        let done = snap("10:20:").with_running(12);
        assert_eq!(
            next_read(&done, start(&done)),
            Read::Running {
                xids: vec![12],
                from: at(10, 0)
            }
        );
    }

    #[test]
    fn stored_positions_are_checked_not_defaulted() {
        assert_eq!(stored_position(false, None, None), Ok(None));
        assert_eq!(
            stored_position(true, Some("740"), Some(3)),
            Ok(Some(at(740, 3)))
        );
        for (has_range, txid, id) in [
            (true, None, Some(3)),
            (true, Some("740"), None),
            (true, None, None),
            (true, Some("x"), Some(1)),
            (true, Some("-1"), Some(1)),
            (true, Some("740"), Some(-1)),
            (false, Some("740"), None),
            (false, None, Some(0)),
        ] {
            assert!(
                stored_position(has_range, txid, id).is_err(),
                "{has_range} {txid:?} {id:?}"
            );
        }
    }
}
