//! Internal errors are reported, not hidden, and never carry a Rust backtrace.
//!
//! This binary's server runs with `RUST_BACKTRACE=1` in its environment (the setting
//! that used to make pgrx append a backtrace to every error's DETAIL), so the checks
//! below fail if any error path still lets one through.

mod pg_common;

use cachetx_tests::pg_cluster::pg_with_rust_backtrace;
use cachetx_tests::sqlstate;
use pg_common::{drain_group, emit, postmaster_start};
use postgres::Client;

/// Runs `sql`, expects an error with `code`; returns (message, detail, hint).
fn error_of(client: &mut Client, sql: &str, code: &str) -> (String, String, String) {
    let err = client.batch_execute(sql).expect_err(sql);
    assert_eq!(sqlstate(&err).as_deref(), Some(code), "{sql}: {err:?}");
    let db = err.as_db_error().expect("a server error");
    (
        db.message().to_string(),
        db.detail().unwrap_or_default().to_string(),
        db.hint().unwrap_or_default().to_string(),
    )
}

/// No trace of Rust internals in anything a user sees.
fn assert_no_backtrace(sql: &str, parts: &(String, String, String)) {
    for text in [&parts.0, &parts.1, &parts.2] {
        let lower = text.to_lowercase();
        for needle in [
            "backtrace",
            "stack backtrace",
            ".rs:",
            "rust_begin_unwind",
            "at /",
        ] {
            assert!(
                !lower.contains(needle),
                "{sql}: {needle:?} leaked into the error: {parts:?}"
            );
        }
    }
}

#[test]
fn corrupt_group_position_is_an_internal_error_not_a_rewind() {
    let db = pg_with_rust_backtrace().create_db("corrupt_group_position");
    let mut client = db.connect();
    let started = postmaster_start(&mut client);
    client
        .batch_execute("SELECT txevents.create_consumer('g')")
        .expect("create_consumer");
    for _ in 0..3 {
        emit(&mut client, "a.b");
    }
    assert_eq!(drain_group(&mut client, "g").len(), 3);

    // A range without its position: the old code read position 0 and went on from
    // there, silently; now it is refused as corrupt state.
    client
        .batch_execute(
            "UPDATE txevents.consumers
                SET range_snapshot = pg_current_snapshot(), range_txid = NULL, range_id = NULL
              WHERE name = 'g'",
        )
        .expect("corrupt the group");
    let sql = "SELECT * FROM txevents.poll('g')";
    let parts = error_of(&mut client, sql, "XX000");
    assert!(
        parts.0.contains("corrupt consumer state")
            && parts.0.contains("\"g\"")
            && parts.0.contains("range_txid"),
        "a clear message naming the group and the column: {parts:?}"
    );
    assert_no_backtrace(sql, &parts);

    // A position that is not a transaction id cannot be stored (xid8 column), but a
    // negative event id can: also refused.
    client
        .batch_execute(
            "UPDATE txevents.consumers
                SET range_snapshot = pg_current_snapshot(), range_txid = '1', range_id = -5
              WHERE name = 'g'",
        )
        .expect("corrupt the group");
    let parts = error_of(&mut client, sql, "XX000");
    assert!(parts.0.contains("range_id -5"), "{parts:?}");
    assert_no_backtrace(sql, &parts);

    // Repaired, the group works again and redelivers nothing.
    client
        .batch_execute(
            "UPDATE txevents.consumers SET range_snapshot = NULL, range_txid = NULL, range_id = NULL
              WHERE name = 'g'",
        )
        .expect("repair");
    assert!(drain_group(&mut client, "g").is_empty());
    assert_eq!(postmaster_start(&mut client), started);
}

#[test]
fn corrupt_claim_is_an_internal_error() {
    let db = pg_with_rust_backtrace().create_db("corrupt_claim");
    let mut client = db.connect();
    client
        .batch_execute("SELECT txevents.create_consumer('g', max_attempts => 5)")
        .expect("create_consumer");
    let id = emit(&mut client, "a.b");
    emit(&mut client, "a.b");
    client
        .batch_execute("SELECT * FROM txevents.poll('g', 10, '1 hour')")
        .expect("poll");
    // Attempts shorter than the ids: the old code counted the missing attempt as 1.
    client
        .batch_execute("UPDATE txevents.claims SET attempts = attempts[1:1]")
        .expect("corrupt the claim");
    let ids: Vec<i64> = client
        .query_one("SELECT event_ids FROM txevents.claims", &[])
        .expect("claim")
        .get(0);
    let last = ids[ids.len() - 1];
    assert_ne!(last, id);
    let sql = format!("SELECT txevents.nack('g', {last}, 'boom')");
    let parts = error_of(&mut client, &sql, "XX000");
    assert!(
        parts.0.contains("fewer attempts than event ids"),
        "{parts:?}"
    );
    assert_no_backtrace(&sql, &parts);
}

