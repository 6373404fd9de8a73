//! The delivery state machine of consumer groups (SPEC 3.3), free of SPI: what a tick
//! reads from the outbox, how it packs events into claim rows, what a poll may take from
//! those rows, and what ack and nack leave behind. `consumer.rs` only reads and writes
//! the rows these functions decide about.
//!
//! A group's cursor (`done` snapshot, the `range` being worked through and the position
//! in it, see `poll_range`) is advanced by a *tick*: one poll at a time (the one holding
//! the group's row) reads up to `target` newly visible events and writes them as
//! *pending* claim rows, many events per row. Every other poll meanwhile takes pending
//! rows with `SKIP LOCKED` and leases them, so polls of one group run in parallel and
//! only meet on the group's row once per tick.
//!
//! A claim row holds event ids and, per event, how many times it was delivered
//! (`attempts`). Its first `inflight` events are held by a worker until the lease runs
//! out; a row without a lease is pending. Two kinds of rows:
//! - a *chunk* (no lane): all of it pending, or all of it in flight (one poll's batch);
//! - a *lane* (ordered groups, one per aggregate id): the aggregate's events in order,
//!   of which only the head is ever in flight. The next one is offered once the head is
//!   acked or dead-lettered, and a nacked head keeps the lane until its retry is due.

use std::collections::HashMap;

use crate::poll_range::{self, Position, Read};
use crate::snapshot::Snapshot;

/// An event read from the outbox by a tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Outbox id.
    pub id: i64,
    /// The emitting transaction (xid8).
    pub txid: u64,
    /// The aggregate the event belongs to; orders it in ordered groups.
    pub aggregate_id: Option<String>,
}

/// Where a group's delivery stands: every event visible in `done` has been written to
/// claim rows, and `range` (when set) is read up to `pos`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Events of transactions visible here are all claimed.
    pub done: Snapshot,
    /// The newer snapshot being read, if one is open.
    pub range: Option<Snapshot>,
    /// Reading of `range` continues strictly after this point.
    pub pos: Position,
}

/// What a tick read, and whether the cursor must be written back.
#[derive(Debug)]
pub struct Tick {
    /// The events to write as pending claim rows, in `(txid, id)` order.
    pub events: Vec<Event>,
    /// False when writing the cursor back would change nothing that matters: an
    /// idle poll then leaves the group's row alone.
    pub changed: bool,
}

/// Advances `cursor` by up to `target` events. `current` takes a fresh snapshot (at
/// most once per tick); `read(range, read, limit)` returns up to `limit` events of
/// `range` as `read` describes them, in `(txid, id)` order.
///
/// A stored range is finished first; a fresh one is then opened and read. A range
/// read to its end becomes `done`. Events of transactions running at `done` are read
/// apart from the tail, so a long transaction does not make every tick re-read what
/// committed after it began.
pub fn tick<E>(
    cursor: &mut Cursor,
    target: usize,
    mut current: impl FnMut() -> Result<Snapshot, E>,
    mut read: impl FnMut(&Snapshot, &Read, usize) -> Result<Vec<Event>, E>,
) -> Result<Tick, E> {
    let old_xmin = cursor.done.xmin;
    let mut events: Vec<Event> = Vec::new();
    let mut changed = false;
    let mut fresh = false;
    while events.len() < target {
        let range = match cursor.range.take() {
            Some(range) => range,
            None => {
                fresh = true;
                cursor.pos = poll_range::start(&cursor.done);
                current()?
            }
        };
        let next = poll_range::next_read(&cursor.done, cursor.pos);
        let room = target - events.len();
        let found = read(&range, &next, room)?;
        cursor.pos = next.from();
        if let Some(last) = found.last() {
            cursor.pos = Position {
                txid: last.txid,
                id: last.id,
            };
            changed = true;
        }
        let full = found.len() >= room;
        events.extend(found);
        if full {
            cursor.range = Some(range);
            break;
        }
        if let Read::Running { .. } = next {
            // The transactions running at `done` are read: on to its tail.
            cursor.pos = poll_range::after_running(&cursor.done);
            cursor.range = Some(range);
            continue;
        }
        // The range is read to its end: all of it is claimed.
        cursor.done = range;
        if !fresh {
            // A stored range was finished; fill the tick from a fresh one.
            changed = true;
            continue;
        }
        if cursor.done.xmin != old_xmin {
            changed = true;
        }
        break;
    }
    Ok(Tick { events, changed })
}

/// A claim row to insert for newly read events (all pending, attempts 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRow {
    /// The aggregate id for a lane of an ordered group, `None` for a chunk.
    pub lane: Option<String>,
    /// Event ids in delivery order.
    pub ids: Vec<i64>,
}

