//! Consumer groups (SPEC 3.3): `create_consumer`, `drop_consumer`, `ack`, `nack`,
//! `redrive`, `prune`. Handing out events is `poll.rs`; the state machine behind both
//! is `delivery.rs`.
//!
//! Delivery is snapshot-based, after PgQ: a group's row holds `done_snapshot` (every
//! event whose transaction is visible in it has been written to claim rows) and the
//! newer range being read. Claim rows hold events by the batch: pending ones, then
//! leased to a worker. `ack` removes events from the leased rows holding them (one
//! write per row touched); `nack` moves one event to the retry table (a lane's head
//! stays in its lane, blocking the aggregate until the retry is due), or to the dead
//! letters after `max_attempts`.

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::backoff;
use crate::claim_store::{self, required};
use crate::delivery::{self, Nack};
use crate::error::{TxEventsError, TxResult};
use crate::metrics::count;
use crate::metrics_store::EventCounter;
use crate::plans;
use crate::snapshot::Snapshot;
use crate::validate;

/// An interval argument in microseconds.
pub(crate) fn interval_micros(field: &'static str, value: Option<Interval>) -> TxResult<i64> {
    let value = value.ok_or(TxEventsError::NullArgument(field))?;
    i64::try_from(value.as_micros())
        .map_err(|_| TxEventsError::InvalidArgument(format!("{field} is out of range")))
}

/// Creates consumer group `name`. It receives the events of transactions that commit
/// after this one's snapshot (including this transaction's own events). `ordered`:
/// the events of one aggregate id are handed out one at a time, in emission order.
#[pg_extern(name = "create_consumer", security_definer)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_create_consumer_ordered(
    name: Option<&str>,
    event_types: default!(Option<Vec<Option<String>>>, "NULL"),
    max_attempts: default!(Option<i32>, 10),
    backoff_base: default!(Option<Interval>, "'1s'"),
    backoff_max: default!(Option<Interval>, "'5 min'"),
    ordered: default!(Option<bool>, false),
) {
    crate::require_writable(c"txevents.create_consumer()");
    create_consumer(
        name,
        event_types,
        max_attempts,
        (backoff_base, backoff_max),
        ordered,
    )
    .unwrap_or_else(|e| e.raise())
}

/// 0.1.0's `create_consumer` (five arguments, C symbol
/// `txevents_create_consumer_wrapper`): between installing this library and `ALTER
/// EXTENSION txevents UPDATE`, the 0.1.0 SQL function calls it. Not in the 0.2.0 SQL.
#[pg_extern(sql = false)]
fn txevents_create_consumer(
    name: Option<&str>,
    event_types: Option<Vec<Option<String>>>,
    max_attempts: Option<i32>,
    backoff_base: Option<Interval>,
    backoff_max: Option<Interval>,
) {
    crate::require_writable(c"txevents.create_consumer()");
    create_consumer(
        name,
        event_types,
        max_attempts,
        (backoff_base, backoff_max),
        Some(false),
    )
    .unwrap_or_else(|e| e.raise())
}

