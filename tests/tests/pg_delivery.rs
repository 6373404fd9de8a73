//! txevents consumer groups against a private Postgres cluster: poll/ack in batches,
//! out-of-order commits, long transactions, crash redelivery, retries with backoff,
//! dead letters and redrive, fan-out, concurrent workers, prune, bad input.

mod pg_common;

use std::collections::HashSet;
use std::thread;
use std::time::Duration;

use cachetx_tests::{pg, wait_until};
use pg_common::*;
use postgres::Client;

fn create(client: &mut Client, sql_args: &str) {
    client
        .batch_execute(&format!("SELECT txevents.create_consumer({sql_args})"))
        .expect("create_consumer");
}

#[test]
fn poll_claims_batches_and_ack_removes_them() {
    let db = pg().create_db("poll_claims_batches_and_ack");
    let mut c = db.connect();
    create(&mut c, "'g'");
    let ids: Vec<i64> = (0..5).map(|i| emit(&mut c, &format!("e.n{i}"))).collect();

    let first = poll(&mut c, "g", 2, "30s");
    assert_eq!(polled_ids(&first), ids[..2]);
    assert!(
        first.iter().all(|p| p.2 == 1),
        "first delivery is attempt 1"
    );
    assert_eq!(first[0].1, "e.n0");
    let second = poll(&mut c, "g", 2, "30s");
    assert_eq!(polled_ids(&second), ids[2..4]);
    let third = poll(&mut c, "g", 100, "30s");
    assert_eq!(polled_ids(&third), ids[4..]);
    assert!(poll(&mut c, "g", 100, "30s").is_empty());
    // One claim row per batch, not per event.
    assert_eq!(count(&mut c, "SELECT count(*) FROM txevents.claims"), 3);

    // Acking part of a batch shrinks its claim; acking the rest deletes it.
    assert_eq!(ack(&mut c, "g", &ids[..1]), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM txevents.claims"), 3);
    assert_eq!(ack(&mut c, "g", &ids[1..]), 4);
    assert_eq!(ack(&mut c, "g", &ids), 0, "nothing left to ack");
    assert_eq!(count(&mut c, "SELECT count(*) FROM txevents.claims"), 0);

    // Every column of a polled row.
    let id: i64 = c
        .query_one(
            "SELECT txevents.emit('candidate.created', '{\"id\": 42}', 'candidate', '42', '{\"trace\": \"t\"}')",
            &[],
        )
        .expect("emit")
        .get(0);
    let row = c
        .query_one(
            "SELECT id, event_type, aggregate_type, aggregate_id, payload::text, headers::text,
                    occurred_at = (SELECT occurred_at FROM txevents.outbox WHERE id = p.id), attempt
               FROM txevents.poll('g') p",
            &[],
        )
        .expect("poll one");
    assert_eq!(row.get::<_, i64>(0), id);
    assert_eq!(row.get::<_, String>(1), "candidate.created");
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("candidate")
    );
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("42"));
    assert_eq!(row.get::<_, String>(4), r#"{"id": 42}"#);
    assert_eq!(row.get::<_, String>(5), r#"{"trace": "t"}"#);
    assert!(row.get::<_, bool>(6));
    assert_eq!(row.get::<_, i32>(7), 1);
}

#[test]
fn out_of_order_commits_skip_nothing_and_long_transactions_block_nobody() {
    let db = pg().create_db("out_of_order_commits_skip_nothing");
    let mut admin = db.connect();
    create(&mut admin, "'g'");
    let mut a = db.connect();
    let mut b = db.connect();

    // A emits first (lower id) and stays open.
    a.batch_execute("BEGIN").expect("begin A");
    let a_id = emit(&mut a, "a.first");
    // B emits later (higher id) and commits first.
    let b_id = emit(&mut b, "b.second");
    assert!(a_id < b_id);

    let got = poll(&mut admin, "g", 100, "30s");
    assert_eq!(polled_ids(&got), [b_id], "A is not committed yet");
    assert_eq!(ack(&mut admin, "g", &[b_id]), 1);

    // While A is still open, later commits keep flowing.
    let more: Vec<i64> = (0..3)
        .map(|i| emit(&mut b, &format!("b.more{i}")))
        .collect();
    let got = poll(&mut admin, "g", 100, "30s");
    assert_eq!(
        polled_ids(&got),
        more,
        "an open transaction holds back nobody"
    );
    ack(&mut admin, "g", &more);
    assert!(poll(&mut admin, "g", 100, "30s").is_empty());

    a.batch_execute("COMMIT").expect("commit A");
    let got = poll(&mut admin, "g", 100, "30s");
    assert_eq!(polled_ids(&got), [a_id], "A's event arrives once A commits");
    ack(&mut admin, "g", &[a_id]);
    assert!(poll(&mut admin, "g", 100, "30s").is_empty());
    assert!(drain_group(&mut admin, "g").is_empty(), "each exactly once");

    // The same through small batches: the position inside a range is kept.
    a.batch_execute("BEGIN").expect("begin A");
    let late = emit(&mut a, "a.late");
    let early: Vec<i64> = (0..5).map(|i| emit(&mut b, &format!("b.x{i}"))).collect();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let got = polled_ids(&poll(&mut admin, "g", 2, "30s"));
        ack(&mut admin, "g", &got);
        seen.extend(got);
    }
    assert_eq!(seen, early);
    a.batch_execute("COMMIT").expect("commit A");
    assert_eq!(drain_group(&mut admin, "g"), [late]);
}

