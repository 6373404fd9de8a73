//! On a hot standby, emit and everything else that writes is refused with 25006
//! (read_only_sql_transaction) before anything is attempted, and `get` reads the
//! replicated events exactly as the primary returns them.

mod pg_common;

use std::time::Instant;

use cachetx_tests::pg;
use pg_common::{count, expect_error, EVENTUALLY};

#[test]
fn a_hot_standby_refuses_emit_and_serves_get() {
    let db = pg().create_db("hot_standby");
    let mut primary = db.connect();
    let id: i64 = primary
        .query_one(
            r#"SELECT txevents.emit('a.b', '{"n": 12345678901234567890123}', 'order', '1')"#,
            &[],
        )
        .expect("emit")
        .get(0);
    primary
        .batch_execute("SELECT txevents.create_consumer('g')")
        .expect("create_consumer");
    let standby = db.cluster().start_standby().expect("standby");
    let mut replica = standby.connect(&db.name);
    let begun = Instant::now();
    while count(&mut replica, "SELECT count(*) FROM txevents.consumers") < 1 {
        assert!(begun.elapsed() < EVENTUALLY, "the standby never caught up");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        count(
            &mut replica,
            "SELECT count(*) FROM pg_is_in_recovery() r WHERE r"
        ) == 1
    );
    for sql in [
        "SELECT txevents.emit('a.b')",
        "SELECT txevents.emit('a.b', '{}', 'order', '2', '{}')",
        "SELECT txevents.invalidate('ns', 'k')",
        "SELECT txevents.invalidate_namespace('ns')",
    ] {
        expect_error(&mut replica, sql, "25006", "read-only transaction");
    }
    // From PL/pgSQL too.
    expect_error(
        &mut replica,
        "DO $$ BEGIN PERFORM txevents.emit('x.y'); END $$",
        "25006",
        "read-only transaction",
    );
    let on_primary: String = primary
        .query_one("SELECT txevents.get($1)::text", &[&id])
        .expect("get on the primary")
        .get(0);
    let on_standby: String = replica
        .query_one("SELECT txevents.get($1)::text", &[&id])
        .expect("get on the standby")
        .get(0);
    assert_eq!(on_standby, on_primary);
    assert!(
        on_standby.contains("12345678901234567890123"),
        "{on_standby}"
    );
    // Everything that writes: refused with 25006 (poll used to fail with XX000
    // "cannot assign TransactionIds during recovery", from its row lock on the group).
    let mut codes = Vec::new();
    for sql in [
        "SELECT * FROM txevents.poll('g')".to_string(),
        format!("SELECT txevents.ack('g', ARRAY[{id}::bigint])"),
        format!("SELECT txevents.nack('g', {id}, 'boom')"),
        format!("SELECT txevents.redrive('g', ARRAY[{id}::bigint])"),
        "SELECT txevents.prune('0 s')".to_string(),
        "SELECT txevents.create_consumer('g2')".to_string(),
        "SELECT txevents.drop_consumer('g')".to_string(),
        "SELECT txevents.capture('txevents.consumers')".to_string(),
    ] {
        let err = replica.batch_execute(&sql).expect_err(&sql);
        codes.push((
            sql,
            err.code().map(|c| c.code().to_string()),
            err.as_db_error().map(|e| e.message().to_string()),
        ));
    }
    let wrong: Vec<_> = codes
        .iter()
        .filter(|(_, code, _)| code.as_deref() != Some("25006"))
        .collect();
    assert!(wrong.is_empty(), "not refused with 25006: {wrong:#?}");
    assert_eq!(
        count(&mut replica, "SELECT count(*) FROM txevents.outbox"),
        1
    );
    drop(replica);
    drop(standby);
}

#[test]
fn emit_is_refused_in_parallel_mode() {
    let db = pg().create_db("emit_refused_in_parallel_mode");
    let mut client = db.connect();
    // PostgreSQL 16 renamed force_parallel_mode to debug_parallel_query.
    let version = count(
        &mut client,
        "SELECT current_setting('server_version_num')::int8",
    );
    let force = if version >= 160000 {
        "debug_parallel_query"
    } else {
        "force_parallel_mode"
    };
    // Declared PARALLEL SAFE by a DBA and forced into a worker: refused (25000), not
    // written from a worker that has no transaction id of its own.
    client
        .batch_execute(&format!(
            "ALTER FUNCTION txevents.emit(text, jsonb, text, text, jsonb) PARALLEL SAFE;
             SET {force} = on; SET parallel_setup_cost = 0;"
        ))
        .expect("setup");
    expect_error(
        &mut client,
        "SELECT txevents.emit('a.b')",
        "25000",
        "during a parallel operation",
    );
    client
        .batch_execute(&format!("RESET {force}; SELECT txevents.emit('a.b')"))
        .expect("emit outside parallel mode");
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM txevents.outbox"),
        1
    );
}
