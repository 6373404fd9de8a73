//! emit's executor state under errors, recursion and concurrent DDL: a session that
//! catches thousands of constraint violations raised inside emit's index insert keeps
//! working without growing; an index whose function emits recurses safely; REINDEX
//! CONCURRENTLY on another connection leaves every index complete (amcheck); deferred
//! checks of events emitted by another table's trigger run at COMMIT and at PREPARE.

mod pg_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cachetx_tests::{pg, TestDb};
use pg_common::{count, expect_error, postmaster_start};
use postgres::Client;

fn setup(name: &str) -> (TestDb, Client, String) {
    let db = pg().create_db(name);
    let mut client = db.connect();
    let started = postmaster_start(&mut client);
    (db, client, started)
}

/// Bytes held by the session's memory contexts.
fn session_memory(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT sum(total_bytes)::bigint FROM pg_backend_memory_contexts",
            &[],
        )
        .expect("memory contexts")
        .get(0)
}

#[test]
fn caught_violations_inside_emit_leave_the_session_working() {
    let (_db, mut client, started) = setup("caught_violations_inside_emit");
    client
        .batch_execute(
            "CREATE UNIQUE INDEX one_key ON txevents.outbox (aggregate_id) WHERE aggregate_type = 'u';
             ALTER TABLE txevents.outbox ADD CONSTRAINT one_deferrable
                 EXCLUDE (aggregate_id WITH =) WHERE (aggregate_type = 'd')
                 DEFERRABLE INITIALLY IMMEDIATE;
             CREATE INDEX by_n ON txevents.outbox (((payload->>'n')::int));
             SELECT txevents.emit('a.b', '{}', 'u', 'taken');
             SELECT txevents.emit('a.b', '{}', 'd', 'taken');",
        )
        .expect("setup");
    // Each kind of error raised while emit's EState, relation, indexes and slot are
    // open (and, for the deferrable constraint, inside AfterTriggerBeginQuery/EndQuery),
    // caught by a PL/pgSQL block (a subtransaction) thousands of times in one
    // transaction, by an assignment and by PERFORM.
    let loop_sql = |call: &str, condition: &str| {
        format!(
            "DO $$ DECLARE caught int := 0; x bigint; BEGIN
                 FOR i IN 1..3000 LOOP
                     BEGIN {call}; EXCEPTION WHEN {condition} THEN caught := caught + 1; END;
                 END LOOP;
                 IF caught <> 3000 THEN RAISE 'caught only %', caught; END IF;
             END $$"
        )
    };
    let cases = [
        (
            "x := txevents.emit('a.b', '{}', 'u', 'taken')",
            "unique_violation",
        ),
        (
            "PERFORM txevents.emit('a.b', '{}', 'u', 'taken')",
            "unique_violation",
        ),
        (
            "x := txevents.emit('a.b', '{}', 'd', 'taken')",
            "exclusion_violation",
        ),
        (
            "x := txevents.emit('a.b', '{\"n\": \"nan\"}')",
            "invalid_text_representation",
        ),
    ];
    // Warm up caches, then measure.
    client
        .batch_execute(&loop_sql(cases[0].0, cases[0].1))
        .expect("warm up");
    let before = session_memory(&mut client);
    for (call, condition) in cases {
        client
            .batch_execute(&loop_sql(call, condition))
            .unwrap_or_else(|e| panic!("{call}: {e:?}"));
        // And once more inside one explicit transaction, followed by a working emit.
        client
            .batch_execute(&format!(
                "BEGIN; {}; SELECT txevents.emit('after.errors', '{{}}', 'u', 'fresh-' || txid_current()); COMMIT",
                loop_sql(call, condition)
            ))
            .unwrap_or_else(|e| panic!("{call} in a transaction: {e:?}"));
    }
    let after = session_memory(&mut client);
    // 24,000 caught errors: a leaked EState (8 kB at least) per error would be 190 MB.
    assert!(
        after - before < 8 << 20,
        "session memory grew from {before} to {after} bytes"
    );
    // Nothing of the failed calls was written; the session and the constraints work.
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM txevents.outbox WHERE event_type = 'a.b'"
        ),
        2
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM txevents.outbox WHERE event_type = 'after.errors'"
        ),
        4
    );
    expect_error(
        &mut client,
        "SELECT txevents.emit('a.b', '{}', 'u', 'taken')",
        "23505",
        "one_key",
    );
    client
        .batch_execute("SELECT txevents.emit('a.b', '{\"n\": 5}', 'u', 'new')")
        .expect("emit after everything");
    let leaked = client
        .query(
            "SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND relation = 'txevents.outbox'::regclass",
            &[],
        )
        .expect("locks");
    assert!(
        leaked.is_empty(),
        "no lock on the outbox outlives its transaction"
    );
    assert_eq!(postmaster_start(&mut client), started);
}

