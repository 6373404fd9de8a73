//! Consumer groups (SPEC 3.3): `create_consumer`, `drop_consumer`, `poll`, `ack`,
//! `nack`, `redrive`, `prune`.
//!
//! Delivery is snapshot-based, after PgQ. A group's row holds `done_snapshot`: every
//! event whose transaction is visible in it has been claimed by the group. A poll takes
//! the events visible in a newer snapshot (`range_snapshot`) and not in `done_snapshot`,
//! in `(txid, id)` order, `max` at a time (`range_txid`, `range_id` mark the position);
//! when the range is exhausted it becomes the new `done_snapshot`. Visibility is decided
//! per transaction, so an event of a transaction that commits late (out of id order) is
//! not visible in the snapshots taken while it ran, and is delivered in the first range
//! after it commits: nothing is skipped, and a long transaction holds back nobody else's
//! events. A snapshot's running list is bounded by the number of connections, so the
//! state stays small however long a transaction runs.
//!
//! Workers of a group share its events in batches: a poll locks the group row, first
//! re-offers events of expired claims (crash redelivery, attempt + 1) and due retries,
//! then new events, and writes ONE claim row (event ids, attempts, lease) for the whole
//! batch. `ack` removes ids from claims (one write per claim touched); `nack` moves one
//! event to the retry table, or to the dead letters after `max_attempts`.

use pgrx::datum::DatumWithOid;
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::backoff;
use crate::error::{TxEventsError, TxResult};
use crate::jsonb::RawJsonb;
use crate::metrics::count;
use crate::metrics_store::EventCounter;
use crate::plans;
use crate::poll_range::{self, Position, Read};
use crate::snapshot::Snapshot;
use crate::validate;

/// Largest batch `poll` hands out.
pub const MAX_BATCH: i32 = 10_000;
const LEASE_EXPIRED: &str = "lease expired before ack or nack";

/// A value of the extension's own tables that must be present: NULL there is corrupt
/// state, reported as an internal error instead of being replaced by a default (which
/// could rewind a group or hand out a wrong attempt count).
fn required<T>(value: Option<T>, what: &str) -> TxResult<T> {
    value.ok_or_else(|| corrupt(format!("{what} is NULL")))
}

/// The elements of an array column that holds no NULL element when the extension wrote
/// it; a NULL element is corrupt state (pgrx's `Vec<T>` conversion would panic with a
/// bare "array contains NULL").
fn elements<T>(value: Option<Vec<Option<T>>>, what: &str) -> TxResult<Vec<T>> {
    required(value, what)?
        .into_iter()
        .collect::<Option<Vec<T>>>()
        .ok_or_else(|| corrupt(format!("{what} holds a NULL element")))
}

/// An internal error about corrupt state of the extension's tables.
fn corrupt(what: impl std::fmt::Display) -> TxEventsError {
    TxEventsError::Internal(format!("corrupt consumer state: {what}"))
}

fn interval_micros(field: &'static str, value: Option<Interval>) -> TxResult<i64> {
    let value = value.ok_or(TxEventsError::NullArgument(field))?;
    i64::try_from(value.as_micros())
        .map_err(|_| TxEventsError::InvalidArgument(format!("{field} is out of range")))
}

/// Creates consumer group `name`. It receives the events of transactions that commit
/// after this one's snapshot (including this transaction's own events).
#[pg_extern(name = "create_consumer", security_definer)]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_create_consumer(
    name: Option<&str>,
    event_types: default!(Option<Vec<Option<String>>>, "NULL"),
    max_attempts: default!(Option<i32>, 10),
    backoff_base: default!(Option<Interval>, "'1s'"),
    backoff_max: default!(Option<Interval>, "'5 min'"),
) {
    crate::require_writable(c"txevents.create_consumer()");
    create_consumer(name, event_types, max_attempts, backoff_base, backoff_max)
        .unwrap_or_else(|e| e.raise())
}

