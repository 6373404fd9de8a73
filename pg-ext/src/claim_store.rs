//! Reading and writing `txevents.claims` rows for `poll`, `ack` and `nack`: the rows
//! that `delivery` decides about, checked on the way in (corrupt state is an internal
//! error, never a default) and written back as `delivery::Write`s.

use pgrx::datum::Interval;
use pgrx::spi::{SpiClient, SpiTupleTable};

use crate::delivery::{Row, Write};
use crate::error::{TxEventsError, TxResult};
use crate::metrics::count;
use crate::metrics_store::EventCounter;
use crate::plans;

/// A value of the extension's own tables that must be present: NULL there is corrupt
/// state, reported as an internal error instead of being replaced by a default (which
/// could rewind a group or hand out a wrong attempt count).
pub fn required<T>(value: Option<T>, what: &str) -> TxResult<T> {
    value.ok_or_else(|| corrupt(format!("{what} is NULL")))
}

/// The elements of an array column that holds no NULL element when the extension wrote
/// it; a NULL element is corrupt state (pgrx's `Vec<T>` conversion would panic with a
/// bare "array contains NULL").
pub fn elements<T>(value: Option<Vec<Option<T>>>, what: &str) -> TxResult<Vec<T>> {
    required(value, what)?
        .into_iter()
        .collect::<Option<Vec<T>>>()
        .ok_or_else(|| corrupt(format!("{what} holds a NULL element")))
}

/// An internal error about corrupt state of the extension's tables.
pub fn corrupt(what: impl std::fmt::Display) -> TxEventsError {
    TxEventsError::Internal(format!("corrupt consumer state: {what}"))
}

/// The claim rows of a query selecting `id, lane IS NOT NULL, event_ids, attempts,
/// inflight`.
pub fn rows(table: SpiTupleTable<'_>) -> TxResult<Vec<Row>> {
    let mut out = Vec::with_capacity(table.len());
    for row in table {
        let id: i64 = required(row.get(1)?, "claim id")?;
        let lane: bool = required(row.get(2)?, "claim lane")?;
        let ids: Vec<i64> = elements(row.get(3)?, "claim event_ids")?;
        let attempts: Vec<i32> = elements(row.get(4)?, "claim attempts")?;
        let inflight: i32 = required(row.get(5)?, "claim inflight")?;
        if attempts.len() < ids.len() {
            return Err(corrupt(format!(
                "claim {id} has fewer attempts than event ids"
            )));
        }
        if attempts.len() > ids.len() {
            return Err(corrupt(format!(
                "claim {id} has more attempts than event ids"
            )));
        }
        let inflight = usize::try_from(inflight)
            .ok()
            .filter(|&n| n <= ids.len())
            .ok_or_else(|| corrupt(format!("claim {id} has inflight {inflight}")))?;
        out.push(Row {
            id,
            lane,
            ids,
            attempts,
            inflight,
        });
    }
    Ok(out)
}

fn int(n: usize) -> i32 {
    // A row never holds more events than one tick reads into memory.
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Writes `write` for group `consumer`; `lease` is the lease of rows handed out
/// (`None` for ack and nack, which hand out nothing).
pub fn apply(
    client: &mut SpiClient<'_>,
    consumer: &str,
    write: Write,
    lease: Option<Interval>,
) -> TxResult<()> {
    let leased = |lease: Option<Interval>| {
        lease.ok_or_else(|| TxEventsError::Internal("a claim leased without a lease".into()))
    };
    match write {
        Write::Lease {
            row,
            ids,
            attempts,
            inflight,
        } => plans::execute(
            client,
            "UPDATE txevents.claims
                SET event_ids = $2, attempts = $3, inflight = $4,
                    lease_until = clock_timestamp() + $5, last_error = NULL
              WHERE id = $1",
            None,
            &[
                row.into(),
                ids.into(),
                attempts.into(),
                int(inflight).into(),
                leased(lease)?.into(),
            ],
        )?,
        Write::Keep {
            row,
            ids,
            attempts,
            inflight,
        } => plans::execute(
            client,
            "UPDATE txevents.claims SET event_ids = $2, attempts = $3, inflight = $4
              WHERE id = $1",
            None,
            &[
                row.into(),
                ids.into(),
                attempts.into(),
                int(inflight).into(),
            ],
        )?,
        Write::Release { row, ids, attempts } => plans::execute(
            client,
            "UPDATE txevents.claims
                SET event_ids = $2, attempts = $3, inflight = 0, lease_until = NULL,
                    last_error = NULL
              WHERE id = $1",
            None,
            &[row.into(), ids.into(), attempts.into()],
        )?,
        Write::Delete { row } => plans::execute(
            client,
            "DELETE FROM txevents.claims WHERE id = $1",
            None,
            &[row.into()],
        )?,
        Write::Insert { ids, attempts } => plans::execute(
            client,
            "INSERT INTO txevents.claims (consumer, event_ids, attempts, inflight, lease_until)
             VALUES ($1, $2, $3, cardinality($2), clock_timestamp() + $4)",
            None,
            &[
                consumer.into(),
                ids.into(),
                attempts.into(),
                leased(lease)?.into(),
            ],
        )?,
    };
    Ok(())
}

/// Moves events to `consumer`'s dead letters.
pub fn dead_letter(
    client: &mut SpiClient<'_>,
    consumer: &str,
    dead: &[(i64, i32)],
    error: Option<&str>,
) -> TxResult<()> {
    if dead.is_empty() {
        return Ok(());
    }
    let (ids, attempts): (Vec<i64>, Vec<i32>) = dead.iter().copied().unzip();
    plans::execute(
        client,
        "INSERT INTO txevents.dead (consumer, event_id, attempts, last_error, failed_at)
         SELECT $1, e, a, $4, clock_timestamp() FROM unnest($2::bigint[], $3::int[]) AS u(e, a)
         ON CONFLICT (consumer, event_id) DO UPDATE
            SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,
                failed_at = EXCLUDED.failed_at",
        None,
        &[consumer.into(), ids.into(), attempts.into(), error.into()],
    )?;
    count(EventCounter::DeadLettered, dead.len() as u64);
    Ok(())
}
