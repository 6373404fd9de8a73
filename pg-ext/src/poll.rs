//! `txevents.poll` (SPEC 3.3): the SPI side of handing out events. What to take and
//! what to write is decided by `delivery`; this file reads and writes the rows.
//!
//! A poll takes, in this order and each with `FOR UPDATE SKIP LOCKED` so that
//! concurrent polls pass each other instead of queueing: claim rows whose lease ran
//! out (redelivery, attempt + 1), due retries, then pending claim rows. Only when no
//! pending row is left does it *tick*: it locks the group's row (`SKIP LOCKED`: one
//! ticker at a time), reads the next events by snapshot (`delivery::tick`) and writes
//! them as pending rows, many batches at once. A poll that finds another poll ticking
//! waits for that tick to commit (a shared advisory lock, released at once) and takes
//! what it wrote.

use pgrx::datum::DatumWithOid;
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::claim_store::{self, corrupt, elements, required};
use crate::delivery::{self, Cursor, Event, Source};
use crate::error::{TxEventsError, TxResult};
use crate::jsonb::RawJsonb;
use crate::plans;
use crate::poll_range::{self, Read};
use crate::snapshot::Snapshot;
use crate::validate;

/// Largest batch `poll` hands out.
pub const MAX_BATCH: i32 = 10_000;
/// A tick of an unordered group reads at least this many batches' worth of events, so
/// that the group's row is locked once per this many polls; with more workers holding
/// batches, twice as many batches as they hold (up to [`TICK_MAX`] events): every
/// worker then finds a pending batch while one of them ticks.
const TICK_BATCHES: usize = 32;
/// The most events an unordered tick reads.
const TICK_MAX: usize = 20_000;
/// First key of the advisory lock a ticker holds (ASCII "txev"); the second is the
/// hash of the group's name.
const TICK_LOCK: i32 = 0x7478_6576;
/// The error recorded with a dead letter whose last lease ran out.
pub const LEASE_EXPIRED: &str = "lease expired before ack or nack";

