//! `txevents.notify = coalesced` (SPEC 3.2): a background worker sends, after commit,
//! the same notifications `commit` mode sends, for committed transactions only; it
//! loses nothing when it is terminated or the server restarts (at least once), works
//! with two-phase commit, and needs `shared_preload_libraries`.

mod pg_common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachetx_shared::{NotifyPayload, RawEnvelope, Timestamp, FORMAT_VERSION};
use cachetx_tests::pg_cluster::{pg_with_settings, start_cluster};
use cachetx_tests::TestDb;
use pg_common::{expect_error, postmaster_start, seed, Rng, EVENTUALLY, QUIET};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use serde_json::value::RawValue;

/// Every test database gets a worker: leave room beyond the default 8.
fn pg() -> &'static cachetx_tests::PgCluster {
    pg_with_settings(&["max_worker_processes=40"])
}

fn coalesced(db: &TestDb) -> Client {
    let mut c = db.connect();
    c.batch_execute("SET txevents.notify = coalesced")
        .expect("set coalesced");
    c
}

/// Raw notification payloads on channel `txevents`, as they arrive.
struct RawListener(Client);

impl RawListener {
    fn new(mut client: Client) -> RawListener {
        client.batch_execute("LISTEN txevents").expect("LISTEN");
        RawListener(client)
    }

    /// Notifications until `done(received so far)` holds, or [`EVENTUALLY`] passes.
    fn until(&mut self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + EVENTUALLY;
        let mut out = Vec::new();
        let mut notifications = self.0.notifications();
        while !done(&out) && Instant::now() < deadline {
            let mut iter = notifications.timeout_iter(Duration::from_millis(200));
            while let Some(n) = iter.next().expect("notification stream") {
                assert_eq!(n.channel(), "txevents");
                out.push(n.payload().to_owned());
            }
        }
        out
    }

    /// Whatever arrives within [`QUIET`] of the last one.
    fn quiet(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut notifications = self.0.notifications();
        let mut iter = notifications.timeout_iter(QUIET);
        while let Some(n) = iter.next().expect("notification stream") {
            out.push(n.payload().to_owned());
        }
        out
    }
}

fn id_of(raw: &str) -> i64 {
    NotifyPayload::parse(raw)
        .unwrap_or_else(|e| panic!("payload does not parse: {e}\n{raw}"))
        .id()
}

/// How many times each id was received.
fn tally(raws: &[String]) -> HashMap<i64, usize> {
    let mut seen = HashMap::new();
    for raw in raws {
        *seen.entry(id_of(raw)).or_insert(0) += 1;
    }
    seen
}

/// The notification `commit` mode sends for stored event `id`, rebuilt from the row
/// with the shared crate's encoder (the one the extension uses at emit).
fn expected_notification(client: &mut Client, id: i64) -> String {
    let row = client
        .query_one(
            "SELECT event_type, aggregate_type, aggregate_id, payload::text, headers::text,
                    ((extract(epoch FROM occurred_at) - 946684800) * 1000000)::bigint,
                    txid::text
               FROM txevents.outbox WHERE id = $1",
            &[&id],
        )
        .expect("stored event");
    let event_type: String = row.get(0);
    let aggregate_type: Option<String> = row.get(1);
    let aggregate_id: Option<String> = row.get(2);
    let payload = RawValue::from_string(row.get(3)).expect("payload json");
    let headers = RawValue::from_string(row.get(4)).expect("headers json");
    let txid: String = row.get(6);
    NotifyPayload::encode_for_raw_envelope(&RawEnvelope {
        v: FORMAT_VERSION,
        id,
        event_type: &event_type,
        aggregate_type: aggregate_type.as_deref(),
        aggregate_id: aggregate_id.as_deref(),
        payload: &payload,
        headers: &headers,
        occurred_at: Timestamp::from_postgres_micros(row.get(5)),
        txid: Some(txid.parse().expect("txid")),
    })
}