#[test]
fn a_group_gets_what_commits_after_its_creation() {
    let db = pg().create_db("a_group_gets_what_commits_after_creation");
    let mut admin = db.connect();
    let mut open = db.connect();
    let before = emit(&mut admin, "x.before");
    // A transaction that emitted before the group exists but commits after it.
    open.batch_execute("BEGIN").expect("begin");
    let straddling = emit(&mut open, "x.straddling");
    // The creating transaction's own events count as committed after the creation.
    admin.batch_execute("BEGIN").expect("begin");
    let own_before = emit(&mut admin, "x.own_before");
    create(&mut admin, "'g'");
    let own_after = emit(&mut admin, "x.own_after");
    admin.batch_execute("COMMIT").expect("commit");
    let after = emit(&mut admin, "x.after");
    open.batch_execute("COMMIT").expect("commit");

    let mut got = drain_group(&mut admin, "g");
    got.sort_unstable();
    let mut expected = vec![straddling, own_before, own_after, after];
    expected.sort_unstable();
    assert_eq!(got, expected);
    assert!(!got.contains(&before), "committed before the group existed");
}

#[test]
fn a_killed_worker_loses_nothing_after_its_lease() {
    let db = pg().create_db("a_killed_worker_loses_nothing");
    let mut admin = db.connect();
    create(&mut admin, "'g'");
    let ids: Vec<i64> = (0..3)
        .map(|i| emit(&mut admin, &format!("job.{i}")))
        .collect();

    let mut doomed = db.connect();
    let pid: i32 = doomed
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    let got = poll(&mut doomed, "g", 100, "1 second");
    assert_eq!(polled_ids(&got), ids);
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .expect("terminate")
        .get(0);
    assert!(killed);
    assert!(
        doomed.batch_execute("SELECT 1").is_err(),
        "the worker is gone"
    );

    let mut survivor = db.connect();
    let mut redelivered = Vec::new();
    wait_until(EVENTUALLY, "redelivery after the lease", || {
        redelivered = poll(&mut survivor, "g", 100, "30s");
        !redelivered.is_empty()
    });
    assert_eq!(polled_ids(&redelivered), ids);
    assert!(redelivered.iter().all(|p| p.2 == 2), "{redelivered:?}");
    assert_eq!(ack(&mut survivor, "g", &ids), 3);
    assert!(poll(&mut survivor, "g", 100, "1 second").is_empty());
}