#[test]
fn an_index_whose_function_emits_recurses_safely() {
    let (_db, mut client, started) = setup("index_function_emits");
    client
        .batch_execute(
            "CREATE FUNCTION nested(p jsonb) RETURNS bigint LANGUAGE plpgsql IMMUTABLE AS $$
             BEGIN
                 IF p ? 'nested' THEN RETURN 0; END IF;
                 RETURN txevents.emit('nested.x', '{\"nested\": true}');
             END $$;
             CREATE INDEX by_nested ON txevents.outbox (nested(payload));",
        )
        .expect("setup");
    // One level: the outer emit's index insert emits one more event.
    let id: i64 = client
        .query_one("SELECT txevents.emit('outer.x', '{}')", &[])
        .expect("emit")
        .get(0);
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM txevents.outbox"),
        2
    );
    assert_eq!(
        count(
            &mut client,
            &format!(
                "SELECT count(*) FROM txevents.outbox WHERE id > {id} AND event_type = 'nested.x'"
            )
        ),
        1
    );
    client
        .batch_execute("SET enable_seqscan = off")
        .expect("set");
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM txevents.outbox WHERE nested(payload) = 0"
        ),
        1
    );
    // Without a base case: Postgres's stack depth check stops it (54001), the session
    // goes on.
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION forever(p jsonb) RETURNS bigint LANGUAGE sql IMMUTABLE
                 AS $$ SELECT txevents.emit('forever.x', p) $$;
             CREATE INDEX by_forever ON txevents.outbox (forever(payload)) WHERE event_type = 'forever.x';",
        )
        .expect("endless index");
    expect_error(
        &mut client,
        "SELECT txevents.emit('forever.x')",
        "54001",
        "stack depth",
    );
    client
        .batch_execute("DROP INDEX txevents.by_forever; SELECT txevents.emit('after.x')")
        .expect("emit after");
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM txevents.outbox WHERE event_type = 'forever.x'"
        ),
        0
    );
    assert_eq!(postmaster_start(&mut client), started);
}

#[test]
fn reindex_concurrently_while_emitting_keeps_every_index_complete() {
    let (db, mut client, started) = setup("reindex_concurrently_while_emitting");
    client
        .batch_execute(
            "CREATE EXTENSION amcheck;
             CREATE UNIQUE INDEX by_aggregate ON txevents.outbox (aggregate_id);
             CREATE INDEX by_n ON txevents.outbox (((payload->>'n')::int)) WHERE aggregate_type = 't';",
        )
        .expect("setup");
    let stop = Arc::new(AtomicBool::new(false));
    let emitter = {
        let stop = Arc::clone(&stop);
        let mut emitter = db.connect();
        std::thread::spawn(move || {
            let mut n = 0i64;
            while !stop.load(Ordering::SeqCst) {
                // Short transactions of 20 events each, as an application would.
                emitter
                    .execute(
                        "SELECT txevents.emit('r.x', jsonb_build_object('n', g), 't', ($1::bigint + g)::text)
                           FROM generate_series(1, 20) AS g",
                        &[&n],
                    )
                    .expect("emit while reindexing");
                n += 20;
            }
            n
        })
    };
    for _ in 0..4 {
        for index in [
            "txevents.by_aggregate",
            "txevents.by_n",
            "txevents.outbox_pkey",
        ] {
            client
                .batch_execute(&format!("REINDEX INDEX CONCURRENTLY {index}"))
                .unwrap_or_else(|e| panic!("reindex {index}: {e:?}"));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let emitted = emitter.join().expect("emitter");
    assert!(emitted > 0);
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM txevents.outbox"),
        emitted
    );
    // Every btree index holds exactly the heap's rows.
    let checked = count(
        &mut client,
        "SELECT count(bt_index_check(c.oid, true))
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = 'txevents.outbox'::regclass AND i.indisvalid",
    );
    assert_eq!(checked, 4);
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM pg_index WHERE indrelid = 'txevents.outbox'::regclass AND NOT indisvalid"
        ),
        0
    );
    expect_error(
        &mut client,
        "SELECT txevents.emit('r.x', '{}', 't', '1')",
        "23505",
        "by_aggregate",
    );
    assert_eq!(postmaster_start(&mut client), started);
}