fn create_consumer(
    name: Option<&str>,
    event_types: Option<Vec<Option<String>>>,
    max_attempts: Option<i32>,
    backoff_base: Option<Interval>,
    backoff_max: Option<Interval>,
) -> TxResult<()> {
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
        let inserted = plans::execute(
            client,
            "INSERT INTO txevents.consumers
                 (name, event_types, max_attempts, backoff_base, backoff_max, done_snapshot)
             VALUES ($1, $2, $3, $4, $5, $6::pg_snapshot)
             ON CONFLICT (name) DO NOTHING RETURNING 1",
            None,
            &[
                name.into(),
                event_types.into(),
                max_attempts.into(),
                base_iv.into(),
                max_iv.into(),
                snapshot.to_string().into(),
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

/// One row of `poll`: id, event_type, aggregate_type, aggregate_id, payload, headers,
/// occurred_at, attempt.
type PollRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    RawJsonb,
    RawJsonb,
    TimestampWithTimeZone,
    i32,
);

/// Claims up to `max` events for `consumer` for `lease`, and returns them: first
/// redeliveries of expired claims and due retries, then new events in commit-safe order.
///
/// SQL name `_poll`, callable by the extension owner only: `txevents.poll` (in
/// `sql/finalize.sql`) is the SECURITY DEFINER wrapper with the fixed search_path,
/// written in PL/pgSQL so that it runs once per poll and returns a materialized
/// result. pgrx set-returning functions are called once per row, and a function
/// with its own `SET search_path` redoes the setting on every call: 100 times per
/// batch, which was two thirds of a poll's time.
#[allow(clippy::type_complexity)]
#[pg_extern(name = "_poll")]
fn txevents_poll(
    consumer: Option<&str>,
    max: default!(Option<i32>, 100),
    lease: default!(Option<Interval>, "'30s'"),
) -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(event_type, String),
        name!(aggregate_type, Option<String>),
        name!(aggregate_id, Option<String>),
        name!(payload, RawJsonb),
        name!(headers, RawJsonb),
        name!(occurred_at, TimestampWithTimeZone),
        name!(attempt, i32),
    ),
> {
    crate::require_writable(c"txevents.poll()");
    match poll(consumer, max, lease) {
        Ok(rows) => TableIterator::new(rows),
        Err(e) => e.raise(),
    }
}

struct Group {
    event_types: Option<Vec<String>>,
    max_attempts: i32,
    done: String,
    range: Option<String>,
    /// Where reading the range goes on; meaningful only while `range` is set.
    pos: Position,
}

fn lock_group(client: &mut SpiClient<'_>, name: &str) -> TxResult<Group> {
    let table = plans::execute(
        client,
        "SELECT event_types, max_attempts, done_snapshot::text, range_snapshot::text,
                range_txid::text, range_id
           FROM txevents.consumers WHERE name = $1 FOR UPDATE",
        Some(1),
        &[name.into()],
    )?;
    let Some(row) = table.into_iter().next() else {
        return Err(TxEventsError::UndefinedConsumer(name.to_string()));
    };
    let in_group = |what: &str| format!("{what} of consumer group \"{name}\"");
    let max_attempts: i32 = required(row.get(2)?, &in_group("max_attempts"))?;
    let done: String = required(row.get(3)?, &in_group("done_snapshot"))?;
    let range: Option<String> = row.get(4)?;
    let range_txid: Option<String> = row.get(5)?;
    let range_id: Option<i64> = row.get(6)?;
    let done_snapshot = Snapshot::parse(&done).ok_or_else(|| {
        corrupt(format!(
            "{} {done:?} is unreadable",
            in_group("done_snapshot")
        ))
    })?;
    let pos = poll_range::stored_position(range.is_some(), range_txid.as_deref(), range_id)
        .map_err(|why| corrupt(format!("consumer group \"{name}\": {why}")))?;
    let event_types: Option<Vec<Option<String>>> = row.get(1)?;
    let event_types = event_types
        .map(|types| elements(Some(types), &in_group("event_types")))
        .transpose()?;
    Ok(Group {
        event_types,
        max_attempts,
        done,
        range,
        pos: pos.unwrap_or_else(|| poll_range::start(&done_snapshot)),
    })
}

/// The `xmin` of a snapshot's text, to notice when the done snapshot moved on.
fn xmin_of(snapshot: &str) -> TxResult<u64> {
    Snapshot::parse(snapshot)
        .map(|s| s.xmin)
        .ok_or_else(|| corrupt(format!("unreadable snapshot {snapshot:?}")))
}

/// The attempt count at `index` of a claim; the two arrays of a claim have one entry
/// per event, so a missing one is corrupt state.
fn attempt_at(attempts: &[i32], index: usize, claim: i64) -> TxResult<i32> {
    attempts
        .get(index)
        .copied()
        .ok_or_else(|| corrupt(format!("claim {claim} has fewer attempts than event ids")))
}

/// Removes the first `taken` entries of a claim: deletes the row when nothing is left.
fn shrink_claim(
    client: &mut SpiClient<'_>,
    claim: i64,
    ids: &[i64],
    attempts: &[i32],
    keep: impl Fn(usize) -> bool,
) -> TxResult<()> {
    let kept_ids: Vec<i64> = (0..ids.len())
        .filter(|&i| keep(i))
        .map(|i| ids[i])
        .collect();
    let kept_attempts: Vec<i32> = (0..ids.len())
        .filter(|&i| keep(i))
        .map(|i| attempt_at(attempts, i, claim))
        .collect::<TxResult<_>>()?;
    if kept_ids.is_empty() {
        plans::execute(
            client,
            "DELETE FROM txevents.claims WHERE id = $1",
            None,
            &[claim.into()],
        )?;
    } else {
        plans::execute(
            client,
            "UPDATE txevents.claims SET event_ids = $2, attempts = $3 WHERE id = $1",
            None,
            &[claim.into(), kept_ids.into(), kept_attempts.into()],
        )?;
    }
    Ok(())
}

fn dead_letter(
    client: &mut SpiClient<'_>,
    consumer: &str,
    ids: &[i64],
    attempts: &[i32],
    error: Option<&str>,
) -> TxResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    plans::execute(
        client,
        "INSERT INTO txevents.dead (consumer, event_id, attempts, last_error, failed_at)
         SELECT $1, e, a, $4, clock_timestamp() FROM unnest($2::bigint[], $3::int[]) AS u(e, a)
         ON CONFLICT (consumer, event_id) DO UPDATE
            SET attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,
                failed_at = EXCLUDED.failed_at",
        None,
        &[
            consumer.into(),
            ids.to_vec().into(),
            attempts.to_vec().into(),
            error.into(),
        ],
    )?;
    count(EventCounter::DeadLettered, ids.len() as u64);
    Ok(())
}