/// The pid of the database's coalesced worker, once it runs.
fn worker_pid(admin: &mut Client, db: &str) -> i32 {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                  WHERE backend_type = 'txevents coalesced' AND datname = $1",
                &[&db],
            )
            .expect("pg_stat_activity");
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(Instant::now() < deadline, "no coalesced worker for {db}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn committed_events_of_16_sessions_arrive_once_with_commit_mode_payloads() {
    let db = pg().create_db("coalesced_many");
    let mut listener = RawListener::new(db.connect());
    let seed = seed("TXEVENTS_SEED", 9);
    let attempts = Arc::new(AtomicUsize::new(0));
    let committed = Arc::new(Mutex::new(Vec::<i64>::new()));
    let rolled_back = Arc::new(Mutex::new(Vec::<i64>::new()));
    const TOTAL: usize = 10_000;
    std::thread::scope(|s| {
        for session in 0..16u64 {
            let (attempts, committed, rolled_back) = (&attempts, &committed, &rolled_back);
            let mut c = coalesced(&db);
            s.spawn(move || {
                let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(session));
                let emit = |c: &mut Client, n: usize| -> i64 {
                    c.query_one(
                        "SELECT txevents.emit('item.changed',
                                jsonb_build_object('n', $1::int, 'exact', 1.000000000000000000001,
                                                   'big', 123456789012345678901234567890, 'txt', 'é☃'),
                                'item', $1::text)",
                        &[&(n as i32)],
                    )
                    .expect("emit")
                    .get(0)
                };
                loop {
                    let size = 1 + rng.below(5) as usize;
                    let start = attempts.fetch_add(size, Ordering::Relaxed);
                    if start >= TOTAL {
                        break;
                    }
                    c.batch_execute("BEGIN").expect("begin");
                    let mut kept = Vec::new();
                    let mut dropped = Vec::new();
                    for k in 0..size {
                        if rng.one_in(6) {
                            // A savepoint rolled back past one event.
                            c.batch_execute("SAVEPOINT s").expect("savepoint");
                            dropped.push(emit(&mut c, start + k));
                            c.batch_execute("ROLLBACK TO SAVEPOINT s")
                                .expect("rollback to savepoint");
                        } else {
                            kept.push(emit(&mut c, start + k));
                        }
                    }
                    if rng.one_in(5) {
                        c.batch_execute("ROLLBACK").expect("rollback");
                        dropped.extend(kept);
                    } else {
                        c.batch_execute("COMMIT").expect("commit");
                        committed.lock().unwrap().extend(kept);
                    }
                    rolled_back.lock().unwrap().extend(dropped);
                }
            });
        }
    });
    let committed: HashSet<i64> = committed.lock().unwrap().iter().copied().collect();
    let rolled_back = rolled_back.lock().unwrap().clone();
    assert!(committed.len() > 5_000, "{} committed", committed.len());
    assert!(!rolled_back.is_empty());

    let received = listener.until(|r| r.len() >= committed.len());
    // Anything that would still come (a duplicate, a rolled-back event) comes now.
    let mut received = received;
    received.extend(listener.quiet());
    let seen = tally(&received);
    let ids: HashSet<i64> = seen.keys().copied().collect();
    let missing: Vec<_> = committed.difference(&ids).take(10).collect();
    assert!(missing.is_empty(), "never notified: {missing:?}...");
    let extra: Vec<_> = ids.difference(&committed).take(10).collect();
    assert!(extra.is_empty(), "notified but not committed: {extra:?}...");
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).take(10).collect();
    assert!(twice.is_empty(), "notified more than once: {twice:?}");
    assert_eq!(received.len(), committed.len());

    // Byte for byte what commit mode sends: checked on every 50th event, and the
    // oracle itself checked against commit mode on an event emitted in that mode.
    let mut c = db.connect();
    for raw in received.iter().step_by(50) {
        assert_eq!(raw, &expected_notification(&mut c, id_of(raw)));
    }
    c.batch_execute("SET txevents.notify = commit")
        .expect("commit mode");
    let id: i64 = c
        .query_one(
            "SELECT txevents.emit('item.changed', jsonb_build_object('exact', 1.000000000000000000001, 'txt', 'é☃'), 'item', 'x')",
            &[],
        )
        .expect("emit in commit mode")
        .get(0);
    let raw = listener.until(|r| !r.is_empty());
    assert_eq!(raw, vec![expected_notification(&mut c, id)]);
}