#[test]
fn postgres_errors_raised_inside_the_extension_carry_no_backtrace() {
    let db = pg_with_rust_backtrace().create_db("postgres_errors_carry_no_backtrace");
    let mut client = db.connect();
    // An error raised by Postgres while the extension's Rust code runs (an index
    // expression evaluated by emit's insert): pgrx used to append the Rust backtrace.
    client
        .batch_execute("CREATE INDEX outbox_n ON txevents.outbox (((payload->>'n')::int))")
        .expect("index");
    let sql = r#"SELECT txevents.emit('a', '{"n": "abc"}')"#;
    let parts = error_of(&mut client, sql, "22P02");
    assert_no_backtrace(sql, &parts);
    // A unique violation from the same path.
    client
        .batch_execute("CREATE UNIQUE INDEX outbox_t ON txevents.outbox (event_type)")
        .expect("index");
    emit(&mut client, "once");
    let sql = "SELECT txevents.emit('once')";
    let parts = error_of(&mut client, sql, "23505");
    assert_no_backtrace(sql, &parts);
    // And the extension's own errors.
    for (sql, code) in [
        ("SELECT txevents.ack('nope', ARRAY[1])", "42704"),
        ("SELECT txevents.emit('', '{}')", "22023"),
        ("SELECT * FROM txevents.poll('g', 0)", "22023"),
    ] {
        let parts = error_of(&mut client, sql, code);
        assert_no_backtrace(sql, &parts);
    }
}

#[test]
fn null_elements_in_stored_arrays_are_named_internal_errors() {
    let db = pg_with_rust_backtrace().create_db("null_elements_in_stored_arrays");
    let mut client = db.connect();
    let started = postmaster_start(&mut client);
    client
        .batch_execute("SELECT txevents.create_consumer('g', ARRAY['a.b'])")
        .expect("create_consumer");
    let id = emit(&mut client, "a.b");
    // A NULL in a group's filter: pgrx's array conversion used to panic with a bare
    // "array contains NULL" that named nothing.
    client
        .batch_execute("UPDATE txevents.consumers SET event_types = ARRAY['a.b', NULL]")
        .expect("corrupt the filter");
    let sql = "SELECT * FROM txevents.poll('g', 10, '1 hour')";
    let parts = error_of(&mut client, sql, "XX000");
    assert!(
        parts
            .0
            .contains("event_types of consumer group \"g\" holds a NULL element"),
        "{parts:?}"
    );
    assert_no_backtrace(sql, &parts);
    client
        .batch_execute("UPDATE txevents.consumers SET event_types = ARRAY['a.b']")
        .expect("repair the filter");
    client.batch_execute(sql).expect("poll");
    // NULL elements in a claim, read by nack and by a poll taking over expired claims.
    for (column, value) in [
        ("event_ids", "ARRAY[NULL::bigint]"),
        ("attempts", "ARRAY[NULL::int]"),
    ] {
        let mut tx = client.transaction().expect("begin");
        tx.batch_execute(&format!(
            "UPDATE txevents.claims SET {column} = {value} || {column}[2:],
                                       lease_until = now() - interval '1 hour'"
        ))
        .expect("corrupt the claim");
        // nack finds its claim by event id (`event_ids @> ARRAY[id]`): with a NULL in
        // event_ids it finds none, a plain 55000; with one in attempts it reads it.
        let mut calls = vec!["SELECT * FROM txevents.poll('g', 10, '1 hour')".to_string()];
        if column == "attempts" {
            calls.push(format!("SELECT txevents.nack('g', {id}, 'boom')"));
        }
        for sql in calls {
            let err = tx
                .batch_execute(&format!("SAVEPOINT s; {sql}"))
                .expect_err(&sql);
            let db_err = err.as_db_error().expect("a server error");
            assert_eq!(db_err.code().code(), "XX000", "{sql}: {err:?}");
            let parts = (
                db_err.message().to_string(),
                db_err.detail().unwrap_or_default().to_string(),
                db_err.hint().unwrap_or_default().to_string(),
            );
            assert!(
                parts
                    .0
                    .contains(&format!("claim {column} holds a NULL element")),
                "{sql}: {parts:?}"
            );
            assert_no_backtrace(&sql, &parts);
            tx.batch_execute("ROLLBACK TO SAVEPOINT s")
                .expect("rollback to");
        }
        tx.rollback().expect("rollback");
    }
    // A NULL among a prepared transaction's stored notifications (written by hand: the
    // row of a real prepared transaction is invisible until COMMIT PREPARED).
    client
        .batch_execute(
            "INSERT INTO txevents.prepared_notify VALUES ('p1', ARRAY['txevents'], ARRAY[NULL]);
             BEGIN; PREPARE TRANSACTION 'p1';",
        )
        .expect("prepare and corrupt");
    let sql = "COMMIT PREPARED 'p1'";
    let err = client.batch_execute(sql).expect_err(sql);
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "XX000", "{err:?}");
    assert!(
        db_err.message().contains("payloads holds a NULL element"),
        "{err:?}"
    );
    assert_eq!(postmaster_start(&mut client), started);
}
