//! Unit tests of the delivery state machine, and a property test that runs it against
//! a model of Postgres: sessions that begin, emit, commit and roll back in random
//! interleavings, workers that poll, ack, nack and die, and a clock that lets leases
//! and retries run out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::*;

fn snap(text: &str) -> Snapshot {
    Snapshot::parse(text).unwrap_or_else(|| panic!("{text}"))
}

fn ev(id: i64, txid: u64, aggregate: Option<&str>) -> Event {
    Event {
        id,
        txid,
        aggregate_id: aggregate.map(str::to_owned),
    }
}

fn chunk(id: i64, ids: &[i64], attempts: &[i32], inflight: usize) -> Row {
    Row {
        id,
        lane: false,
        ids: ids.to_vec(),
        attempts: attempts.to_vec(),
        inflight,
    }
}

fn lane(id: i64, ids: &[i64], attempts: &[i32], inflight: usize) -> Row {
    Row {
        lane: true,
        ..chunk(id, ids, attempts, inflight)
    }
}

#[test]
fn pack_makes_chunks_in_read_order_and_lanes_per_aggregate() {
    let events = [
        ev(5, 10, Some("a")),
        ev(3, 11, Some("b")),
        ev(2, 12, Some("a")),
        ev(7, 12, None),
        ev(8, 12, None),
        ev(9, 12, None),
    ];
    let unordered = pack(&events, false, 4);
    assert_eq!(
        unordered,
        vec![
            NewRow {
                lane: None,
                ids: vec![5, 3, 2, 7]
            },
            NewRow {
                lane: None,
                ids: vec![8, 9]
            }
        ]
    );
    let ordered = pack(&events, true, 2);
    assert_eq!(
        ordered,
        vec![
            NewRow {
                lane: Some("a".into()),
                ids: vec![2, 5]
            },
            NewRow {
                lane: Some("b".into()),
                ids: vec![3]
            },
            NewRow {
                lane: None,
                ids: vec![7, 8]
            },
            NewRow {
                lane: None,
                ids: vec![9]
            },
        ]
    );
}

#[test]
fn a_poll_takes_one_pending_chunk_as_its_batch() {
    let plan = plan_poll(&[Source::Row(chunk(1, &[4, 5], &[0, 0], 0))], 2, 3);
    assert_eq!(plan.deliver, vec![(4, 1), (5, 1)]);
    assert_eq!(
        plan.writes,
        vec![Write::Lease {
            row: 1,
            ids: vec![4, 5],
            attempts: vec![1, 1],
            inflight: 2
        }]
    );
}

#[test]
fn a_smaller_poll_splits_a_chunk_and_a_bigger_one_merges_chunks() {
    let rows = [
        Source::Row(chunk(1, &[4, 5, 6], &[0, 0, 0], 0)),
        Source::Row(chunk(2, &[7, 8], &[0, 0], 0)),
    ];
    let plan = plan_poll(&rows[..1], 2, 3);
    assert_eq!(plan.deliver, vec![(4, 1), (5, 1)]);
    assert_eq!(
        plan.writes,
        vec![
            Write::Keep {
                row: 1,
                ids: vec![6],
                attempts: vec![0],
                inflight: 0
            },
            Write::Insert {
                ids: vec![4, 5],
                attempts: vec![1, 1]
            }
        ]
    );
    let plan = plan_poll(&rows, 4, 3);
    assert_eq!(plan.deliver, vec![(4, 1), (5, 1), (6, 1), (7, 1)]);
    assert_eq!(
        plan.writes,
        vec![
            Write::Keep {
                row: 2,
                ids: vec![8],
                attempts: vec![0],
                inflight: 0
            },
            Write::Lease {
                row: 1,
                ids: vec![4, 5, 6, 7],
                attempts: vec![1, 1, 1, 1],
                inflight: 4
            }
        ]
    );
    assert_eq!(still_wanted(&rows, 4, 3), 0);
    assert_eq!(still_wanted(&rows, 9, 3), 4);
}