#[test]
fn an_open_transaction_does_not_hold_back_other_notifications() {
    let db = pg().create_db("coalesced_open");
    let mut listener = RawListener::new(db.connect());
    let mut open = coalesced(&db);
    open.batch_execute("BEGIN").expect("begin");
    let held: i64 = open
        .query_one("SELECT txevents.emit('held')", &[])
        .expect("emit")
        .get(0);
    let mut other = coalesced(&db);
    let quick: i64 = other
        .query_one("SELECT txevents.emit('quick')", &[])
        .expect("emit")
        .get(0);
    let got = listener.until(|r| !r.is_empty());
    assert_eq!(
        got.iter().map(|r| id_of(r)).collect::<Vec<_>>(),
        vec![quick]
    );
    open.batch_execute("COMMIT").expect("commit");
    let got = listener.until(|r| !r.is_empty());
    assert_eq!(got.iter().map(|r| id_of(r)).collect::<Vec<_>>(), vec![held]);
    // The worker counts what it published in the database's metrics (its transaction's
    // commit adds them, right around the time the listener is told).
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let published: i64 = other
            .query_one(
                "SELECT events_published FROM txevents.metrics WHERE datname = current_database()",
                &[],
            )
            .expect("metrics")
            .get(0);
        if published == 2 || Instant::now() > deadline {
            assert_eq!(published, 2, "two events published by the worker");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn terminating_the_worker_mid_stream_loses_nothing() {
    let db = pg().create_db("coalesced_terminate");
    let mut listener = RawListener::new(db.connect());
    let mut admin = db.connect();
    let started = postmaster_start(&mut admin);
    let committed = Mutex::new(Vec::<i64>::new());
    let running = AtomicBool::new(true);
    // Start the worker, so there is one to terminate.
    let first: i64 = coalesced(&db)
        .query_one("SELECT txevents.emit('first')", &[])
        .expect("emit")
        .get(0);
    committed.lock().unwrap().push(first);
    let mut terminated = 0;
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let mut c = coalesced(&db);
                let (committed, running) = (&committed, &running);
                s.spawn(move || {
                    let mut n = 0;
                    while n < 600 && running.load(Ordering::Relaxed) {
                        let ids: Vec<i64> = c
                            .query(
                                "SELECT txevents.emit('burst', jsonb_build_object('i', i))
                                   FROM generate_series(1, 5) i",
                                &[],
                            )
                            .expect("emit")
                            .iter()
                            .map(|r| r.get(0))
                            .collect();
                        committed.lock().unwrap().extend(ids);
                        n += 5;
                    }
                })
            })
            .collect();
        for _ in 0..3 {
            let pid = worker_pid(&mut admin, &db.name);
            let done: bool = admin
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .expect("terminate")
                .get(0);
            if done {
                terminated += 1;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        for w in writers {
            w.join().expect("writer");
        }
        running.store(false, Ordering::Relaxed);
    });
    assert!(terminated >= 1, "the worker was terminated at least once");
    let committed: HashSet<i64> = committed.into_inner().unwrap().into_iter().collect();
    let received = listener.until(|r| {
        let ids: HashSet<i64> = r.iter().map(|raw| id_of(raw)).collect();
        committed.is_subset(&ids)
    });
    let seen = tally(&received);
    let missing: Vec<_> = committed
        .iter()
        .filter(|id| !seen.contains_key(id))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(
        seen.keys().all(|id| committed.contains(id)),
        "only committed events"
    );
    // The worker was terminated, the server was not (a PANIC would restart it).
    assert_eq!(postmaster_start(&mut admin), started);
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{} events, worker terminated {terminated} times, {duplicates} duplicate notifications",
        committed.len()
    );
}

#[test]
fn prepared_transactions_are_notified_at_commit_prepared_only() {
    let db = pg().create_db("coalesced_2pc");
    let mut listener = RawListener::new(db.connect());
    let mut c = coalesced(&db);
    let gid = format!("{}_p", db.name);
    let gone = format!("{}_r", db.name);
    c.batch_execute("BEGIN").expect("begin");
    let id: i64 = c
        .query_one("SELECT txevents.emit('prepared')", &[])
        .expect("emit")
        .get(0);
    c.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
        .expect("prepare");
    c.batch_execute("BEGIN; SELECT txevents.emit('rolled.back.prepared')")
        .expect("emit");
    c.batch_execute(&format!("PREPARE TRANSACTION '{gone}'"))
        .expect("prepare");
    assert!(
        listener.quiet().is_empty(),
        "nothing before COMMIT PREPARED"
    );
    let mut other = db.connect();
    other
        .batch_execute(&format!("ROLLBACK PREPARED '{gone}'"))
        .expect("rollback prepared");
    other
        .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .expect("commit prepared");
    let mut got = listener.until(|r| !r.is_empty());
    got.extend(listener.quiet());
    assert_eq!(got.iter().map(|r| id_of(r)).collect::<Vec<_>>(), vec![id]);
    assert_eq!(got[0], expected_notification(&mut other, id));
}