/// `nack` in a transaction, and how long until the retry is due, in seconds.
fn nack_delay(c: &mut Client, consumer: &str, id: i64, error: &str) -> (bool, f64) {
    let mut tx = c.transaction().expect("begin");
    let retried: bool = tx
        .query_one(
            "SELECT txevents.nack($1, $2, $3)",
            &[&consumer, &id, &error],
        )
        .expect("nack")
        .get(0);
    let delay: Option<f64> = tx
        .query_opt(
            "SELECT extract(epoch FROM next_attempt_at - clock_timestamp())::float8
               FROM txevents.retries WHERE consumer = $1 AND event_id = $2",
            &[&consumer, &id],
        )
        .expect("retry row")
        .map(|r| r.get(0));
    tx.commit().expect("commit");
    (retried, delay.unwrap_or(-1.0))
}

fn wait_for_attempt(c: &mut Client, consumer: &str, attempt: i32) -> Vec<Polled> {
    let mut got = Vec::new();
    wait_until(EVENTUALLY, &format!("attempt {attempt}"), || {
        got = poll(c, consumer, 100, "30s");
        !got.is_empty()
    });
    assert!(got.iter().all(|p| p.2 == attempt), "{got:?}");
    got
}

#[test]
fn retries_back_off_then_dead_letter_then_redrive() {
    let db = pg().create_db("retries_back_off_then_dead_letter");
    let mut c = db.connect();
    create(
        &mut c,
        "'g', max_attempts => 3, backoff_base => '400 ms', backoff_max => '10 s'",
    );
    let id: i64 = c
        .query_one("SELECT txevents.emit('pay.me', '{\"amount\": 7}')", &[])
        .expect("emit")
        .get(0);

    assert_eq!(polled_ids(&poll(&mut c, "g", 100, "30s")), [id]);
    let (retried, d1) = nack_delay(&mut c, "g", id, "timeout 1");
    assert!(retried);
    // Equal jitter: attempt 1 waits 200-400 ms, attempt 2 waits 400-800 ms.
    assert!((0.1..=0.4).contains(&d1), "first delay {d1}");
    assert!(
        poll(&mut c, "g", 100, "30s").is_empty() || d1 < 0.2,
        "not due yet"
    );

    wait_for_attempt(&mut c, "g", 2);
    let (retried, d2) = nack_delay(&mut c, "g", id, "timeout 2");
    assert!(retried);
    assert!((0.3..=0.8).contains(&d2), "second delay {d2}");
    assert!(d2 > d1 - 0.05, "backoff grows: {d1} then {d2}");

    wait_for_attempt(&mut c, "g", 3);
    let (retried, _) = nack_delay(&mut c, "g", id, "timeout 3");
    assert!(!retried, "the third failure of max_attempts 3 is final");
    let row = c
        .query_one(
            "SELECT consumer, event_id, event_type, payload::text, attempts, last_error,
                    failed_at <= clock_timestamp()
               FROM txevents.dead_letters",
            &[],
        )
        .expect("dead letter");
    assert_eq!(row.get::<_, String>(0), "g");
    assert_eq!(row.get::<_, i64>(1), id);
    assert_eq!(row.get::<_, String>(2), "pay.me");
    assert_eq!(row.get::<_, String>(3), r#"{"amount": 7}"#);
    assert_eq!(row.get::<_, i32>(4), 3);
    assert_eq!(
        row.get::<_, Option<String>>(5).as_deref(),
        Some("timeout 3")
    );
    assert!(row.get::<_, bool>(6));
    thread::sleep(Duration::from_millis(900));
    assert!(
        poll(&mut c, "g", 100, "30s").is_empty(),
        "dead letters are not offered"
    );

    let redriven: i64 = c
        .query_one("SELECT txevents.redrive('g', ARRAY[$1::bigint])", &[&id])
        .expect("redrive")
        .get(0);
    assert_eq!(redriven, 1);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM txevents.dead_letters"),
        0
    );
    let got = poll(&mut c, "g", 100, "30s");
    assert_eq!(got, [(id, "pay.me".to_string(), 1)], "attempts start over");
    assert_eq!(ack(&mut c, "g", &[id]), 1);

    // An explicit retry_after overrides the backoff; 0 means at once.
    let other = emit(&mut c, "pay.other");
    assert_eq!(polled_ids(&poll(&mut c, "g", 100, "30s")), [other]);
    let retried: bool = c
        .query_one("SELECT txevents.nack('g', $1, 'later', '0 s')", &[&other])
        .expect("nack")
        .get(0);
    assert!(retried);
    assert_eq!(
        poll(&mut c, "g", 100, "30s"),
        [(other, "pay.other".to_string(), 2)]
    );
    // redrive with NULL ids takes every dead letter of the group.
    c.batch_execute(&format!("SELECT txevents.nack('g', {other}, 'x', '0 s')"))
        .expect("nack");
    assert_eq!(poll(&mut c, "g", 100, "30s").len(), 1);
    assert!(!c
        .query_one("SELECT txevents.nack('g', $1)", &[&other])
        .expect("nack")
        .get::<_, bool>(0));
    assert_eq!(count(&mut c, "SELECT txevents.redrive('g')"), 1);
}