#[test]
fn expired_events_come_back_with_the_next_attempt_or_die_on_their_last() {
    let sources = [
        Source::Row(chunk(1, &[4, 5], &[3, 1], 2)),
        Source::Retry { id: 9, attempts: 2 },
    ];
    let plan = plan_poll(&sources, 10, 3);
    assert_eq!(plan.deliver, vec![(5, 2), (9, 3)]);
    assert_eq!(plan.dead, vec![(4, 3)]);
    assert_eq!(
        plan.writes,
        vec![Write::Lease {
            row: 1,
            ids: vec![5, 9],
            attempts: vec![2, 3],
            inflight: 2
        }]
    );
    // Everything dead: the row goes.
    let plan = plan_poll(&[Source::Row(chunk(1, &[4], &[3], 1))], 10, 3);
    assert!(plan.deliver.is_empty());
    assert_eq!(plan.writes, vec![Write::Delete { row: 1 }]);
}

#[test]
fn a_lane_hands_out_its_head_only() {
    let plan = plan_poll(
        &[
            Source::Row(lane(1, &[4, 6], &[0, 0], 0)),
            Source::Row(lane(2, &[5], &[0], 0)),
        ],
        10,
        3,
    );
    assert_eq!(plan.deliver, vec![(4, 1), (5, 1)]);
    assert_eq!(
        plan.writes,
        vec![
            Write::Lease {
                row: 1,
                ids: vec![4, 6],
                attempts: vec![1, 0],
                inflight: 1
            },
            Write::Lease {
                row: 2,
                ids: vec![5],
                attempts: vec![1],
                inflight: 1
            }
        ]
    );
    // An expired head on its last attempt dies; the next one is handed out.
    let plan = plan_poll(&[Source::Row(lane(1, &[4, 6], &[3, 0], 1))], 10, 3);
    assert_eq!(plan.dead, vec![(4, 3)]);
    assert_eq!(plan.deliver, vec![(6, 1)]);
    // An expired head with attempts left comes back.
    let plan = plan_poll(&[Source::Row(lane(1, &[4, 6], &[1, 0], 1))], 10, 3);
    assert_eq!(plan.deliver, vec![(4, 2)]);
    assert_eq!(
        plan_poll(&[Source::Row(lane(1, &[4], &[3], 1))], 10, 3).writes,
        vec![Write::Delete { row: 1 }]
    );
}

#[test]
fn ack_removes_in_flight_events_only() {
    let row = chunk(1, &[4, 5, 6], &[1, 1, 1], 3);
    assert_eq!(
        ack_row(&row, &[5, 99]),
        Some((
            Write::Keep {
                row: 1,
                ids: vec![4, 6],
                attempts: vec![1, 1],
                inflight: 2
            },
            1
        ))
    );
    assert_eq!(
        ack_row(&row, &[4, 5, 6]),
        Some((Write::Delete { row: 1 }, 3))
    );
    assert_eq!(ack_row(&row, &[7]), None);
    // A lane whose head is acked is pending again; its later events were never
    // handed out, so acking them does nothing.
    let row = lane(1, &[4, 6], &[1, 0], 1);
    assert_eq!(ack_row(&row, &[6]), None);
    assert_eq!(
        ack_row(&row, &[4, 6]),
        Some((
            Write::Release {
                row: 1,
                ids: vec![6],
                attempts: vec![0]
            },
            1
        ))
    );
}

