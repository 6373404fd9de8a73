//! Transaction metrics in shared memory (SPEC 3.4): the `txevents.metrics`,
//! `txevents.errors`, `txevents.latency_buckets` and `txevents.consumer_lag` views,
//! `txevents.reset_metrics()`, their grants, and the error without preload.
//!
//! Counts are exact. Every statement whose transactions are counted goes through the
//! simple query protocol (`batch_execute`, `simple_query`): one statement, one
//! transaction. (The extended protocol's prepare step is a transaction of its own.)
//! Reading the view is itself a transaction of the database, counted once the read
//! has returned: each read adds one commit to the next.

mod pg_common;

use std::collections::HashMap;

use cachetx_tests::pg_cluster::start_cluster;
use cachetx_tests::{pg, sqlstate};
use pg_common::expect_error;
use postgres::{Client, SimpleQueryMessage};

/// The rows of a query through the simple protocol, as column name → text.
fn rows(client: &mut Client, sql: &str) -> Vec<HashMap<String, Option<String>>> {
    client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn int(row: &HashMap<String, Option<String>>, column: &str) -> i64 {
    row.get(column)
        .unwrap_or_else(|| panic!("no column {column}"))
        .as_deref()
        .unwrap_or_else(|| panic!("{column} is NULL"))
        .parse()
        .unwrap_or_else(|e| panic!("{column}: {e}"))
}

fn float(row: &HashMap<String, Option<String>>, column: &str) -> f64 {
    row[column]
        .as_deref()
        .unwrap_or_else(|| panic!("{column} is NULL"))
        .parse()
        .unwrap_or_else(|e| panic!("{column}: {e}"))
}

/// The `txevents.metrics` row of `datname` (one transaction of the reading database).
fn metrics_of(client: &mut Client, datname: &str) -> HashMap<String, Option<String>> {
    let mut found = rows(
        client,
        &format!("SELECT * FROM txevents.metrics WHERE datname = '{datname}'"),
    );
    assert_eq!(found.len(), 1, "one metrics row for {datname}");
    found.remove(0)
}

/// `txevents.errors` of the current database: SQLSTATE → (condition, count, message).
fn errors(client: &mut Client) -> HashMap<String, (Option<String>, i64, String)> {
    rows(
        client,
        "SELECT * FROM txevents.errors WHERE datname = current_database()",
    )
    .into_iter()
    .map(|r| {
        let code = r["sqlstate"].clone().expect("sqlstate");
        let entry = (
            r["condition"].clone(),
            int(&r, "count"),
            r["last_message"].clone().unwrap_or_default(),
        );
        assert!(r["last_at"].is_some(), "{code}: last_at");
        (code, entry)
    })
    .collect()
}

#[test]
fn commits_rollbacks_and_errors_are_counted_where_they_belong() {
    let db = pg().create_db("metrics_exact");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY);
         CREATE TABLE d (id int PRIMARY KEY, v int);
         INSERT INTO d VALUES (1, 0), (2, 0);",
    )
    .expect("tables");
    c.batch_execute("SELECT txevents.reset_metrics()")
        .expect("reset");
    let before = metrics_of(&mut c, &db.name);
    assert_eq!(int(&before, "commits"), 1, "the reset's own transaction");
    assert_eq!(int(&before, "rollbacks"), 0);
    assert_eq!(int(&before, "errors"), 0);

    // N = 7 commits.
    for i in 0..7 {
        c.batch_execute(&format!("INSERT INTO t VALUES ({i})"))
            .expect("insert");
    }
    // M = 3 rollbacks.
    for i in 0..3 {
        c.batch_execute("BEGIN").expect("begin");
        c.batch_execute(&format!("INSERT INTO t VALUES ({})", 100 + i))
            .expect("insert");
        c.batch_execute("ROLLBACK").expect("rollback");
    }
    // K = 4 unique violations, each rolling back its transaction.
    for _ in 0..4 {
        expect_error(&mut c, "INSERT INTO t VALUES (0)", "23505", "duplicate key");
    }
    // An error in a savepoint that is rolled back: counted as an error, while the
    // transaction commits.
    c.batch_execute("BEGIN; SAVEPOINT s").expect("savepoint");
    expect_error(&mut c, "INSERT INTO t VALUES (1)", "23505", "duplicate key");
    c.batch_execute("ROLLBACK TO SAVEPOINT s; INSERT INTO t VALUES (500); COMMIT")
        .expect("commit after the savepoint");

    // A deadlock: one transaction gets 40P01 and rolls back, the other commits.
    let mut a = db.connect();
    let mut b = db.connect();
    for (conn, row) in [(&mut a, 1), (&mut b, 2)] {
        conn.batch_execute(&format!(
            "BEGIN; SET LOCAL deadlock_timeout = '50ms'; UPDATE d SET v = 1 WHERE id = {row}"
        ))
        .expect("first lock");
    }
    let waiter = std::thread::spawn(move || {
        let r = a.batch_execute("UPDATE d SET v = 2 WHERE id = 2");
        (a, r)
    });
    // Let a block on row 2 before b closes the cycle (if b got there first, b would
    // simply wait and a would close it: the deadlock happens either way).
    std::thread::sleep(std::time::Duration::from_millis(200));
    let rb = b.batch_execute("UPDATE d SET v = 2 WHERE id = 1");
    let (mut a, ra) = waiter.join().expect("waiter thread");
    let failed: Vec<_> = [&ra, &rb].iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(failed.len(), 1, "exactly one victim: {ra:?} {rb:?}");
    assert_eq!(
        sqlstate(failed[0]).as_deref(),
        Some("40P01"),
        "{:?}",
        failed[0]
    );
    for (conn, r) in [(&mut a, &ra), (&mut b, &rb)] {
        let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
        conn.batch_execute(end).expect(end);
    }

    let after = metrics_of(&mut c, &db.name);
    // The read before (1) + 7 inserts + the savepoint transaction + the deadlock's
    // survivor.
    assert_eq!(
        int(&after, "commits") - int(&before, "commits"),
        1 + 7 + 1 + 1
    );
    // 3 explicit rollbacks + 4 failed inserts + the deadlock's victim.
    assert_eq!(int(&after, "rollbacks"), 3 + 4 + 1);
    let rate = float(&after, "rollback_rate");
    let expected = 8.0 / (8.0 + int(&after, "commits") as f64);
    assert!((rate - expected).abs() < 1e-9, "{rate} vs {expected}");
    assert_eq!(int(&after, "errors"), 4 + 1 + 1);
    assert_eq!(int(&after, "errors_overflow"), 0);

    let errors = errors(&mut c);
    assert_eq!(errors.len(), 2, "{errors:?}");
    let (condition, count, message) = &errors["23505"];
    assert_eq!(condition.as_deref(), Some("unique_violation"));
    assert_eq!(*count, 5, "4 failed inserts + 1 in the savepoint");
    assert!(message.contains("duplicate key value"), "{message}");
    let (condition, count, message) = &errors["40P01"];
    assert_eq!(condition.as_deref(), Some("deadlock_detected"));
    assert_eq!(*count, 1);
    assert!(message.contains("deadlock"), "{message}");

    // Durations: every transaction has one, only commits have a commit duration.
    let buckets = rows(
        &mut c,
        &format!(
            "SELECT histogram, sum(count) AS n FROM txevents.latency_buckets
              WHERE datname = '{}' GROUP BY histogram",
            db.name
        ),
    );
    let total = |name: &str| {
        int(
            buckets
                .iter()
                .find(|r| r["histogram"].as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no {name} histogram")),
            "n",
        )
    };
    // This read sees two more commits than `after`: the reads of `after` and `errors`.
    let commits = int(&after, "commits") + 2;
    assert_eq!(total("transaction"), commits + 8);
    assert_eq!(total("commit"), commits);
}