#[test]
fn events_committed_before_a_restart_are_notified_after_it() {
    let cluster =
        start_cluster("txevents", &["max_worker_processes=16"]).unwrap_or_else(|e| panic!("{e}"));
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute("CREATE DATABASE d")
        .expect("create database");
    let mut c = cluster.connect("d");
    c.batch_execute("CREATE EXTENSION txevents; SET txevents.notify = coalesced")
        .expect("setup");
    // The worker runs and notifies (positive control).
    let mut listener = RawListener::new(cluster.connect("d"));
    let first: i64 = c
        .query_one("SELECT txevents.emit('before')", &[])
        .expect("emit")
        .get(0);
    let got = listener.until(|r| !r.is_empty());
    assert_eq!(
        got.iter().map(|r| id_of(r)).collect::<Vec<_>>(),
        vec![first]
    );
    drop(listener);

    // Keep the worker out (new connections refused), then commit events it cannot send.
    admin
        .batch_execute("ALTER DATABASE d ALLOW_CONNECTIONS false")
        .expect("disallow connections");
    let pid = worker_pid(&mut admin, "d");
    admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .expect("terminate");
    let mut pending = Vec::new();
    for _ in 0..4 {
        let ids: Vec<i64> = c
            .query(
                "SELECT txevents.emit('pending') FROM generate_series(1, 5)",
                &[],
            )
            .expect("emit")
            .iter()
            .map(|r| r.get(0))
            .collect();
        pending.extend(ids);
    }
    c.batch_execute("BEGIN; SELECT txevents.emit('rolled.back'); ROLLBACK")
        .expect("rollback");
    // Hold the committed markers with a prepared transaction: it survives the restart
    // and keeps the restarted worker waiting until the listener is in place.
    let marks: i64 = c
        .query_one("SELECT count(*) FROM txevents.coalesced", &[])
        .expect("marks")
        .get(0);
    assert_eq!(marks, 4, "four committed transactions not notified yet");
    c.batch_execute(
        "BEGIN; SELECT txid FROM txevents.coalesced FOR UPDATE; PREPARE TRANSACTION 'hold'",
    )
    .expect("hold the markers");
    admin
        .batch_execute("ALTER DATABASE d ALLOW_CONNECTIONS true")
        .expect("allow connections");
    drop(c);
    cluster.restart().unwrap_or_else(|e| panic!("{e}"));

    let mut listener = RawListener::new(cluster.connect("d"));
    let mut c = cluster.connect("d");
    let marks: i64 = c
        .query_one("SELECT count(*) FROM txevents.coalesced", &[])
        .expect("marks")
        .get(0);
    assert_eq!(marks, 4, "still not notified after the restart");
    // The starter launched the worker after the restart; it waits on the markers.
    worker_pid(&mut cluster.connect("postgres"), "d");
    c.batch_execute("ROLLBACK PREPARED 'hold'")
        .expect("release the markers");
    let mut got = listener.until(|r| r.len() >= pending.len());
    got.extend(listener.quiet());
    let ids: Vec<i64> = got.iter().map(|r| id_of(r)).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted, pending,
        "every event committed before the restart, once"
    );
    drop((listener, c));

    // DROP DATABASE (without FORCE) is not held up by the worker.
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute("DROP DATABASE d")
        .expect("drop database");
}

#[test]
fn coalesced_without_preload_names_the_setting() {
    let cluster = start_cluster("", &[]).unwrap_or_else(|e| panic!("{e}"));
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION txevents")
        .expect("create extension");
    expect_error(
        &mut c,
        "SET txevents.notify = coalesced",
        "55000",
        "shared_preload_libraries",
    );
    // The other modes work.
    c.batch_execute("SET txevents.notify = off; SET txevents.notify = commit")
        .expect("commit and off");
    let id: i64 = c
        .query_one("SELECT txevents.emit('x')", &[])
        .expect("emit")
        .get(0);
    assert!(id > 0);
}

/// How many coalesced workers serve database `db`.
fn workers(admin: &mut Client, db: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE backend_type = 'txevents coalesced' AND datname = $1",
            &[&db],
        )
        .expect("pg_stat_activity")
        .get(0)
}