/// Packs a tick's events into claim rows: chunks of `chunk` events in read order; in
/// an ordered group, one lane per aggregate id (ids ascending: emission order), events
/// without an aggregate id in chunks. A lane that already exists in the table gets the
/// new ids appended (the SPI layer upserts).
pub fn pack(events: &[Event], ordered: bool, chunk: usize) -> Vec<NewRow> {
    let chunk = chunk.max(1);
    let mut rows: Vec<NewRow> = Vec::new();
    let mut lanes: HashMap<&str, usize> = HashMap::new();
    let mut loose: Vec<i64> = Vec::new();
    for event in events {
        match (&event.aggregate_id, ordered) {
            (Some(aggregate), true) => {
                let at = *lanes.entry(aggregate.as_str()).or_insert_with(|| {
                    rows.push(NewRow {
                        lane: Some(aggregate.clone()),
                        ids: Vec::new(),
                    });
                    rows.len() - 1
                });
                rows[at].ids.push(event.id);
            }
            _ => loose.push(event.id),
        }
    }
    for row in &mut rows {
        row.ids.sort_unstable();
    }
    rows.extend(loose.chunks(chunk).map(|ids| NewRow {
        lane: None,
        ids: ids.to_vec(),
    }));
    rows
}

/// A claim row as read by a poll, ack or nack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The row's id.
    pub id: i64,
    /// True for a lane of an ordered group.
    pub lane: bool,
    /// Event ids.
    pub ids: Vec<i64>,
    /// Deliveries so far, per event.
    pub attempts: Vec<i32>,
    /// The first `inflight` events are held under the row's lease.
    pub inflight: usize,
}

/// A source a poll takes events from, in the order it should take them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A claim row whose lease ran out (its in-flight events are redelivered) or that
    /// is pending.
    Row(Row),
    /// A nacked event whose retry is due (removed from the retries table).
    Retry {
        /// Event id.
        id: i64,
        /// Deliveries so far.
        attempts: i32,
    },
}

/// How a poll changes one claim row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// New contents, leased to the polling worker.
    Lease {
        /// Row id.
        row: i64,
        /// Event ids.
        ids: Vec<i64>,
        /// Deliveries so far, per event.
        attempts: Vec<i32>,
        /// Events held under the lease.
        inflight: usize,
    },
    /// New contents; the lease (or its absence) stays as it is.
    Keep {
        /// Row id.
        row: i64,
        /// Event ids.
        ids: Vec<i64>,
        /// Deliveries so far, per event.
        attempts: Vec<i32>,
        /// Events held under the lease.
        inflight: usize,
    },
    /// New contents, pending again (no lease): a lane whose head left it.
    Release {
        /// Row id.
        row: i64,
        /// Event ids.
        ids: Vec<i64>,
        /// Deliveries so far, per event.
        attempts: Vec<i32>,
    },
    /// Nothing left in the row.
    Delete {
        /// Row id.
        row: i64,
    },
    /// A new chunk, all in flight, leased to the polling worker.
    Insert {
        /// Event ids.
        ids: Vec<i64>,
        /// Deliveries so far (this one included), per event.
        attempts: Vec<i32>,
    },
}

/// What a poll hands out and writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Event ids with the attempt number of this delivery, in delivery order.
    pub deliver: Vec<(i64, i32)>,
    /// Event ids whose last attempt's lease ran out, with their attempts: dead letters.
    pub dead: Vec<(i64, i32)>,
    /// The row changes; rows of the sources not named here stay untouched.
    pub writes: Vec<Write>,
}

/// What a poll may claim from `sources` (taken in order) for a batch of `room` events
/// in a group allowing `max_attempts` deliveries.
///
/// In-flight events of a source row were delivered and their lease ran out: they are
/// offered again with attempt + 1, or dead-lettered once they had `max_attempts`.
/// Chunk events and retries go into ONE leased row per batch (a fully taken chunk row
/// is reused for it, others are deleted, a partly taken one keeps the rest). A lane
/// hands out only its head and is leased as a whole.
pub fn plan_poll(sources: &[Source], room: usize, max_attempts: i32) -> Plan {
    let mut plan = Plan::default();
    let mut batch: Vec<(i64, i32)> = Vec::new();
    let mut reusable: Option<i64> = None;
    for source in sources {
        if plan.deliver.len() >= room {
            break;
        }
        match source {
            Source::Retry { id, attempts } => {
                let next = attempts.saturating_add(1);
                plan.deliver.push((*id, next));
                batch.push((*id, next));
            }
            Source::Row(row) if row.lane => take_lane(row, max_attempts, &mut plan),
            Source::Row(row) => {
                let mut taken = 0;
                while taken < row.ids.len() && plan.deliver.len() < room {
                    let (id, done) = (row.ids[taken], attempt_of(row, taken));
                    if taken < row.inflight && done >= max_attempts {
                        plan.dead.push((id, done));
                    } else {
                        let next = done.saturating_add(1);
                        plan.deliver.push((id, next));
                        batch.push((id, next));
                    }
                    taken += 1;
                }
                if taken == row.ids.len() {
                    if reusable.is_none() {
                        reusable = Some(row.id);
                    } else {
                        plan.writes.push(Write::Delete { row: row.id });
                    }
                } else {
                    plan.writes.push(Write::Keep {
                        row: row.id,
                        ids: row.ids[taken..].to_vec(),
                        attempts: (taken..row.ids.len()).map(|i| attempt_of(row, i)).collect(),
                        inflight: row.inflight.saturating_sub(taken),
                    });
                }
            }
        }
    }
    let (ids, attempts): (Vec<i64>, Vec<i32>) = batch.into_iter().unzip();
    match (reusable, ids.is_empty()) {
        (Some(row), true) => plan.writes.push(Write::Delete { row }),
        (Some(row), false) => plan.writes.push(Write::Lease {
            row,
            inflight: ids.len(),
            ids,
            attempts,
        }),
        (None, false) => plan.writes.push(Write::Insert { ids, attempts }),
        (None, true) => {}
    }
    plan
}