#[test]
fn a_slow_transaction_lands_in_its_bucket() {
    let db = pg().create_db("metrics_bucket");
    let mut c = db.connect();
    c.batch_execute("SELECT txevents.reset_metrics()")
        .expect("reset");
    c.batch_execute("BEGIN; SELECT pg_sleep(0.2); COMMIT")
        .expect("sleep");
    let buckets = rows(
        &mut c,
        &format!(
            "SELECT bucket, le, count, cumulative FROM txevents.latency_buckets
              WHERE datname = '{}' AND histogram = 'transaction' ORDER BY bucket",
            db.name
        ),
    );
    assert!(buckets.len() > 100, "every bucket is listed");
    assert_eq!(buckets.last().unwrap()["le"].as_deref(), Some("Infinity"));
    let mut cumulative = 0;
    let mut previous_le = 0.0;
    for b in &buckets {
        cumulative += int(b, "count");
        assert_eq!(int(b, "cumulative"), cumulative);
        let le = float(b, "le");
        assert!(le > previous_le, "bucket bounds grow");
        previous_le = le;
    }
    // The reset's transaction and the sleeping one.
    assert_eq!(cumulative, 2);
    // The sleeping transaction took at least 0.2 s: it is in a bucket reaching past it,
    // the one holding 0.2 s or a later one; none of the buckets below can hold it.
    let at_or_above: i64 = buckets
        .iter()
        .filter(|b| float(b, "le") > 0.2)
        .map(|b| int(b, "count"))
        .sum();
    assert!(at_or_above >= 1, "{buckets:?}");
    let containing = buckets
        .iter()
        .find(|b| float(b, "le") > 0.2)
        .expect("a bucket past 0.2 s");
    assert!(
        float(containing, "le") < 0.25,
        "buckets are at most 25% wide"
    );
    let m = metrics_of(&mut c, &db.name);
    assert!(float(&m, "xact_max_ms") >= 200.0, "{m:?}");
    assert!(float(&m, "xact_p999_ms") >= 200.0, "{m:?}");
}