fn create_consumer(
    name: Option<&str>,
    event_types: Option<Vec<Option<String>>>,
    max_attempts: Option<i32>,
    (backoff_base, backoff_max): (Option<Interval>, Option<Interval>),
    ordered: Option<bool>,
) -> TxResult<()> {
    let ordered = ordered.ok_or(TxEventsError::NullArgument("ordered"))?;
    let legacy = crate::legacy::is_legacy()?;
    if legacy && ordered {
        return Err(TxEventsError::InvalidArgument(
            "ordered groups need the 0.2.0 tables: run ALTER EXTENSION txevents UPDATE".into(),
        ));
    }
    let name = validate::consumer_name(name)?;
    let event_types = validate::event_types(event_types)?;
    let max_attempts = validate::max_attempts(max_attempts)?;
    let base = interval_micros("backoff_base", backoff_base)?;
    let max = interval_micros("backoff_max", backoff_max)?;
    validate::backoff(base, max)?;
    let (Some(base_iv), Some(max_iv)) = (backoff_base, backoff_max) else {
        return Err(TxEventsError::NullArgument("backoff_base"));
    };
    Spi::connect_mut(|client| {
        let table = client.select(
            "SELECT pg_current_snapshot()::text, pg_current_xact_id_if_assigned()::text",
            Some(1),
            &[],
        )?;
        let row = table.first();
        let snapshot: Option<String> = row.get(1)?;
        let own: Option<String> = row.get(2)?;
        let snapshot = snapshot
            .as_deref()
            .and_then(Snapshot::parse)
            .ok_or_else(|| TxEventsError::Internal("unreadable pg_current_snapshot()".into()))?;
        // NULL: this transaction has no id yet, so it has emitted nothing.
        let snapshot = match own {
            Some(xid) => snapshot.with_running(xid.parse::<u64>().map_err(|_| {
                TxEventsError::Internal(format!("unreadable transaction id {xid:?}"))
            })?),
            None => snapshot,
        };
        if legacy {
            let inserted = plans::execute(
                client,
                "INSERT INTO txevents.consumers
                     (name, event_types, max_attempts, backoff_base, backoff_max, done_snapshot)
                 VALUES ($1, $2, $3, $4, $5, $6::pg_snapshot)
                 ON CONFLICT (name) DO NOTHING RETURNING 1",
                None,
                &[
                    name.into(),
                    event_types.clone().into(),
                    max_attempts.into(),
                    base_iv.into(),
                    max_iv.into(),
                    snapshot.to_string().into(),
                ],
            )?;
            if inserted.is_empty() {
                return Err(TxEventsError::DuplicateConsumer(name.to_string()));
            }
            return Ok(());
        }
        let inserted = plans::execute(
            client,
            "INSERT INTO txevents.consumers
                 (name, event_types, max_attempts, backoff_base, backoff_max, done_snapshot,
                  ordered)
             VALUES ($1, $2, $3, $4, $5, $6::pg_snapshot, $7)
             ON CONFLICT (name) DO NOTHING RETURNING 1",
            None,
            &[
                name.into(),
                event_types.into(),
                max_attempts.into(),
                base_iv.into(),
                max_iv.into(),
                snapshot.to_string().into(),
                ordered.into(),
            ],
        )?;
        if inserted.is_empty() {
            return Err(TxEventsError::DuplicateConsumer(name.to_string()));
        }
        Ok(())
    })
}

/// Drops consumer group `name` with its claims, retries and dead letters.
#[pg_extern(name = "drop_consumer", security_definer)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_drop_consumer(name: Option<&str>) {
    crate::require_writable(c"txevents.drop_consumer()");
    let run = || -> TxResult<()> {
        let name = name.ok_or(TxEventsError::NullArgument("name"))?;
        Spi::connect_mut(|client| {
            let deleted = plans::execute(
                client,
                "DELETE FROM txevents.consumers WHERE name = $1 RETURNING 1",
                None,
                &[name.into()],
            )?;
            if deleted.is_empty() {
                return Err(TxEventsError::UndefinedConsumer(name.to_string()));
            }
            Ok(())
        })
    };
    run().unwrap_or_else(|e| e.raise())
}

pub(crate) fn require_group(client: &mut SpiClient<'_>, consumer: &str) -> TxResult<()> {
    let found = plans::execute(
        client,
        "SELECT 1 FROM txevents.consumers WHERE name = $1",
        Some(1),
        &[consumer.into()],
    )?;
    if found.is_empty() {
        return Err(TxEventsError::UndefinedConsumer(consumer.to_string()));
    }
    Ok(())
}

/// Marks events as processed by `consumer`; returns how many of them it held.
#[pg_extern(name = "ack", security_definer)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_ack(consumer: Option<&str>, ids: Option<Vec<Option<i64>>>) -> i64 {
    crate::require_writable(c"txevents.ack()");
    ack(consumer, ids).unwrap_or_else(|e| e.raise())
}

fn ack(consumer: Option<&str>, ids: Option<Vec<Option<i64>>>) -> TxResult<i64> {
    if crate::legacy::is_legacy()? {
        return crate::legacy::ack(consumer, ids);
    }
    let consumer = consumer.ok_or(TxEventsError::NullArgument("consumer"))?;
    let ids: Vec<i64> = ids
        .ok_or(TxEventsError::NullArgument("ids"))?
        .into_iter()
        .flatten()
        .collect();
    Spi::connect_mut(|client| {
        require_group(client, consumer)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let table = plans::execute(
            client,
            "SELECT id, lane IS NOT NULL, event_ids, attempts, inflight FROM txevents.claims
              WHERE consumer = $1 AND lease_until IS NOT NULL AND event_ids && $2::bigint[]
              ORDER BY id FOR UPDATE",
            None,
            &[consumer.into(), ids.clone().into()],
        )?;
        let mut acked = 0usize;
        for row in claim_store::rows(table)? {
            if let Some((write, n)) = delivery::ack_row(&row, &ids) {
                // Ack leaves the lease alone, or drops it with the row's last event.
                claim_store::apply(client, consumer, write, None)?;
                acked += n;
            }
        }
        count(EventCounter::Acked, acked as u64);
        Ok(i64::try_from(acked).unwrap_or(i64::MAX))
    })
}