fn poll(
    consumer: Option<&str>,
    max: Option<i32>,
    lease: Option<Interval>,
) -> TxResult<Vec<PollRow>> {
    let consumer = consumer.ok_or(TxEventsError::NullArgument("consumer"))?;
    let max = validate::batch_size(max)?;
    let lease_micros = interval_micros("lease", lease)?;
    validate::lease(lease_micros)?;
    let lease = lease.ok_or(TxEventsError::NullArgument("lease"))?;
    let want = max as usize;

    Spi::connect_mut(|client| {
        let mut group = lock_group(client, consumer)?;
        let mut ids: Vec<i64> = Vec::with_capacity(want);
        let mut attempts: Vec<i32> = Vec::with_capacity(want);

        // 1. Expired claims: the worker died or is too slow; offer again, attempt + 1.
        let expired = plans::execute(
            client,
            "SELECT id, event_ids, attempts FROM txevents.claims
              WHERE consumer = $1 AND lease_until < clock_timestamp()
              ORDER BY lease_until, id FOR UPDATE",
            None,
            &[consumer.into()],
        )?;
        let mut expired_claims = Vec::new();
        for row in expired {
            let claim: i64 = required(row.get(1)?, "claim id")?;
            let claim_ids: Vec<i64> = elements(row.get(2)?, "claim event_ids")?;
            let claim_attempts: Vec<i32> = elements(row.get(3)?, "claim attempts")?;
            expired_claims.push((claim, claim_ids, claim_attempts));
        }
        for (claim, claim_ids, claim_attempts) in expired_claims {
            if ids.len() >= want {
                break;
            }
            let mut taken = 0;
            let (mut dead_ids, mut dead_attempts) = (Vec::new(), Vec::new());
            while taken < claim_ids.len() && ids.len() < want {
                let attempt = attempt_at(&claim_attempts, taken, claim)?;
                if attempt >= group.max_attempts {
                    dead_ids.push(claim_ids[taken]);
                    dead_attempts.push(attempt);
                } else {
                    ids.push(claim_ids[taken]);
                    attempts.push(attempt + 1);
                }
                taken += 1;
            }
            shrink_claim(client, claim, &claim_ids, &claim_attempts, |i| i >= taken)?;
            dead_letter(
                client,
                consumer,
                &dead_ids,
                &dead_attempts,
                Some(LEASE_EXPIRED),
            )?;
        }

        // 2. Retries that are due.
        if ids.len() < want {
            let due = plans::execute(
                client,
                "DELETE FROM txevents.retries r
                  WHERE r.consumer = $1 AND r.event_id IN (
                        SELECT event_id FROM txevents.retries
                         WHERE consumer = $1 AND next_attempt_at <= clock_timestamp()
                         ORDER BY next_attempt_at, event_id LIMIT $2)
                 RETURNING r.event_id, r.attempts, r.next_attempt_at",
                None,
                &[consumer.into(), ((want - ids.len()) as i64).into()],
            )?;
            let mut rows = Vec::new();
            for row in due {
                let id: i64 = required(row.get(1)?, "retry event_id")?;
                let done: i32 = required(row.get(2)?, "retry attempts")?;
                let at: TimestampWithTimeZone = required(row.get(3)?, "retry next_attempt_at")?;
                rows.push((at.into_inner(), id, done));
            }
            rows.sort_unstable();
            for (_, id, done) in rows {
                ids.push(id);
                attempts.push(done.saturating_add(1));
            }
        }

        // 3. New events, range by range.
        let old_done_xmin = xmin_of(&group.done)?;
        let mut state_changed = false;
        let mut fresh_this_poll = false;
        while ids.len() < want {
            let done = Snapshot::parse(&group.done)
                .ok_or_else(|| corrupt(format!("unreadable done_snapshot {:?}", group.done)))?;
            let range = match group.range.clone() {
                Some(range) => range,
                None => {
                    let snap: Option<String> =
                        plans::execute(client, "SELECT pg_current_snapshot()::text", Some(1), &[])?
                            .first()
                            .get(1)?;
                    let snap = snap.ok_or_else(|| {
                        TxEventsError::Internal("pg_current_snapshot() returned NULL".into())
                    })?;
                    group.range = Some(snap.clone());
                    group.pos = poll_range::start(&done);
                    fresh_this_poll = true;
                    snap
                }
            };
            let read = poll_range::next_read(&done, group.pos);
            let room = want - ids.len();
            let rows = match &read {
                Read::Running { xids, from } => {
                    group.pos = *from;
                    let xids: Vec<String> = xids.iter().map(u64::to_string).collect();
                    let args: [DatumWithOid; 6] = [
                        xids.into(),
                        from.txid.to_string().into(),
                        from.id.into(),
                        range.as_str().into(),
                        group.event_types.clone().into(),
                        (room as i64).into(),
                    ];
                    plans::execute(
                        client,
                        "SELECT o.id, o.txid::text AS txid_text FROM txevents.outbox o
                          WHERE o.txid = ANY($1::text[]::xid8[])
                            AND (o.txid, o.id) > ($2::xid8, $3::bigint)
                            AND pg_visible_in_snapshot(o.txid, $4::pg_snapshot)
                            AND ($5::text[] IS NULL OR o.event_type = ANY($5::text[]))
                          ORDER BY o.txid, o.id LIMIT $6",
                        None,
                        &args,
                    )?
                }
                Read::Tail { from } => {
                    group.pos = *from;
                    let args: [DatumWithOid; 5] = [
                        range.as_str().into(),
                        from.txid.to_string().into(),
                        from.id.into(),
                        group.event_types.clone().into(),
                        (room as i64).into(),
                    ];
                    plans::execute(
                        client,
                        // From the position on, in the order of the (txid, id) index; every
                        // txid here is at or above done's xmax, so invisible in done. The
                        // output column must not be named txid, or ORDER BY would sort text.
                        "SELECT o.id, o.txid::text AS txid_text FROM txevents.outbox o
                          WHERE (o.txid, o.id) > ($2::xid8, $3::bigint)
                            AND o.txid < pg_snapshot_xmax($1::pg_snapshot)
                            AND pg_visible_in_snapshot(o.txid, $1::pg_snapshot)
                            AND ($4::text[] IS NULL OR o.event_type = ANY($4::text[]))
                          ORDER BY o.txid, o.id LIMIT $5",
                        None,
                        &args,
                    )?
                }
            };
            let mut found = 0;
            let mut last = None;
            for row in rows {
                let id: i64 = required(row.get(1)?, "outbox id")?;
                let txid: String = required(row.get(2)?, "outbox txid")?;
                let txid: u64 = txid
                    .parse()
                    .map_err(|_| corrupt(format!("unreadable outbox txid {txid:?}")))?;
                ids.push(id);
                attempts.push(1);
                found += 1;
                last = Some(Position { txid, id });
            }
            if found > 0 {
                state_changed = true;
            }
            if found == room {
                if let Some(last) = last {
                    group.pos = last;
                }
                break;
            }
            if let Read::Running { .. } = read {
                // The transactions that were running at `done` are read; go on from
                // its xmax, in the same range.
                group.pos = poll_range::after_running(&done);
                continue;
            }
            // Range exhausted: all of it is claimed.
            group.done = range;
            group.range = None;
            if !fresh_this_poll {
                // The stored range is finished; fill the batch from a fresh one.
                state_changed = true;
                continue;
            }
            if xmin_of(&group.done)? != old_done_xmin {
                state_changed = true;
            }
            break;
        }
        if state_changed {
            let range_txid = group.range.as_ref().map(|_| group.pos.txid.to_string());
            let range_id = group.range.as_ref().map(|_| group.pos.id);
            plans::execute(
                client,
                "UPDATE txevents.consumers
                    SET done_snapshot = $2::pg_snapshot, range_snapshot = $3::pg_snapshot,
                        range_txid = $4::xid8, range_id = $5
                  WHERE name = $1",
                None,
                &[
                    consumer.into(),
                    group.done.as_str().into(),
                    group.range.clone().into(),
                    range_txid.into(),
                    range_id.into(),
                ],
            )?;
        }

        if ids.is_empty() {
            return Ok(Vec::new());
        }
        plans::execute(
            client,
            "INSERT INTO txevents.claims (consumer, event_ids, attempts, lease_until)
             VALUES ($1, $2, $3, clock_timestamp() + $4)",
            None,
            &[
                consumer.into(),
                ids.clone().into(),
                attempts.clone().into(),
                lease.into(),
            ],
        )?;
        let table = plans::execute(
            client,
            "SELECT o.id, o.event_type, o.aggregate_type, o.aggregate_id, o.payload, o.headers,
                    o.occurred_at, b.attempt
               FROM unnest($1::bigint[], $2::int[]) WITH ORDINALITY AS b(id, attempt, ord)
               JOIN txevents.outbox o ON o.id = b.id
              ORDER BY b.ord",
            None,
            &[ids.into(), attempts.into()],
        )?;
        let mut out = Vec::with_capacity(table.len());
        for row in table {
            let json = |n: usize| -> TxResult<RawJsonb> {
                row.get::<RawJsonb>(n)?
                    .map(RawJsonb::transfer_out_of_spi)
                    .ok_or_else(|| TxEventsError::Internal("NULL payload or headers".into()))
            };
            out.push((
                required(row.get::<i64>(1)?, "outbox id")?,
                required(row.get::<String>(2)?, "outbox event_type")?,
                row.get::<String>(3)?,
                row.get::<String>(4)?,
                json(5)?,
                json(6)?,
                required(row.get::<TimestampWithTimeZone>(7)?, "outbox occurred_at")?,
                required(row.get::<i32>(8)?, "claimed attempt")?,
            ));
        }
        Ok(out)
    })
}