#[test]
fn nack_retries_dead_letters_or_keeps_a_lane_blocked() {
    let row = chunk(1, &[4, 5], &[1, 3], 2);
    assert_eq!(
        nack_row(&row, 4, 3),
        Some(Nack::Retry {
            write: Write::Keep {
                row: 1,
                ids: vec![5],
                attempts: vec![3],
                inflight: 1
            },
            attempts: 1
        })
    );
    assert_eq!(
        nack_row(&row, 5, 3),
        Some(Nack::Dead {
            write: Write::Keep {
                row: 1,
                ids: vec![4],
                attempts: vec![1],
                inflight: 1
            },
            attempts: 3
        })
    );
    assert_eq!(nack_row(&row, 6, 3), None);
    let row = lane(1, &[4, 6], &[2, 0], 1);
    assert_eq!(
        nack_row(&row, 4, 3),
        Some(Nack::RetryInLane { attempts: 2 })
    );
    assert_eq!(nack_row(&row, 6, 3), None, "6 is not handed out yet");
    let row = lane(1, &[4, 6], &[3, 0], 1);
    assert_eq!(
        nack_row(&row, 4, 3),
        Some(Nack::Dead {
            write: Write::Release {
                row: 1,
                ids: vec![6],
                attempts: vec![0]
            },
            attempts: 3
        })
    );
}

/// The outbox of a [`tick`] test: events with their transaction, all committed.
fn reader(events: Vec<Event>) -> impl FnMut(&Snapshot, &Read, usize) -> Result<Vec<Event>, ()> {
    move |range, read, limit| Ok(read_outbox(&events, &|_| true, range, read, limit))
}

#[test]
fn a_tick_reads_the_stored_range_then_a_fresh_one_and_keeps_its_place() {
    // done: 10 and 12 running. 10 committed later; 13, 14 are new.
    let mut cursor = Cursor {
        done: snap("10:13:10,12"),
        range: None,
        pos: Position { txid: 10, id: 0 },
    };
    let events = vec![ev(1, 10, None), ev(5, 13, None), ev(6, 14, None)];
    let mut read = reader(events);
    let t = tick(&mut cursor, 2, || Ok(snap("12:15:12")), &mut read).expect("tick");
    assert_eq!(t.events.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 5]);
    assert!(t.changed);
    assert_eq!(cursor.range, Some(snap("12:15:12")));
    assert_eq!(cursor.pos, Position { txid: 13, id: 5 });
    // The rest of the stored range, then a fresh one with nothing new.
    let t = tick(&mut cursor, 10, || Ok(snap("12:15:12")), &mut read).expect("tick");
    assert_eq!(t.events.iter().map(|e| e.id).collect::<Vec<_>>(), [6]);
    assert!(t.changed);
    assert_eq!(cursor.range, None);
    assert_eq!(cursor.done, snap("12:15:12"));
    // Idle: nothing read, nothing to write back.
    let t = tick(&mut cursor, 10, || Ok(snap("12:15:12")), &mut read).expect("tick");
    assert!(t.events.is_empty());
    assert!(!t.changed);
}

/// `pg_visible_in_snapshot`.
fn visible(txid: u64, s: &Snapshot) -> bool {
    txid < s.xmin || (txid < s.xmax && s.xip.binary_search(&txid).is_err())
}

/// The two outbox reads of `consumer.rs`, over `events` (in id order) of which the
/// reading statement sees those that `committed` accepts.
fn read_outbox(
    events: &[Event],
    committed: &dyn Fn(u64) -> bool,
    range: &Snapshot,
    read: &Read,
    limit: usize,
) -> Vec<Event> {
    let from = read.from();
    let mut out: Vec<Event> = events
        .iter()
        .filter(|e| committed(e.txid) && visible(e.txid, range))
        .filter(|e| (e.txid, e.id) > (from.txid, from.id))
        .filter(|e| match read {
            Read::Running { xids, .. } => xids.contains(&e.txid),
            Read::Tail { .. } => e.txid < range.xmax,
        })
        .cloned()
        .collect();
    out.sort_by_key(|e| (e.txid, e.id));
    out.truncate(limit);
    out
}

/// splitmix64: a seeded generator, so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A claim row of the model with its lease (`None`: pending).
#[derive(Clone, Debug)]
struct Stored {
    row: Row,
    lane: Option<String>,
    lease: Option<u64>,
}