#[test]
fn every_group_gets_every_event_and_workers_split_them() {
    let db = pg().create_db("every_group_gets_every_event");
    let mut c = db.connect();
    for g in ["one", "two", "workers"] {
        create(&mut c, &format!("'{g}'"));
    }
    let n = 300;
    let ids: Vec<i64> = c
        .query(
            "SELECT txevents.emit('bulk.item', jsonb_build_object('i', i)) FROM generate_series(1, $1) i",
            &[&n],
        )
        .expect("emit many")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(drain_group(&mut c, "one"), ids);
    assert_eq!(drain_group(&mut c, "two"), ids);

    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut client = db.connect();
            thread::spawn(move || {
                let mut mine = Vec::new();
                let mut empty = 0;
                while empty < 3 {
                    let got = polled_ids(&poll(&mut client, "workers", 7, "5 min"));
                    if got.is_empty() {
                        empty += 1;
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    empty = 0;
                    assert_eq!(ack(&mut client, "workers", &got), got.len() as i64);
                    mine.extend(got);
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for w in workers {
        let mine = w.join().expect("worker");
        per_worker.push(mine.len());
        all.extend(mine);
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no event went to both workers");
    let mut all_sorted = all.clone();
    all_sorted.sort_unstable();
    assert_eq!(all_sorted, ids, "together they got everything");
    eprintln!("events per worker: {per_worker:?}");
}

#[test]
fn event_type_filter_skips_the_rest() {
    let db = pg().create_db("event_type_filter_skips_the_rest");
    let mut c = db.connect();
    create(&mut c, "'orders', ARRAY['order.placed', 'order.paid']");
    let mut wanted = Vec::new();
    for t in [
        "user.created",
        "order.placed",
        "user.deleted",
        "order.paid",
        "x.y",
    ] {
        let id = emit(&mut c, t);
        if t.starts_with("order.") {
            wanted.push(id);
        }
    }
    let got = poll(&mut c, "orders", 1, "30s");
    assert_eq!(polled_ids(&got), wanted[..1]);
    ack(&mut c, "orders", &polled_ids(&got));
    assert_eq!(drain_group(&mut c, "orders"), wanted[1..]);
}

#[test]
fn prune_drops_only_what_every_group_is_done_with() {
    let db = pg().create_db("prune_drops_only_what_every_group_is_done");
    let mut c = db.connect();
    create(&mut c, "'g'");
    let ids: Vec<i64> = (0..3).map(|i| emit(&mut c, &format!("p.{i}"))).collect();
    assert_eq!(polled_ids(&poll(&mut c, "g", 100, "30s")), ids);
    ack(&mut c, "g", &ids[..2]);
    // The third goes to the retry table: still referenced.
    c.batch_execute(&format!(
        "SELECT txevents.nack('g', {}, 'e', '1 hour')",
        ids[2]
    ))
    .expect("nack");
    let pending = emit(&mut c, "p.pending"); // not polled by g yet

    assert_eq!(
        count(&mut c, "SELECT txevents.prune('1 hour')"),
        0,
        "too young"
    );
    assert_eq!(count(&mut c, "SELECT txevents.prune('0 s')"), 2);
    let left: Vec<i64> = c
        .query("SELECT id FROM txevents.outbox ORDER BY id", &[])
        .expect("outbox")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [ids[2], pending]);
}

#[test]
fn bad_consumer_arguments_raise_specific_sqlstates_and_write_nothing() {
    let db = pg().create_db("bad_consumer_arguments");
    let mut c = db.connect();
    create(&mut c, "'g'");
    let id = emit(&mut c, "x.y");
    let cases: &[(&str, &str, &str)] = &[
        (
            "SELECT txevents.create_consumer('g')",
            "42710",
            "already exists",
        ),
        (
            "SELECT txevents.create_consumer(NULL)",
            "22004",
            "name must not be null",
        ),
        (
            "SELECT txevents.create_consumer('')",
            "22023",
            "must not be empty",
        ),
        (
            "SELECT txevents.create_consumer('h', max_attempts => 0)",
            "22023",
            "max_attempts",
        ),
        (
            "SELECT txevents.create_consumer('h', ARRAY[]::text[])",
            "22023",
            "event_types",
        ),
        (
            "SELECT txevents.create_consumer('h', ARRAY['']::text[])",
            "22023",
            "event_type must not be empty",
        ),
        (
            "SELECT txevents.create_consumer('h', backoff_base => '-1 s')",
            "22023",
            "backoff_base",
        ),
        (
            "SELECT txevents.create_consumer('h', backoff_base => '10 s', backoff_max => '1 s')",
            "22023",
            "backoff_max",
        ),
        (
            "SELECT * FROM txevents.poll('nope')",
            "42704",
            "\"nope\" does not exist",
        ),
        (
            "SELECT * FROM txevents.poll(NULL)",
            "22004",
            "consumer must not be null",
        ),
        (
            "SELECT * FROM txevents.poll('g', 0)",
            "22023",
            "max must be between",
        ),
        (
            "SELECT * FROM txevents.poll('g', -5)",
            "22023",
            "max must be between",
        ),
        (
            "SELECT * FROM txevents.poll('g', 10, '-1 s')",
            "22023",
            "lease must be a positive",
        ),
        (
            "SELECT * FROM txevents.poll('g', 10, '0 s')",
            "22023",
            "lease must be a positive",
        ),
        (
            "SELECT txevents.ack('nope', ARRAY[1::bigint])",
            "42704",
            "does not exist",
        ),
        (
            "SELECT txevents.ack('g', NULL)",
            "22004",
            "ids must not be null",
        ),
        ("SELECT txevents.nack('nope', 1)", "42704", "does not exist"),
        (
            "SELECT txevents.nack('g', 1, 'e', '-1 s')",
            "22023",
            "retry_after",
        ),
        ("SELECT txevents.redrive('nope')", "42704", "does not exist"),
        (
            "SELECT txevents.drop_consumer('nope')",
            "42704",
            "does not exist",
        ),
        ("SELECT txevents.prune('-1 day')", "22023", "older_than"),
        (
            "SELECT txevents.prune(NULL)",
            "22004",
            "older_than must not be null",
        ),
    ];
    for (sql, code, text) in cases {
        expect_error(&mut c, sql, code, text);
    }
    let not_claimed = format!("SELECT txevents.nack('g', {id})");
    expect_error(&mut c, &not_claimed, "55000", "is not claimed");
    assert_eq!(count(&mut c, "SELECT count(*) FROM txevents.consumers"), 1);
    assert_eq!(count(&mut c, "SELECT count(*) FROM txevents.claims"), 0);
    assert_eq!(count(&mut c, "SELECT count(*) FROM txevents.retries"), 0);
    // The group still delivers normally; drop_consumer removes it with its state.
    assert_eq!(polled_ids(&poll(&mut c, "g", 100, "30s")), [id]);
    c.batch_execute("SELECT txevents.drop_consumer('g')")
        .expect("drop");
    assert_eq!(count(&mut c, "SELECT count(*) FROM txevents.claims"), 0);
}

#[test]
fn delivery_order_is_numeric_across_a_decimal_digit_boundary_of_txids() {
    let db = pg().create_db("delivery_order_is_numeric_across_txids");
    let mut c = db.connect();
    create(&mut c, "'g'");
    // Burn transaction ids up to just below the next power of ten, so the events'
    // txids straddle e.g. 9999 / 10000, where text order and numeric order differ.
    let current: i64 = c
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .expect("xid")
        .get(0);
    let mut boundary = 10_i64;
    while boundary <= current + 600 {
        boundary *= 10;
    }
    let burn = boundary - current - 500;
    assert!(burn < 5_000_000, "xid {current} too far from {boundary}");
    c.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN 1..{burn} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$"
    ))
    .expect("burn xids");
    c.batch_execute(
        "DO $$ BEGIN FOR i IN 1..1000 LOOP PERFORM txevents.emit('tick'); COMMIT; END LOOP; END $$",
    )
    .expect("one event per transaction");
    let (first, last): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT min(txid::text::bigint), max(txid::text::bigint) FROM txevents.outbox",
                &[],
            )
            .expect("txids");
        (r.get(0), r.get(1))
    };
    assert!(
        first < boundary && last >= boundary,
        "{first}..{last} vs {boundary}"
    );
    let expected: Vec<i64> = c
        .query("SELECT id FROM txevents.outbox ORDER BY id", &[])
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut got = Vec::new();
    loop {
        let batch = polled_ids(&poll(&mut c, "g", 7, "30s"));
        if batch.is_empty() {
            break;
        }
        ack(&mut c, "g", &batch);
        got.extend(batch);
    }
    assert_eq!(got, expected);
}