#[test]
fn a_worker_whose_extension_was_dropped_exits_for_good() {
    let db = pg().create_db("coalesced_drop_ext");
    let mut c = coalesced(&db);
    c.query_one("SELECT txevents.emit('x')", &[]).expect("emit");
    let mut admin = db.connect();
    worker_pid(&mut admin, &db.name);
    c.batch_execute("DROP EXTENSION txevents")
        .expect("drop extension");
    // COMMIT PREPARED wakes the worker, which finds the extension gone.
    let gid = format!("{}_g", db.name);
    c.batch_execute(&format!(
        "BEGIN; CREATE TABLE t (); PREPARE TRANSACTION '{gid}'"
    ))
    .expect("prepare");
    c.batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .expect("commit prepared");
    let deadline = Instant::now() + EVENTUALLY;
    while workers(&mut admin, &db.name) > 0 {
        assert!(Instant::now() < deadline, "the worker did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    // It exited for good (code 0, not failing on the missing table and restarted by
    // the postmaster every second): past the restart interval there is still none, and
    // the database is off the list the starter reads after a server restart.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(workers(&mut admin, &db.name), 0);
    let listed: Option<String> = admin
        .query_one(
            "SELECT pg_read_file('txevents_coalesced.oids', 0, 100000, true)",
            &[],
        )
        .expect("read the database list")
        .get(0);
    let listed = listed.unwrap_or_default();
    let oid: u32 = admin
        .query_one(
            "SELECT oid FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .expect("oid")
        .get(0);
    assert!(
        !listed.lines().any(|l| l == oid.to_string()),
        "{oid} still listed: {listed:?}"
    );
    // Installed again, the mode works again (positive control).
    c.batch_execute("CREATE EXTENSION txevents")
        .expect("create extension");
    let mut listener = RawListener::new(db.connect());
    let id: i64 = c
        .query_one("SELECT txevents.emit('again')", &[])
        .expect("emit")
        .get(0);
    let got = listener.until(|r| !r.is_empty());
    assert_eq!(got.iter().map(|r| id_of(r)).collect::<Vec<_>>(), vec![id]);
}

/// Waits until process `pid` waits for a lock.
fn wait_for_lock_wait(admin: &mut Client, pid: i32) {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let waiting: bool = admin
            .query_one(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity
                  WHERE pid = $1",
                &[&pid],
            )
            .expect("pg_stat_activity")
            .get(0);
        if waiting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never waited for a lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_waiting_for_the_outbox_holds_no_lock_a_ddl_statement_needs() {
    // DROP EXTENSION locks the outbox, then the marker table. A worker that had taken
    // the marker table and then waited for the outbox deadlocked with it, and Postgres
    // cancelled the user's statement (seen in CI). Here a session plays DROP's part
    // with the lowest deadlock_timeout, so that it, not the worker, would be the one
    // cancelled: it must get both locks without a deadlock.
    let db = pg().create_db("coalesced_lock_order");
    let mut c = coalesced(&db);
    c.query_one("SELECT txevents.emit('x')", &[]).expect("emit");
    let mut admin = db.connect();
    let pid = worker_pid(&mut admin, &db.name);

    let mut ddl = db.connect();
    ddl.batch_execute(
        "SET deadlock_timeout = '10ms';
         BEGIN;
         LOCK TABLE txevents.outbox IN ACCESS EXCLUSIVE MODE",
    )
    .expect("lock the outbox");
    // A committed marker (no events) and a COMMIT PREPARED to wake the worker.
    let mut other = db.connect();
    other
        .batch_execute(
            "INSERT INTO txevents.coalesced (txid, channel)
             VALUES (pg_current_xact_id(), 'txevents')",
        )
        .expect("marker");
    let gid = format!("{}_g", db.name);
    other
        .batch_execute(&format!(
            "BEGIN; CREATE TABLE wake (); PREPARE TRANSACTION '{gid}'"
        ))
        .expect("prepare");
    other
        .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .expect("commit prepared");
    wait_for_lock_wait(&mut admin, pid);

    ddl.batch_execute("LOCK TABLE txevents.coalesced IN ACCESS EXCLUSIVE MODE")
        .expect("the marker table, while the worker waits for the outbox: no deadlock");
    ddl.batch_execute("ROLLBACK").expect("rollback");

    // The worker then sends the batch: the marker goes, and it is the same worker (it
    // did not fail and restart).
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let left: i64 = admin
            .query_one("SELECT count(*) FROM txevents.coalesced", &[])
            .expect("markers")
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the marker was never taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        worker_pid(&mut admin, &db.name),
        pid,
        "the worker restarted"
    );
}