#[test]
fn reset_zeroes_the_database_it_runs_in() {
    let db = pg().create_db("metrics_reset");
    let mut c = db.connect();
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .expect("table");
    expect_error(&mut c, "INSERT INTO t VALUES (1)", "23505", "duplicate key");
    c.batch_execute("SELECT txevents.emit('x')").expect("emit");
    let before = metrics_of(&mut c, &db.name);
    assert!(int(&before, "commits") >= 2, "{before:?}");
    assert_eq!(int(&before, "rollbacks"), 1);
    assert_eq!(int(&before, "errors"), 1);
    assert_eq!(int(&before, "events_emitted"), 1);
    assert!(before["reset_at"].is_none());

    c.batch_execute("SELECT txevents.reset_metrics()")
        .expect("reset");
    let after = metrics_of(&mut c, &db.name);
    assert_eq!(
        int(&after, "commits"),
        1,
        "only the reset's own transaction"
    );
    assert_eq!(int(&after, "rollbacks"), 0);
    assert_eq!(int(&after, "errors"), 0);
    assert_eq!(int(&after, "events_emitted"), 0);
    assert!(after["reset_at"].is_some());
    assert!(errors(&mut c).is_empty());
}

#[test]
fn two_databases_are_counted_apart() {
    let one = pg().create_db("metrics_apart_one");
    let two = pg().create_db("metrics_apart_two");
    let mut c1 = one.connect();
    let mut c2 = two.connect();
    for c in [&mut c1, &mut c2] {
        c.batch_execute("CREATE TABLE t (id int)").expect("table");
        c.batch_execute("SELECT txevents.reset_metrics()")
            .expect("reset");
    }
    for _ in 0..5 {
        c1.batch_execute("INSERT INTO t VALUES (1)")
            .expect("insert");
    }
    for _ in 0..2 {
        c1.batch_execute("BEGIN; INSERT INTO t VALUES (1); ROLLBACK")
            .expect("rollback");
    }
    for _ in 0..3 {
        c2.batch_execute("INSERT INTO t VALUES (2)")
            .expect("insert");
    }
    expect_error(&mut c2, "SELECT 1/0", "22012", "division by zero");
    // Both rows, read from the first database: the view lists every database.
    let m1 = metrics_of(&mut c1, &one.name);
    let m2 = metrics_of(&mut c1, &two.name);
    assert_eq!((int(&m1, "commits"), int(&m1, "rollbacks")), (1 + 5, 2));
    assert_eq!(int(&m1, "errors"), 0);
    assert_eq!((int(&m2, "commits"), int(&m2, "rollbacks")), (1 + 3, 1));
    assert_eq!(int(&m2, "errors"), 1);
    let e2 = errors(&mut c2);
    assert_eq!(e2["22012"].0.as_deref(), Some("division_by_zero"));
    assert!(errors(&mut c1).is_empty());
}

