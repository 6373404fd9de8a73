//! The 0.1.0 consumer code, kept for the time between installing this library and
//! `ALTER EXTENSION txevents UPDATE`: the 0.1.0 tables (no pending claim rows, no
//! lanes) are then still in place, and the 0.1.0 SQL functions call this library.
//! `poll`, `ack` and `nack` run the 0.1.0 statements while [`is_legacy`] says so.
//! Retired code, unchanged but for its shared helpers; remove it with the upgrade
//! path from 0.1.0.

use std::cell::Cell;

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::backoff;
use crate::claim_store::{corrupt, elements, required};
use crate::consumer::{interval_micros, require_group};
use crate::error::{TxEventsError, TxResult};
use crate::plans;
use crate::poll::{PollRow, LEASE_EXPIRED};
use crate::poll_range::{self, Position, Read};
use crate::snapshot::Snapshot;
use crate::validate;
use pgrx::datum::DatumWithOid;

thread_local! {
    /// The extension (by OID) last found with the 0.2.0 tables: they never go back,
    /// so only a legacy answer is checked again.
    static CURRENT: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// True while the database still has the 0.1.0 tables (`txevents.claims` without
/// `inflight`).
pub fn is_legacy() -> TxResult<bool> {
    // SAFETY: a catalog lookup by name; missing_ok returns InvalidOid instead of raising.
    let oid = unsafe { pg_sys::get_extension_oid(c"txevents".as_ptr(), true) };
    if CURRENT.with(Cell::get) == Some(oid) {
        return Ok(false);
    }
    let legacy: Option<bool> = Spi::connect_mut(|client| -> TxResult<Option<bool>> {
        Ok(plans::execute(
            client,
            "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                             WHERE attrelid = 'txevents.claims'::pg_catalog.regclass
                               AND attname = 'inflight' AND NOT attisdropped)",
            Some(1),
            &[],
        )?
        .first()
        .get(1)?)
    })?;
    let legacy = required(legacy, "the claims table's columns")?;
    if !legacy {
        CURRENT.with(|c| c.set(Some(oid)));
    }
    Ok(legacy)
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

/// 0.1.0's poll.
pub fn poll(
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
            let dead: Vec<(i64, i32)> = dead_ids.into_iter().zip(dead_attempts).collect();
            crate::claim_store::dead_letter(client, consumer, &dead, Some(LEASE_EXPIRED))?;
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
        crate::poll::fetch_events(client, ids, attempts)
    })
}

/// 0.1.0's ack.
pub fn ack(consumer: Option<&str>, ids: Option<Vec<Option<i64>>>) -> TxResult<i64> {
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
        crate::metrics::count(
            crate::metrics_store::EventCounter::Acked,
            u64::try_from(acked).unwrap_or(0),
        );
        Ok(acked)
    })
}

/// 0.1.0's nack.
pub fn nack(
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
            crate::claim_store::dead_letter(client, consumer, &[(id, attempt)], error)?;
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
        crate::metrics::count(crate::metrics_store::EventCounter::Retried, 1);
        Ok(true)
    })
}