/// Deliveries so far of a row's event `i`; a row read from the table has as many
/// attempts as ids (checked when read), so a missing one only counts as none.
fn attempt_of(row: &Row, i: usize) -> i32 {
    row.attempts.get(i).copied().unwrap_or(0)
}

/// Takes the head of a lane: a head whose lease ran out on its last attempt is
/// dead-lettered and the next event becomes the head.
fn take_lane(row: &Row, max_attempts: i32, plan: &mut Plan) {
    let mut at = 0;
    while at < row.ids.len() {
        let done = attempt_of(row, at);
        if at < row.inflight && done >= max_attempts {
            plan.dead.push((row.ids[at], done));
            at += 1;
            continue;
        }
        break;
    }
    let rest_ids = row.ids[at..].to_vec();
    let mut rest_attempts: Vec<i32> = (at..row.ids.len()).map(|i| attempt_of(row, i)).collect();
    let Some(&head) = rest_ids.first() else {
        plan.writes.push(Write::Delete { row: row.id });
        return;
    };
    rest_attempts[0] = rest_attempts[0].saturating_add(1);
    plan.deliver.push((head, rest_attempts[0]));
    plan.writes.push(Write::Lease {
        row: row.id,
        ids: rest_ids,
        attempts: rest_attempts,
        inflight: 1,
    });
}

/// Which rows a poll still needs: how many more events `sources` can not cover.
pub fn still_wanted(sources: &[Source], room: usize, max_attempts: i32) -> usize {
    room.saturating_sub(plan_poll(sources, room, max_attempts).deliver.len())
}

/// How `ack` changes a row holding some of `acked`: in-flight events named in `acked`
/// leave it; pending ones (never handed out) stay. `None` when the row is unchanged.
pub fn ack_row(row: &Row, acked: &[i64]) -> Option<(Write, usize)> {
    let inflight = row.inflight.min(row.ids.len());
    let gone: Vec<usize> = (0..inflight)
        .filter(|&i| acked.contains(&row.ids[i]))
        .collect();
    if gone.is_empty() {
        return None;
    }
    let keep = |i: &usize| !gone.contains(i);
    let ids: Vec<i64> = (0..row.ids.len())
        .filter(keep)
        .map(|i| row.ids[i])
        .collect();
    let attempts: Vec<i32> = (0..row.ids.len())
        .filter(keep)
        .map(|i| attempt_of(row, i))
        .collect();
    let inflight = inflight - gone.len();
    let write = if ids.is_empty() {
        Write::Delete { row: row.id }
    } else if inflight == 0 {
        Write::Release {
            row: row.id,
            ids,
            attempts,
        }
    } else {
        Write::Keep {
            row: row.id,
            ids,
            attempts,
            inflight,
        }
    };
    Some((write, gone.len()))
}

/// What `nack` of an in-flight event does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nack {
    /// The event leaves its row (`write`) and waits in the retries table.
    Retry {
        /// The row without the event.
        write: Write,
        /// Deliveries so far.
        attempts: i32,
    },
    /// The head of a lane stays in it, blocking its aggregate, until the retry is due:
    /// the row's lease is set to the retry time.
    RetryInLane {
        /// Deliveries so far.
        attempts: i32,
    },
    /// Last attempt: the event leaves its row (`write`) for the dead letters.
    Dead {
        /// The row without the event.
        write: Write,
        /// Deliveries so far.
        attempts: i32,
    },
}

/// What `nack` of event `id`, in flight in `row`, does in a group allowing
/// `max_attempts` deliveries; `None` if `row` does not hold `id` in flight.
pub fn nack_row(row: &Row, id: i64, max_attempts: i32) -> Option<Nack> {
    let inflight = row.inflight.min(row.ids.len());
    let at = row.ids[..inflight].iter().position(|&e| e == id)?;
    let attempts = attempt_of(row, at);
    if row.lane && attempts < max_attempts {
        return Some(Nack::RetryInLane { attempts });
    }
    let (write, _) = ack_row(row, &[id])?;
    Some(if attempts >= max_attempts {
        Nack::Dead { write, attempts }
    } else {
        Nack::Retry { write, attempts }
    })
}

#[cfg(test)]
mod tests;