/// One row of `poll`: id, event_type, aggregate_type, aggregate_id, payload, headers,
/// occurred_at, attempt.
pub(crate) type PollRow = (
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

/// A group's settings, read without locking its row.
struct Group {
    event_types: Option<Vec<String>>,
    max_attempts: i32,
    ordered: bool,
}

fn read_group(client: &mut SpiClient<'_>, name: &str) -> TxResult<Group> {
    let table = plans::execute(
        client,
        "SELECT event_types, max_attempts, ordered FROM txevents.consumers WHERE name = $1",
        Some(1),
        &[name.into()],
    )?;
    let Some(row) = table.into_iter().next() else {
        return Err(TxEventsError::UndefinedConsumer(name.to_string()));
    };
    let in_group = |what: &str| format!("{what} of consumer group \"{name}\"");
    let event_types: Option<Vec<Option<String>>> = row.get(1)?;
    Ok(Group {
        event_types: event_types
            .map(|types| elements(Some(types), &in_group("event_types")))
            .transpose()?,
        max_attempts: required(row.get(2)?, &in_group("max_attempts"))?,
        ordered: required(row.get(3)?, &in_group("ordered"))?,
    })
}

/// The ids of the claim rows among `sources`: a transaction's own `FOR UPDATE SKIP
/// LOCKED` does not skip the rows it locked itself, so later reads exclude them.
fn row_ids(sources: &[Source]) -> Vec<i64> {
    sources
        .iter()
        .filter_map(|s| match s {
            Source::Row(row) => Some(row.id),
            Source::Retry { .. } => None,
        })
        .collect()
}

fn expired_rows(client: &mut SpiClient<'_>, consumer: &str, limit: usize) -> TxResult<Vec<Source>> {
    let table = plans::execute(
        client,
        "SELECT id, lane IS NOT NULL, event_ids, attempts, inflight FROM txevents.claims
          WHERE consumer = $1 AND lease_until < clock_timestamp()
          ORDER BY lease_until, id LIMIT $2 FOR UPDATE SKIP LOCKED",
        None,
        &[consumer.into(), (limit as i64).into()],
    )?;
    Ok(claim_store::rows(table)?
        .into_iter()
        .map(Source::Row)
        .collect())
}

fn due_retries(client: &mut SpiClient<'_>, consumer: &str, limit: usize) -> TxResult<Vec<Source>> {
    let due = plans::execute(
        client,
        "DELETE FROM txevents.retries r
          WHERE r.consumer = $1 AND r.event_id IN (
                SELECT event_id FROM txevents.retries
                 WHERE consumer = $1 AND next_attempt_at <= clock_timestamp()
                 ORDER BY next_attempt_at, event_id LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING r.event_id, r.attempts, r.next_attempt_at",
        None,
        &[consumer.into(), (limit as i64).into()],
    )?;
    let mut rows = Vec::new();
    for row in due {
        let id: i64 = required(row.get(1)?, "retry event_id")?;
        let attempts: i32 = required(row.get(2)?, "retry attempts")?;
        let at: TimestampWithTimeZone = required(row.get(3)?, "retry next_attempt_at")?;
        rows.push((at.into_inner(), id, attempts));
    }
    rows.sort_unstable();
    Ok(rows
        .into_iter()
        .map(|(_, id, attempts)| Source::Retry { id, attempts })
        .collect())
}

fn pending_rows(
    client: &mut SpiClient<'_>,
    consumer: &str,
    skip: Vec<i64>,
    limit: usize,
) -> TxResult<Vec<Source>> {
    let table = plans::execute(
        client,
        "SELECT id, lane IS NOT NULL, event_ids, attempts, inflight FROM txevents.claims
          WHERE consumer = $1 AND lease_until IS NULL AND id <> ALL($2::bigint[])
          ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
        None,
        &[consumer.into(), skip.into(), (limit as i64).into()],
    )?;
    Ok(claim_store::rows(table)?
        .into_iter()
        .map(Source::Row)
        .collect())
}

/// Re-reads the claim rows among `sources`: a tick may have appended to a lane this
/// poll already holds.
fn refresh(client: &mut SpiClient<'_>, sources: &mut [Source]) -> TxResult<()> {
    let ids = row_ids(sources);
    if ids.is_empty() {
        return Ok(());
    }
    let table = plans::execute(
        client,
        "SELECT id, lane IS NOT NULL, event_ids, attempts, inflight FROM txevents.claims
          WHERE id = ANY($1::bigint[])",
        None,
        &[ids.into()],
    )?;
    let fresh = claim_store::rows(table)?;
    for source in sources.iter_mut() {
        if let Source::Row(row) = source {
            if let Some(now) = fresh.iter().find(|f| f.id == row.id) {
                *row = now.clone();
            }
        }
    }
    Ok(())
}

/// How a tick attempt went.
enum Ticked {
    /// This poll ticked (or found the group idle).
    Done,
    /// Another poll holds the group's row.
    Busy,
}

fn poll(
    consumer: Option<&str>,
    max: Option<i32>,
    lease: Option<Interval>,
) -> TxResult<Vec<PollRow>> {
    let consumer = consumer.ok_or(TxEventsError::NullArgument("consumer"))?;
    let max = validate::batch_size(max)?;
    let lease_micros = crate::consumer::interval_micros("lease", lease)?;
    validate::lease(lease_micros)?;
    let lease = lease.ok_or(TxEventsError::NullArgument("lease"))?;
    let want = max as usize;
    if crate::legacy::is_legacy()? {
        return crate::legacy::poll(Some(consumer), Some(max), Some(lease));
    }

    Spi::connect_mut(|client| {
        let group = read_group(client, consumer)?;
        let max_attempts = group.max_attempts;
        let mut sources = expired_rows(client, consumer, want)?;
        let wanted = delivery::still_wanted(&sources, want, max_attempts);
        if wanted > 0 {
            sources.extend(due_retries(client, consumer, wanted)?);
        }
        let mut ticked = false;
        loop {
            let wanted = delivery::still_wanted(&sources, want, max_attempts);
            if wanted == 0 {
                break;
            }
            // A chunk usually fills a batch; lanes give one event each.
            let limit = if group.ordered { wanted } else { 1 };
            let pending = pending_rows(client, consumer, row_ids(&sources), limit)?;
            if !pending.is_empty() {
                sources.extend(pending);
                continue;
            }
            // A tick of an ordered group locks lanes in id order, as ack does; holding
            // lanes taken above in another order, it could deadlock with an ack.
            if ticked || (group.ordered && !row_ids(&sources).is_empty()) {
                break;
            }
            ticked = true;
            match tick_group(client, consumer, &group, want)? {
                Ticked::Done => refresh(client, &mut sources)?,
                // Waiting while holding claim rows could deadlock with the ticker,
                // which may append to a lane this poll holds: return what there is.
                Ticked::Busy if !row_ids(&sources).is_empty() => break,
                Ticked::Busy => wait_for_tick(client, consumer)?,
            }
        }

        let plan = delivery::plan_poll(&sources, want, max_attempts);
        for write in plan.writes {
            claim_store::apply(client, consumer, write, Some(lease))?;
        }
        claim_store::dead_letter(client, consumer, &plan.dead, Some(LEASE_EXPIRED))?;
        if plan.deliver.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, attempts): (Vec<i64>, Vec<i32>) = plan.deliver.into_iter().unzip();
        fetch_events(client, ids, attempts)
    })
}

/// Waits until the poll ticking `consumer` commits, without holding anything after.
fn wait_for_tick(client: &mut SpiClient<'_>, consumer: &str) -> TxResult<()> {
    plans::execute(
        client,
        "SELECT pg_advisory_lock_shared($1, hashtext($2))",
        None,
        &[TICK_LOCK.into(), consumer.into()],
    )?;
    plans::execute(
        client,
        "SELECT pg_advisory_unlock_shared($1, hashtext($2))",
        None,
        &[TICK_LOCK.into(), consumer.into()],
    )?;
    Ok(())
}

/// Reads the group's cursor with its row locked (`SKIP LOCKED`): `None` when another
/// poll holds it.
fn lock_cursor(client: &mut SpiClient<'_>, name: &str) -> TxResult<Option<Cursor>> {
    let table = plans::execute(
        client,
        "SELECT done_snapshot::text, range_snapshot::text, range_txid::text, range_id
           FROM txevents.consumers WHERE name = $1 FOR UPDATE SKIP LOCKED",
        Some(1),
        &[name.into()],
    )?;
    let Some(row) = table.into_iter().next() else {
        return Ok(None);
    };
    let in_group = |what: &str| format!("{what} of consumer group \"{name}\"");
    let done: String = required(row.get(1)?, &in_group("done_snapshot"))?;
    let range: Option<String> = row.get(2)?;
    let range_txid: Option<String> = row.get(3)?;
    let range_id: Option<i64> = row.get(4)?;
    let unreadable =
        |text: &str| corrupt(format!("{} {text:?} is unreadable", in_group("snapshot")));
    let done = Snapshot::parse(&done).ok_or_else(|| unreadable(&done))?;
    let pos = poll_range::stored_position(range.is_some(), range_txid.as_deref(), range_id)
        .map_err(|why| corrupt(format!("consumer group \"{name}\": {why}")))?;
    let range = match range {
        Some(text) => Some(Snapshot::parse(&text).ok_or_else(|| unreadable(&text))?),
        None => None,
    };
    Ok(Some(Cursor {
        pos: pos.unwrap_or_else(|| poll_range::start(&done)),
        done,
        range,
    }))
}

/// Reads the next events of `consumer` by snapshot and writes them as pending claim
/// rows of `batch` events (lanes per aggregate in an ordered group).
fn tick_group(
    client: &mut SpiClient<'_>,
    consumer: &str,
    group: &Group,
    batch: usize,
) -> TxResult<Ticked> {
    let Some(mut cursor) = lock_cursor(client, consumer)? else {
        return Ok(Ticked::Busy);
    };
    plans::execute(
        client,
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        None,
        &[TICK_LOCK.into(), consumer.into()],
    )?;
    let current: Option<String> =
        plans::execute(client, "SELECT pg_current_snapshot()::text", Some(1), &[])?
            .first()
            .get(1)?;
    let current = current
        .as_deref()
        .and_then(Snapshot::parse)
        .ok_or_else(|| TxEventsError::Internal("unreadable pg_current_snapshot()".into()))?;
    // An ordered group reads a range whole: split between ticks, a range could hand
    // out an aggregate's later event (lower txid) before its earlier one.
    let target = if group.ordered {
        usize::MAX
    } else {
        let held: Option<i64> = plans::execute(
            client,
            "SELECT count(*) FROM txevents.claims
              WHERE consumer = $1 AND lease_until IS NOT NULL",
            Some(1),
            &[consumer.into()],
        )?
        .first()
        .get(1)?;
        let batches = usize::try_from(held.unwrap_or(0))
            .unwrap_or(0)
            .saturating_mul(2);
        (batch * batches.max(TICK_BATCHES)).clamp(batch, TICK_MAX.max(batch))
    };
    let tick = delivery::tick(
        &mut cursor,
        target,
        || Ok(current.clone()),
        |range, read, limit| read_outbox(client, group, range, read, limit),
    )?;
    write_pending(client, consumer, group.ordered, batch, &tick.events)?;
    if tick.changed {
        let range_txid = cursor.range.as_ref().map(|_| cursor.pos.txid.to_string());
        let range_id = cursor.range.as_ref().map(|_| cursor.pos.id);
        plans::execute(
            client,
            "UPDATE txevents.consumers
                SET done_snapshot = $2::pg_snapshot, range_snapshot = $3::pg_snapshot,
                    range_txid = $4::xid8, range_id = $5
              WHERE name = $1",
            None,
            &[
                consumer.into(),
                cursor.done.to_string().into(),
                cursor.range.as_ref().map(Snapshot::to_string).into(),
                range_txid.into(),
                range_id.into(),
            ],
        )?;
    }
    Ok(Ticked::Done)
}

/// The outbox rows of one `Read` of `range`, in `(txid, id)` order.
fn read_outbox(
    client: &mut SpiClient<'_>,
    group: &Group,
    range: &Snapshot,
    read: &Read,
    limit: usize,
) -> TxResult<Vec<Event>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let range = range.to_string();
    let from = read.from();
    let rows = match read {
        Read::Running { xids, .. } => {
            let xids: Vec<String> = xids.iter().map(u64::to_string).collect();
            let args: [DatumWithOid; 6] = [
                xids.into(),
                from.txid.to_string().into(),
                from.id.into(),
                range.as_str().into(),
                group.event_types.clone().into(),
                limit.into(),
            ];
            plans::execute(
                client,
                "SELECT o.id, o.txid::text AS txid_text, o.aggregate_id FROM txevents.outbox o
                  WHERE o.txid = ANY($1::text[]::xid8[])
                    AND (o.txid, o.id) > ($2::xid8, $3::bigint)
                    AND pg_visible_in_snapshot(o.txid, $4::pg_snapshot)
                    AND ($5::text[] IS NULL OR o.event_type = ANY($5::text[]))
                  ORDER BY o.txid, o.id LIMIT $6",
                None,
                &args,
            )?
        }
        Read::Tail { .. } => {
            let args: [DatumWithOid; 5] = [
                range.as_str().into(),
                from.txid.to_string().into(),
                from.id.into(),
                group.event_types.clone().into(),
                limit.into(),
            ];
            plans::execute(
                client,
                // From the position on, in the order of the (txid, id) index; every
                // txid here is at or above done's xmax, so invisible in done. The
                // output column must not be named txid, or ORDER BY would sort text.
                "SELECT o.id, o.txid::text AS txid_text, o.aggregate_id FROM txevents.outbox o
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
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = required(row.get(1)?, "outbox id")?;
        let txid: String = required(row.get(2)?, "outbox txid")?;
        let txid: u64 = txid
            .parse()
            .map_err(|_| corrupt(format!("unreadable outbox txid {txid:?}")))?;
        out.push(Event {
            id,
            txid,
            aggregate_id: row.get(3)?,
        });
    }
    Ok(out)
}

/// Writes a tick's events as pending claim rows in one statement; a lane that exists
/// already gets the new events appended.
fn write_pending(
    client: &mut SpiClient<'_>,
    consumer: &str,
    ordered: bool,
    batch: usize,
    events: &[Event],
) -> TxResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = delivery::pack(events, ordered, batch);
    let mut ids: Vec<i64> = Vec::with_capacity(events.len());
    let mut row_of: Vec<i32> = Vec::with_capacity(events.len());
    let mut lanes: Vec<Option<String>> = Vec::with_capacity(rows.len());
    for (n, row) in rows.into_iter().enumerate() {
        let n = i32::try_from(n + 1).unwrap_or(i32::MAX);
        ids.extend(&row.ids);
        row_of.extend(row.ids.iter().map(|_| n));
        lanes.push(row.lane);
    }
    if ordered {
        // Lock the lanes this tick appends to in id order, as `ack` locks the rows it
        // touches: upserting them in another order could deadlock with an ack of
        // several lanes.
        let named: Vec<String> = lanes.iter().flatten().cloned().collect();
        plans::execute(
            client,
            "SELECT id FROM txevents.claims
              WHERE consumer = $1 AND lane = ANY($2::text[]) ORDER BY id FOR UPDATE",
            None,
            &[consumer.into(), named.into()],
        )?;
    }
    plans::execute(
        client,
        "INSERT INTO txevents.claims AS c (consumer, lane, event_ids, attempts, inflight)
         SELECT $1, ($4::text[])[u.r], array_agg(u.e ORDER BY u.o), array_agg(0 ORDER BY u.o), 0
           FROM unnest($2::bigint[], $3::int[]) WITH ORDINALITY AS u(e, r, o)
          GROUP BY u.r ORDER BY u.r
         ON CONFLICT (consumer, lane) WHERE lane IS NOT NULL DO UPDATE
            SET event_ids = c.event_ids || EXCLUDED.event_ids,
                attempts = c.attempts || EXCLUDED.attempts",
        None,
        &[consumer.into(), ids.into(), row_of.into(), lanes.into()],
    )?;
    Ok(())
}

/// The outbox rows of the handed-out events, in delivery order.
pub(crate) fn fetch_events(
    client: &mut SpiClient<'_>,
    ids: Vec<i64>,
    attempts: Vec<i32>,
) -> TxResult<Vec<PollRow>> {
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
}