#[test]
fn event_counters_follow_committed_work() {
    let db = pg().create_db("metrics_events");
    let mut c = db.connect();
    // One statement per call: a BEGIN inside a multi-statement query string would take
    // the statements before it into its transaction.
    for sql in [
        "SELECT txevents.create_consumer('g', max_attempts => 2)",
        "SELECT txevents.reset_metrics()",
        "SELECT txevents.emit('a'), txevents.emit('a')",
        "SELECT txevents.emit('a')",
        "BEGIN; SELECT txevents.emit('gone'); ROLLBACK",
        "BEGIN; SAVEPOINT s; SELECT txevents.emit('gone'); ROLLBACK TO SAVEPOINT s; COMMIT",
    ] {
        c.batch_execute(sql).expect(sql);
    }
    let ids: Vec<i64> = c
        .query("SELECT id FROM txevents.poll('g', 10) ORDER BY id", &[])
        .expect("poll")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 3);
    // An ack that is rolled back counts nothing.
    c.batch_execute(&format!(
        "BEGIN; SELECT txevents.ack('g', ARRAY[{}]); ROLLBACK",
        ids[0]
    ))
    .expect("rolled-back ack");
    c.batch_execute(&format!("SELECT txevents.ack('g', ARRAY[{}])", ids[0]))
        .expect("ack");
    c.batch_execute(&format!(
        "SELECT txevents.nack('g', {}, 'boom', interval '0')",
        ids[1]
    ))
    .expect("nack: retry");
    let again: i64 = c
        .query_one("SELECT id FROM txevents.poll('g', 1)", &[])
        .expect("poll the retry")
        .get(0);
    assert_eq!(again, ids[1]);
    let retried: bool = c
        .query_one("SELECT txevents.nack('g', $1, 'boom')", &[&ids[1]])
        .expect("nack: dead")
        .get(0);
    assert!(!retried, "second attempt of max 2 goes to the dead letters");
    c.batch_execute("SELECT txevents.redrive('g')")
        .expect("redrive");

    let m = metrics_of(&mut c, &db.name);
    assert_eq!(int(&m, "events_emitted"), 3);
    assert_eq!(int(&m, "events_published"), 3, "notify = commit");
    assert_eq!(int(&m, "events_acked"), 1);
    assert_eq!(int(&m, "events_retried"), 1);
    assert_eq!(int(&m, "events_dead_lettered"), 1);
    assert_eq!(int(&m, "events_redriven"), 1);

    // consumer_lag: the redriven event waits as a retry, the third is still claimed.
    let lag = rows(&mut c, "SELECT * FROM txevents.consumer_lag");
    assert_eq!(lag.len(), 1);
    assert_eq!(lag[0]["consumer"].as_deref(), Some("g"));
    assert_eq!(int(&lag[0], "pending"), 0);
    assert_eq!(int(&lag[0], "in_flight"), 1);
    assert_eq!(int(&lag[0], "retrying"), 1);
    assert_eq!(int(&lag[0], "dead"), 0);
    assert!(lag[0]["oldest_pending_age"].is_some(), "the retry waits");
    c.batch_execute("SELECT txevents.emit('a'); SELECT txevents.emit('b')")
        .expect("emit more");
    let lag = rows(&mut c, "SELECT pending FROM txevents.consumer_lag");
    assert_eq!(int(&lag[0], "pending"), 2);
}