/// Reports that `consumer` failed to process event `id`. Returns true when the event
/// will be offered again (after `retry_after`, or after the group's exponential backoff
/// when NULL), false when it reached `max_attempts` and went to the dead letters.
#[pg_extern(name = "nack", security_definer)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_nack(
    consumer: Option<&str>,
    id: Option<i64>,
    error: default!(Option<&str>, "NULL"),
    retry_after: default!(Option<Interval>, "NULL"),
) -> bool {
    crate::require_writable(c"txevents.nack()");
    nack(consumer, id, error, retry_after).unwrap_or_else(|e| e.raise())
}

fn nack(
    consumer: Option<&str>,
    id: Option<i64>,
    error: Option<&str>,
    retry_after: Option<Interval>,
) -> TxResult<bool> {
    if crate::legacy::is_legacy()? {
        return crate::legacy::nack(consumer, id, error, retry_after);
    }
    let consumer = consumer.ok_or(TxEventsError::NullArgument("consumer"))?;
    let id = id.ok_or(TxEventsError::NullArgument("id"))?;
    let explicit = match retry_after {
        Some(_) => Some(interval_micros("retry_after", retry_after)?),
        None => None,
    };
    if let Some(micros) = explicit {
        validate::retry_after(micros)?;
    }
    Spi::connect_mut(|client| {
        let table = plans::execute(
            client,
            "SELECT max_attempts,
                    (extract(epoch FROM backoff_base) * 1000000)::bigint,
                    (extract(epoch FROM backoff_max) * 1000000)::bigint
               FROM txevents.consumers WHERE name = $1",
            Some(1),
            &[consumer.into()],
        )?;
        let Some(row) = table.into_iter().next() else {
            return Err(TxEventsError::UndefinedConsumer(consumer.to_string()));
        };
        let max_attempts: i32 = required(row.get(1)?, "max_attempts")?;
        let base: i64 = required(row.get(2)?, "backoff_base")?;
        let cap: i64 = required(row.get(3)?, "backoff_max")?;

        let table = plans::execute(
            client,
            "SELECT id, lane IS NOT NULL, event_ids, attempts, inflight FROM txevents.claims
              WHERE consumer = $1 AND lease_until IS NOT NULL AND event_ids @> ARRAY[$2::bigint]
              ORDER BY id LIMIT 1 FOR UPDATE",
            None,
            &[consumer.into(), id.into()],
        )?;
        let not_claimed = || TxEventsError::NotClaimed {
            consumer: consumer.to_string(),
            id,
        };
        let row = claim_store::rows(table)?
            .into_iter()
            .next()
            .ok_or_else(not_claimed)?;
        let attempt = match delivery::nack_row(&row, id, max_attempts).ok_or_else(not_claimed)? {
            Nack::Dead { write, attempts } => {
                claim_store::apply(client, consumer, write, None)?;
                claim_store::dead_letter(client, consumer, &[(id, attempts)], error)?;
                return Ok(false);
            }
            Nack::Retry { write, attempts } => {
                claim_store::apply(client, consumer, write, None)?;
                Retry::Table(attempts)
            }
            Nack::RetryInLane { attempts } => Retry::Lane(row.id, attempts),
        };
        let delay = match explicit {
            Some(micros) => micros,
            None => {
                // SAFETY: the backend's global PRNG, seeded at backend start.
                let random = unsafe {
                    pgrx::pg_sys::pg_prng_uint64(std::ptr::addr_of_mut!(
                        pgrx::pg_sys::pg_global_prng_state
                    ))
                };
                backoff::delay_micros(attempt.attempts().max(1) as u32, base, cap, random)
            }
        };
        let (row, attempt) = match attempt {
            Retry::Table(attempts) => (None, attempts),
            Retry::Lane(row, attempts) => (Some(row), attempts),
        };
        if let Some(row) = row {
            // The head stays in its lane, leased until the retry is due: its
            // aggregate waits, and the poll after that redelivers it (attempt + 1).
            plans::execute(
                client,
                "UPDATE txevents.claims
                    SET lease_until = clock_timestamp() + ($2::float8 * interval '1 microsecond'),
                        last_error = $3
                  WHERE id = $1",
                None,
                &[row.into(), (delay as f64).into(), error.into()],
            )?;
            count(EventCounter::Retried, 1);
            return Ok(true);
        }
        plans::execute(client,
            "INSERT INTO txevents.retries (consumer, event_id, attempts, next_attempt_at, last_error)
             VALUES ($1, $2, $3, clock_timestamp() + ($4::float8 * interval '1 microsecond'), $5)
             ON CONFLICT (consumer, event_id) DO UPDATE
                SET attempts = EXCLUDED.attempts, next_attempt_at = EXCLUDED.next_attempt_at,
                    last_error = EXCLUDED.last_error",
            None,
            &[
                consumer.into(),
                id.into(),
                attempt.into(),
                (delay as f64).into(),
                error.into(),
            ],
        )?;
        count(EventCounter::Retried, 1);
        Ok(true)
    })
}