#[derive(Default)]
struct Session {
    open: bool,
    xid: Option<u64>,
    emitted: Vec<i64>,
    /// Aggregates this transaction emitted for: in an ordered test they are locked,
    /// as an application updating the aggregate's row would lock it.
    aggregates: Vec<String>,
}

/// Postgres, one consumer group and its workers, as far as delivery is concerned.
struct Model {
    ordered: bool,
    max_attempts: i32,
    now: u64,
    next_xid: u64,
    next_id: i64,
    next_row: i64,
    running: BTreeSet<u64>,
    committed: HashSet<u64>,
    events: Vec<Event>,
    rows: BTreeMap<i64, Stored>,
    retries: Vec<(i64, i32, u64)>,
    cursor: Cursor,
    dead: HashMap<i64, i32>,
    acked: HashMap<i64, usize>,
    delivered: HashSet<i64>,
    /// Per aggregate, ids handed out so far, in order of first delivery.
    first_delivery: HashMap<String, Vec<i64>>,
}

const LEASE: u64 = 10;

impl Model {
    fn new(ordered: bool, max_attempts: i32) -> Model {
        Model {
            ordered,
            max_attempts,
            now: 0,
            next_xid: 100,
            next_id: 1,
            next_row: 1,
            running: BTreeSet::new(),
            committed: HashSet::new(),
            events: Vec::new(),
            rows: BTreeMap::new(),
            retries: Vec::new(),
            cursor: Cursor {
                done: snap("100:100:"),
                range: None,
                pos: Position { txid: 100, id: 0 },
            },
            dead: HashMap::new(),
            acked: HashMap::new(),
            delivered: HashSet::new(),
            first_delivery: HashMap::new(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let xip: Vec<u64> = self.running.iter().copied().collect();
        Snapshot {
            xmin: xip.first().copied().unwrap_or(self.next_xid),
            xmax: self.next_xid,
            xip,
        }
    }

    fn aggregate_of(&self, id: i64) -> Option<String> {
        self.events
            .iter()
            .find(|e| e.id == id)
            .and_then(|e| e.aggregate_id.clone())
    }

    fn emit(&mut self, s: &mut Session, aggregate: Option<String>) {
        let xid = *s.xid.get_or_insert_with(|| {
            self.next_xid += 1;
            self.running.insert(self.next_xid - 1);
            self.next_xid - 1
        });
        self.events.push(Event {
            id: self.next_id,
            txid: xid,
            aggregate_id: aggregate.clone(),
        });
        s.emitted.push(self.next_id);
        if let Some(a) = aggregate {
            s.aggregates.push(a);
        }
        self.next_id += 1;
    }

    fn finish(&mut self, s: &mut Session, commit: bool) {
        if let Some(xid) = s.xid {
            self.running.remove(&xid);
            if commit {
                self.committed.insert(xid);
            }
        }
        *s = Session::default();
    }

    fn tick(&mut self, want: usize) {
        let target = if self.ordered { usize::MAX } else { want * 4 };
        let snapshot = self.snapshot();
        let committed = self.committed.clone();
        let events = self.events.clone();
        let t = tick(
            &mut self.cursor,
            target,
            || Ok::<_, ()>(snapshot.clone()),
            |range, read, limit| {
                Ok(read_outbox(
                    &events,
                    &|x| committed.contains(&x),
                    range,
                    read,
                    limit,
                ))
            },
        )
        .expect("tick");
        for new in pack(&t.events, self.ordered, want) {
            let existing = new.lane.as_ref().and_then(|l| {
                self.rows
                    .values_mut()
                    .find(|s| s.lane.as_deref() == Some(l.as_str()))
            });
            match existing {
                Some(stored) => {
                    stored.row.ids.extend(&new.ids);
                    stored.row.attempts.extend(new.ids.iter().map(|_| 0));
                }
                None => {
                    let id = self.next_row;
                    self.next_row += 1;
                    self.rows.insert(
                        id,
                        Stored {
                            row: Row {
                                id,
                                lane: new.lane.is_some(),
                                attempts: vec![0; new.ids.len()],
                                ids: new.ids,
                                inflight: 0,
                            },
                            lane: new.lane,
                            lease: None,
                        },
                    );
                }
            }
        }
    }

    /// One poll, the way `poll::poll` gathers its sources.
    fn poll(&mut self, room: usize) -> Vec<(i64, i32)> {
        let max = self.max_attempts;
        let mut expired: Vec<&Stored> = self
            .rows
            .values()
            .filter(|s| s.lease.is_some_and(|l| l < self.now))
            .collect();
        expired.sort_by_key(|s| (s.lease, s.row.id));
        let mut sources: Vec<Source> = expired
            .into_iter()
            .take(room)
            .map(|s| Source::Row(s.row.clone()))
            .collect();
        let want = still_wanted(&sources, room, max);
        if want > 0 {
            self.retries.sort_by_key(|&(id, _, due)| (due, id));
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.retries.iter().partition(|&&(_, _, d)| d <= now);
            sources.extend(
                due.iter()
                    .take(want)
                    .map(|&(id, attempts, _)| Source::Retry { id, attempts }),
            );
            let kept: Vec<_> = due.into_iter().skip(want).chain(later).collect();
            self.retries = kept;
        }
        let mut ticked = false;
        loop {
            let want = still_wanted(&sources, room, max);
            if want == 0 {
                break;
            }
            let taken: HashSet<i64> = sources
                .iter()
                .filter_map(|s| match s {
                    Source::Row(r) => Some(r.id),
                    Source::Retry { .. } => None,
                })
                .collect();
            let limit = if self.ordered { want } else { 1 };
            let pending: Vec<Source> = self
                .rows
                .values()
                .filter(|s| s.lease.is_none() && !taken.contains(&s.row.id))
                .take(limit)
                .map(|s| Source::Row(s.row.clone()))
                .collect();
            if !pending.is_empty() {
                sources.extend(pending);
                continue;
            }
            let holds_rows = sources.iter().any(|s| matches!(s, Source::Row(_)));
            if ticked || (self.ordered && holds_rows) {
                break;
            }
            self.tick(room);
            ticked = true;
            // A tick may have appended to a lane already among the sources.
            for source in &mut sources {
                if let Source::Row(r) = source {
                    if let Some(s) = self.rows.get(&r.id) {
                        *r = s.row.clone();
                    }
                }
            }
        }
        let plan = plan_poll(&sources, room, max);
        for write in plan.writes {
            self.apply(write, Some(self.now + LEASE));
        }
        for (id, attempts) in plan.dead {
            assert!(attempts >= max, "{id} dead after {attempts}");
            assert!(self.dead.insert(id, attempts).is_none(), "{id} dead twice");
        }
        for &(id, _) in &plan.deliver {
            let event = self.events.iter().find(|e| e.id == id).expect("an event");
            assert!(
                self.committed.contains(&event.txid),
                "{id} of an uncommitted or rolled-back transaction delivered"
            );
            assert!(!self.dead.contains_key(&id), "{id} delivered after dying");
            assert!(
                !self.acked.contains_key(&id),
                "{id} delivered after its ack"
            );
            self.delivered.insert(id);
            if self.ordered {
                if let Some(a) = self.aggregate_of(id) {
                    let seen = self.first_delivery.entry(a.clone()).or_default();
                    for &earlier in seen.iter() {
                        assert!(
                            earlier == id
                                || self.acked.contains_key(&earlier)
                                || self.dead.contains_key(&earlier),
                            "{id} of aggregate {a} handed out while {earlier} is not done"
                        );
                    }
                    if !seen.contains(&id) {
                        if let Some(&last) = seen.last() {
                            assert!(last < id, "aggregate {a}: {id} after {last}");
                        }
                        seen.push(id);
                    }
                }
            }
        }
        plan.deliver
    }

    fn apply(&mut self, write: Write, lease: Option<u64>) {
        let set = |s: &mut Stored, ids: Vec<i64>, attempts: Vec<i32>, inflight: usize| {
            s.row.ids = ids;
            s.row.attempts = attempts;
            s.row.inflight = inflight;
        };
        match write {
            Write::Lease {
                row,
                ids,
                attempts,
                inflight,
            } => {
                let s = self.rows.get_mut(&row).expect("row");
                set(s, ids, attempts, inflight);
                s.lease = lease;
            }
            Write::Keep {
                row,
                ids,
                attempts,
                inflight,
            } => set(
                self.rows.get_mut(&row).expect("row"),
                ids,
                attempts,
                inflight,
            ),
            Write::Release { row, ids, attempts } => {
                let s = self.rows.get_mut(&row).expect("row");
                set(s, ids, attempts, 0);
                s.lease = None;
            }
            Write::Delete { row } => {
                self.rows.remove(&row);
            }
            Write::Insert { ids, attempts } => {
                let id = self.next_row;
                self.next_row += 1;
                self.rows.insert(
                    id,
                    Stored {
                        row: Row {
                            id,
                            lane: false,
                            inflight: ids.len(),
                            ids,
                            attempts,
                        },
                        lane: None,
                        lease,
                    },
                );
            }
        }
    }

    /// The rows `ack` and `nack` look at: leased rows holding one of `ids`.
    fn leased_with(&self, ids: &[i64]) -> Vec<Row> {
        self.rows
            .values()
            .filter(|s| s.lease.is_some() && s.row.ids.iter().any(|i| ids.contains(i)))
            .map(|s| s.row.clone())
            .collect()
    }

    fn ack(&mut self, ids: &[i64]) {
        for row in self.leased_with(ids) {
            if let Some((write, _)) = ack_row(&row, ids) {
                for &id in &row.ids[..row.inflight] {
                    if ids.contains(&id) {
                        *self.acked.entry(id).or_default() += 1;
                    }
                }
                let lease = self.rows[&row.id].lease;
                self.apply(write, lease);
            }
        }
    }

    fn nack(&mut self, id: i64, delay: u64) {
        let Some(row) = self.leased_with(&[id]).into_iter().next() else {
            return;
        };
        let lease = self.rows[&row.id].lease;
        match nack_row(&row, id, self.max_attempts) {
            None => {}
            Some(Nack::Retry { write, attempts }) => {
                self.apply(write, lease);
                self.retries.push((id, attempts, self.now + delay));
            }
            Some(Nack::RetryInLane { .. }) => {
                self.rows.get_mut(&row.id).expect("row").lease = Some(self.now + delay);
            }
            Some(Nack::Dead { write, attempts }) => {
                self.apply(write, lease);
                assert!(self.dead.insert(id, attempts).is_none(), "{id} dead twice");
            }
        }
    }
}

/// Random interleavings; at the end every transaction finishes, the workers drain the
/// group, and every committed event must be acked exactly once or be dead after its
/// last attempt; nothing rolled back or uncommitted is ever handed out (checked at
/// every poll), and in ordered groups an aggregate's events come one at a time, in
/// emission order.
fn run(seed: u64, ordered: bool) {
    let mut rng = Rng(seed);
    let max_attempts = 1 + rng.below(4) as i32;
    let mut m = Model::new(ordered, max_attempts);
    let mut sessions: Vec<Session> = (0..4).map(|_| Session::default()).collect();
    let mut workers: Vec<Vec<i64>> = vec![Vec::new(); 1 + rng.below(5)];
    let aggregates = 1 + rng.below(6);
    for _ in 0..300 {
        let s = rng.below(sessions.len());
        match rng.below(12) {
            0..=3 => {
                let mut session = std::mem::take(&mut sessions[s]);
                session.open = true;
                let mut aggregate = match rng.below(3) {
                    0 => None,
                    _ => Some(format!("a{}", rng.below(aggregates))),
                };
                // An aggregate locked by another open transaction: emit without one.
                if let Some(a) = &aggregate {
                    if sessions.iter().any(|o| o.aggregates.contains(a)) {
                        aggregate = None;
                    }
                }
                m.emit(&mut session, aggregate);
                sessions[s] = session;
            }
            4 | 5 => {
                let mut session = std::mem::take(&mut sessions[s]);
                let commit = rng.below(4) > 0;
                m.finish(&mut session, commit);
            }
            6 | 7 => {
                let w = rng.below(workers.len());
                let room = 1 + rng.below(6);
                let got = m.poll(room);
                workers[w].extend(got.iter().map(|&(id, _)| id));
            }
            8 => {
                let w = rng.below(workers.len());
                let held = std::mem::take(&mut workers[w]);
                let (now, later): (Vec<i64>, Vec<i64>) =
                    held.into_iter().partition(|_| rng.below(3) > 0);
                m.ack(&now);
                workers[w] = later;
            }
            9 => {
                let w = rng.below(workers.len());
                if !workers[w].is_empty() {
                    let at = rng.below(workers[w].len());
                    let id = workers[w].remove(at);
                    m.nack(id, rng.below(2 * LEASE as usize) as u64);
                }
            }
            10 => {
                // The worker dies with what it holds.
                let w = rng.below(workers.len());
                workers[w].clear();
            }
            _ => m.now += rng.below(LEASE as usize) as u64,
        }
    }
    for session in &mut sessions {
        let commit = rng.below(2) > 0;
        m.finish(session, commit);
    }
    // Drain: workers ack what they get; time passes so leases and retries run out.
    // Until a poll that started with no claim row finds nothing: in an ordered group, a
    // poll that took only lanes whose heads all died returns nothing without reading
    // the outbox (it does not tick while holding lanes); a poll holding none does.
    for _ in 0..10_000 {
        let idle = m.rows.is_empty();
        let got = m.poll(1 + rng.below(6));
        if idle && got.is_empty() && m.rows.is_empty() && m.retries.is_empty() {
            break;
        }
        let ids: Vec<i64> = got.iter().map(|&(id, _)| id).collect();
        m.ack(&ids);
        m.now += 1 + LEASE;
    }
    for held in &workers {
        m.ack(held); // late acks of redelivered events: no-ops
    }
    let committed: Vec<i64> = m
        .events
        .iter()
        .filter(|e| m.committed.contains(&e.txid))
        .map(|e| e.id)
        .collect();
    for id in &committed {
        let acks = m.acked.get(id).copied().unwrap_or(0);
        match m.dead.get(id) {
            Some(&attempts) => {
                assert_eq!(acks, 0, "seed {seed}: {id} acked and dead");
                assert!(attempts >= max_attempts, "seed {seed}: {id}");
            }
            None => assert_eq!(
                acks,
                1,
                "seed {seed}: {id} acked {acks} times; delivered {}; rows {:?}; cursor {:?}; event {:?}",
                m.delivered.contains(id),
                m.rows,
                m.cursor,
                m.events.iter().find(|e| e.id == *id)
            ),
        }
    }
    for e in &m.events {
        if !m.committed.contains(&e.txid) {
            assert!(!m.delivered.contains(&e.id), "seed {seed}: {}", e.id);
        }
    }
    assert!(m.rows.is_empty(), "seed {seed}: claim rows left");
}

#[test]
fn property_every_committed_event_is_acked_once_or_dead_unordered() {
    for seed in 0..400 {
        run(seed, false);
    }
}

#[test]
fn property_every_committed_event_is_acked_once_or_dead_ordered() {
    for seed in 1000..1400 {
        run(seed, true);
    }
}