#[test]
fn consumer_lag_counts_pending_events_across_a_range() {
    let db = pg().create_db("metrics_lag");
    let mut c = db.connect();
    for sql in [
        "SELECT txevents.create_consumer('g', ARRAY['wanted'])",
        "SELECT txevents.emit('wanted') FROM generate_series(1, 10)",
        "SELECT txevents.emit('other') FROM generate_series(1, 4)",
    ] {
        c.batch_execute(sql).expect(sql);
    }
    let pending = |c: &mut Client| {
        let r = rows(c, "SELECT pending, in_flight FROM txevents.consumer_lag");
        (int(&r[0], "pending"), int(&r[0], "in_flight"))
    };
    assert_eq!(pending(&mut c), (10, 0));
    // A partial poll leaves the group in the middle of a range.
    assert_eq!(
        c.query("SELECT * FROM txevents.poll('g', 4)", &[])
            .expect("poll")
            .len(),
        4
    );
    assert_eq!(pending(&mut c), (6, 4));
    c.batch_execute("BEGIN; SELECT txevents.emit('wanted'); ROLLBACK")
        .expect("rolled back");
    assert_eq!(
        pending(&mut c),
        (6, 4),
        "rolled-back events are not pending"
    );
    c.query("SELECT * FROM txevents.poll('g', 100)", &[])
        .expect("poll");
    assert_eq!(pending(&mut c), (0, 10));
}

#[test]
fn only_granted_roles_read_the_metrics() {
    let db = pg().create_db("metrics_grants");
    let mut admin = db.connect();
    let stem = format!("m{}", std::process::id());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {stem}_nobody LOGIN;
             CREATE ROLE {stem}_monitor LOGIN IN ROLE pg_monitor;
             CREATE ROLE {stem}_admin LOGIN IN ROLE txevents_admin;"
        ))
        .expect("roles");
    let views = [
        "txevents.metrics",
        "txevents.errors",
        "txevents.latency_buckets",
        "txevents.consumer_lag",
    ];
    let mut nobody = db.connect_as(&format!("{stem}_nobody"));
    for view in views {
        expect_error(
            &mut nobody,
            &format!("SELECT * FROM {view}"),
            "42501",
            "permission denied",
        );
    }
    expect_error(
        &mut nobody,
        "SELECT txevents.reset_metrics()",
        "42501",
        "permission denied",
    );
    for role in ["monitor", "admin"] {
        let mut reader = db.connect_as(&format!("{stem}_{role}"));
        for view in views {
            reader
                .batch_execute(&format!("SELECT * FROM {view}"))
                .unwrap_or_else(|e| panic!("{role} reads {view}: {e}"));
        }
    }
    let mut monitor = db.connect_as(&format!("{stem}_monitor"));
    expect_error(
        &mut monitor,
        "SELECT txevents.reset_metrics()",
        "42501",
        "permission denied",
    );
    db.connect_as(&format!("{stem}_admin"))
        .batch_execute("SELECT txevents.reset_metrics()")
        .expect("txevents_admin resets");
    drop((nobody, monitor));
    admin
        .batch_execute(&format!(
            "DROP ROLE {stem}_nobody; DROP ROLE {stem}_monitor; DROP ROLE {stem}_admin;"
        ))
        .ok();
}

#[test]
fn without_preload_the_metric_views_name_the_setting() {
    let cluster = start_cluster("", &[]).unwrap_or_else(|e| panic!("{e}"));
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION txevents")
        .expect("create extension");
    for sql in [
        "SELECT * FROM txevents.metrics",
        "SELECT * FROM txevents.errors",
        "SELECT * FROM txevents.latency_buckets",
        "SELECT txevents.reset_metrics()",
        "SELECT txevents.metrics_untracked()",
    ] {
        expect_error(&mut c, sql, "55000", "shared_preload_libraries");
    }
    // Everything else works.
    c.batch_execute("SELECT txevents.create_consumer('g')")
        .expect("create_consumer without preload");
    c.batch_execute("SELECT txevents.emit('a')")
        .expect("emit without preload");
    let lag = rows(&mut c, "SELECT pending FROM txevents.consumer_lag");
    assert_eq!(int(&lag[0], "pending"), 1);
    assert_eq!(
        c.query("SELECT * FROM txevents.poll('g')", &[])
            .expect("poll")
            .len(),
        1
    );
}