/// Where a nacked event waits for its retry.
enum Retry {
    /// In the retries table, after `attempts` deliveries.
    Table(i32),
    /// At the head of lane row `.0`, after `.1` deliveries.
    Lane(i64, i32),
}

impl Retry {
    fn attempts(&self) -> i32 {
        match self {
            Retry::Table(attempts) | Retry::Lane(_, attempts) => *attempts,
        }
    }
}

/// Makes dead letters of `consumer` deliverable again (all of them when `ids` is NULL);
/// returns how many. Their attempt counter starts over.
#[pg_extern(name = "redrive", security_definer)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_redrive(
    consumer: Option<&str>,
    ids: default!(Option<Vec<Option<i64>>>, "NULL"),
) -> i64 {
    crate::require_writable(c"txevents.redrive()");
    let run = || -> TxResult<i64> {
        let consumer = consumer.ok_or(TxEventsError::NullArgument("consumer"))?;
        let ids: Option<Vec<i64>> = ids.map(|v| v.into_iter().flatten().collect());
        Spi::connect_mut(|client| {
            require_group(client, consumer)?;
            let n: Option<i64> = client
                .update(
                    "WITH d AS (
                         DELETE FROM txevents.dead
                          WHERE consumer = $1 AND ($2::bigint[] IS NULL OR event_id = ANY($2::bigint[]))
                         RETURNING event_id, last_error),
                     r AS (
                         INSERT INTO txevents.retries
                                (consumer, event_id, attempts, next_attempt_at, last_error)
                         SELECT $1, event_id, 0, clock_timestamp(), last_error FROM d
                         ON CONFLICT (consumer, event_id) DO NOTHING RETURNING 1)
                     SELECT count(*) FROM r",
                    None,
                    &[consumer.into(), ids.into()],
                )?
                .first()
                .get_one()?;
            let n = required(n, "row count")?;
            count(EventCounter::Redriven, u64::try_from(n).unwrap_or(0));
            Ok(n)
        })
    };
    run().unwrap_or_else(|e| e.raise())
}

/// Deletes outbox events older than `older_than` that every group has claimed and that
/// no claim, retry or dead letter still references; returns how many.
#[pg_extern(name = "prune", security_definer)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_prune(older_than: Option<Interval>) -> i64 {
    crate::require_writable(c"txevents.prune()");
    let run = || -> TxResult<i64> {
        let micros = interval_micros("older_than", older_than)?;
        validate::older_than(micros)?;
        let older_than = older_than.ok_or(TxEventsError::NullArgument("older_than"))?;
        Spi::connect_mut(|client| {
            // Rows of prepared transactions whose COMMIT PREPARED ran without the
            // library loaded: their GID is no longer prepared.
            plans::execute(
                client,
                "DELETE FROM txevents.prepared_notify p
                  WHERE NOT EXISTS (SELECT 1 FROM pg_prepared_xacts x WHERE x.gid = p.gid)",
                None,
                &[],
            )?;
            let n: Option<i64> = client
                .update(
                    "WITH refs AS (
                         SELECT unnest(event_ids) AS id FROM txevents.claims
                         UNION SELECT event_id FROM txevents.retries
                         UNION SELECT event_id FROM txevents.dead),
                     gone AS (
                         DELETE FROM txevents.outbox o
                          WHERE o.occurred_at < clock_timestamp() - $1::interval
                            AND NOT EXISTS (SELECT 1 FROM txevents.consumers c
                                             WHERE NOT pg_visible_in_snapshot(o.txid, c.done_snapshot))
                            AND NOT EXISTS (SELECT 1 FROM refs WHERE refs.id = o.id)
                         RETURNING 1)
                     SELECT count(*) FROM gone",
                    None,
                    &[older_than.into()],
                )?
                .first()
                .get_one()?;
            required(n, "row count")
        })
    };
    run().unwrap_or_else(|e| e.raise())
}