fn require_group(client: &mut SpiClient<'_>, consumer: &str) -> TxResult<()> {
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
        let acked: Option<i64> = client
            .update(
                "WITH held AS (
                     SELECT id, event_ids, attempts FROM txevents.claims
                      WHERE consumer = $1 AND event_ids && $2::bigint[] FOR UPDATE),
                 split AS (
                     SELECT h.id,
                            array_agg(u.e ORDER BY u.o) FILTER (WHERE u.e <> ALL($2::bigint[])) AS ids,
                            array_agg(u.a ORDER BY u.o) FILTER (WHERE u.e <> ALL($2::bigint[])) AS atts,
                            count(*) FILTER (WHERE u.e = ANY($2::bigint[])) AS acked
                       FROM held h, unnest(h.event_ids, h.attempts) WITH ORDINALITY AS u(e, a, o)
                      GROUP BY h.id),
                 gone AS (
                     DELETE FROM txevents.claims c USING split s
                      WHERE c.id = s.id AND s.ids IS NULL RETURNING s.acked),
                 kept AS (
                     UPDATE txevents.claims c SET event_ids = s.ids, attempts = s.atts
                       FROM split s WHERE c.id = s.id AND s.ids IS NOT NULL RETURNING s.acked)
                 SELECT (coalesce((SELECT sum(acked) FROM gone), 0)
                       + coalesce((SELECT sum(acked) FROM kept), 0))::bigint",
                None,
                &[consumer.into(), ids.into()],
            )?
            .first()
            .get_one()?;
        let acked = required(acked, "acked count")?;
        count(EventCounter::Acked, u64::try_from(acked).unwrap_or(0));
        Ok(acked)
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

        let claim = plans::execute(
            client,
            "SELECT id, event_ids, attempts FROM txevents.claims
              WHERE consumer = $1 AND event_ids @> ARRAY[$2::bigint]
              ORDER BY id LIMIT 1 FOR UPDATE",
            None,
            &[consumer.into(), id.into()],
        )?;
        let Some(row) = claim.into_iter().next() else {
            return Err(TxEventsError::NotClaimed {
                consumer: consumer.to_string(),
                id,
            });
        };
        let claim: i64 = required(row.get(1)?, "claim id")?;
        let claim_ids: Vec<i64> = elements(row.get(2)?, "claim event_ids")?;
        let claim_attempts: Vec<i32> = elements(row.get(3)?, "claim attempts")?;
        // The claim was selected for holding `id`.
        let at = claim_ids
            .iter()
            .position(|&e| e == id)
            .ok_or_else(|| corrupt(format!("claim {claim} does not hold event {id}")))?;
        let attempt = attempt_at(&claim_attempts, at, claim)?;
        shrink_claim(client, claim, &claim_ids, &claim_attempts, |i| {
            claim_ids[i] != id
        })?;

        if attempt >= max_attempts {
            dead_letter(client, consumer, &[id], &[attempt], error)?;
            return Ok(false);
        }
        let delay = match explicit {
            Some(micros) => micros,
            None => {
                // SAFETY: the backend's global PRNG, seeded at backend start.
                let random = unsafe {
                    pgrx::pg_sys::pg_prng_uint64(std::ptr::addr_of_mut!(
                        pgrx::pg_sys::pg_global_prng_state
                    ))
                };
                backoff::delay_micros(attempt.max(1) as u32, base, cap, random)
            }
        };
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