/// Interleaves open, committing and rolling-back transactions on three sessions with
/// small polls (a fixed pseudo-random schedule per seed) and checks the delivery
/// rule: every committed event exactly once, nothing rolled back, whatever the order
/// of commits and however long a transaction stays open.
#[test]
fn interleaved_transactions_deliver_every_committed_event_exactly_once() {
    let db = pg().create_db("interleaved_transactions_exactly_once");
    let mut admin = db.connect();
    create(&mut admin, "'g'");
    let mut sessions: Vec<Client> = (0..3).map(|_| db.connect()).collect();
    let mut open = [false; 3];
    let mut pending: [Vec<i64>; 3] = Default::default();
    let mut committed: HashSet<i64> = HashSet::new();
    let mut rolled_back: HashSet<i64> = HashSet::new();
    let mut delivered: Vec<i64> = Vec::new();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    for step in 0..600 {
        let s = next(3) as usize;
        match next(10) {
            0..=4 => {
                let c = &mut sessions[s];
                let id = emit(c, &format!("step.{step}"));
                if open[s] {
                    pending[s].push(id);
                } else {
                    committed.insert(id);
                }
            }
            5 => {
                if !open[s] {
                    sessions[s].batch_execute("BEGIN").expect("begin");
                    open[s] = true;
                }
            }
            6 => {
                if open[s] {
                    sessions[s].batch_execute("COMMIT").expect("commit");
                    committed.extend(pending[s].drain(..));
                    open[s] = false;
                }
            }
            7 => {
                // Rarely roll back; session 0 tends to stay open a long time.
                if open[s] && s != 0 && next(3) == 0 {
                    sessions[s].batch_execute("ROLLBACK").expect("rollback");
                    rolled_back.extend(pending[s].drain(..));
                    open[s] = false;
                }
            }
            _ => {
                let got = polled_ids(&poll(&mut admin, "g", 1 + next(5) as i32, "5 min"));
                ack(&mut admin, "g", &got);
                delivered.extend(got);
            }
        }
    }
    for (s, session) in sessions.iter_mut().enumerate() {
        if open[s] {
            session.batch_execute("COMMIT").expect("commit");
            committed.extend(pending[s].drain(..));
        }
    }
    delivered.extend(drain_group(&mut admin, "g"));
    let unique: HashSet<i64> = delivered.iter().copied().collect();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "an event was delivered twice"
    );
    assert!(
        unique.is_disjoint(&rolled_back),
        "a rolled-back event was delivered"
    );
    let missing: Vec<i64> = committed.difference(&unique).copied().collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(unique, committed);
    assert!(
        !rolled_back.is_empty() && committed.len() > 100,
        "the schedule exercised little"
    );
}