#[test]
fn deferred_checks_from_triggers_of_other_tables_and_at_prepare() {
    let (db, mut client, started) = setup("deferred_checks_triggers_and_prepare");
    client
        .batch_execute(
            "ALTER TABLE txevents.outbox ADD CONSTRAINT one_per_aggregate
                 UNIQUE (aggregate_type, aggregate_id) DEFERRABLE INITIALLY IMMEDIATE;
             CREATE TABLE orders (id text);
             CREATE FUNCTION order_event() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM txevents.emit('order.placed', '{}', 'order', NEW.id);
                 RETURN NULL;
             END $$;
             CREATE TRIGGER order_event AFTER INSERT ON orders
                 FOR EACH ROW EXECUTE FUNCTION order_event();",
        )
        .expect("setup");
    // Emitted from another table's trigger: immediate, the duplicate fails the INSERT.
    client
        .batch_execute("INSERT INTO orders VALUES ('1'), ('2')")
        .expect("insert");
    expect_error(
        &mut client,
        "INSERT INTO orders VALUES ('3'), ('3')",
        "23505",
        "one_per_aggregate",
    );
    // Deferred: a duplicate removed before COMMIT passes; one left fails COMMIT.
    client
        .batch_execute(
            "BEGIN; SET CONSTRAINTS ALL DEFERRED;
             INSERT INTO orders VALUES ('4'), ('4');
             DELETE FROM txevents.outbox WHERE id = (SELECT max(id) FROM txevents.outbox);
             COMMIT;",
        )
        .expect("deferred duplicate removed before commit");
    let err = client
        .batch_execute(
            "BEGIN; SET CONSTRAINTS ALL DEFERRED; INSERT INTO orders VALUES ('5'), ('5'); COMMIT",
        )
        .expect_err("a deferred duplicate fails COMMIT");
    assert_eq!(err.code().map(|c| c.code()), Some("23505"), "{err:?}");
    // Two-phase commit: the deferred check runs at PREPARE, and a failed PREPARE
    // leaves no prepared transaction.
    let err = client
        .batch_execute(
            "BEGIN; SET CONSTRAINTS ALL DEFERRED; INSERT INTO orders VALUES ('6'), ('6');
             PREPARE TRANSACTION 'dup'",
        )
        .expect_err("a deferred duplicate fails PREPARE");
    assert_eq!(err.code().map(|c| c.code()), Some("23505"), "{err:?}");
    client.batch_execute("ROLLBACK").ok();
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM pg_prepared_xacts"),
        0
    );
    let mut listener = db.connect();
    listener.batch_execute("LISTEN txevents").expect("listen");
    client
        .batch_execute(
            "BEGIN; SET CONSTRAINTS ALL DEFERRED; INSERT INTO orders VALUES ('7');
             PREPARE TRANSACTION 'ok'",
        )
        .expect("prepare");
    client
        .batch_execute("COMMIT PREPARED 'ok'")
        .expect("commit prepared");
    let got = pg_common::Listener(listener).drain(pg_common::QUIET);
    assert_eq!(pg_common::event_types(&got), vec!["order.placed"]);
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM (SELECT aggregate_id FROM txevents.outbox
                                   GROUP BY aggregate_id HAVING count(*) > 1) d"
        ),
        0
    );
    // Orders 1, 2, 4 (its duplicate deleted) and 7.
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM txevents.outbox"),
        4
    );
    assert_eq!(postmaster_start(&mut client), started);
}
