//! txevents against a private Postgres cluster: emit, post-commit NOTIFY, bad input.

mod pg_common;

use cachetx_shared::NotifyPayload;
use cachetx_tests::{pg, sqlstate};
use pg_common::{event_types, expect_error, ids_of, Listener, QUIET};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

fn outbox_count(client: &mut Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM txevents.outbox", &[])
        .expect("count")
        .get(0)
}

#[test]
fn one_notification_per_event_after_commit() {
    let db = pg().create_db("one_notification_per_event_after_commit");
    let mut listener = Listener::new(&db);
    let mut client = db.connect();

    let mut tx = client.transaction().expect("begin");
    let first: i64 = tx
        .query_one(
            "SELECT txevents.emit('candidate.created', '{\"id\": 42, \"name\": \"Ada\"}', 'candidate', '42')",
            &[],
        )
        .expect("emit")
        .get(0);
    let second: i64 = tx
        .query_one(
            "SELECT txevents.emit('candidate.updated', '{\"id\": 42}', 'candidate', '42', '{\"trace\": \"t-1\"}')",
            &[],
        )
        .expect("emit")
        .get(0);
    assert!(
        listener.drain(QUIET).is_empty(),
        "nothing is published before COMMIT"
    );
    tx.commit().expect("commit");

    let got = listener.drain(QUIET);
    assert_eq!(
        event_types(&got),
        ["candidate.created", "candidate.updated"]
    );
    let NotifyPayload::Event(envelope) = &got[0] else {
        panic!("small events travel inline: {:?}", got[0])
    };
    assert_eq!(envelope.id, first);
    assert_eq!(envelope.aggregate_type.as_deref(), Some("candidate"));
    assert_eq!(envelope.aggregate_id.as_deref(), Some("42"));
    assert_eq!(envelope.payload["name"], "Ada");
    assert!(envelope.txid.is_some());
    let NotifyPayload::Event(second_env) = &got[1] else {
        panic!("inline")
    };
    assert_eq!(second_env.id, second);
    assert_eq!(second_env.headers["trace"], "t-1");
    assert_eq!(second_env.txid, envelope.txid, "same transaction");

    // Outside a transaction block, each statement commits on its own.
    client
        .batch_execute("SELECT txevents.emit('candidate.archived')")
        .expect("autocommit emit");
    assert_eq!(event_types(&listener.drain(QUIET)), ["candidate.archived"]);
    assert_eq!(outbox_count(&mut client), 3);
}

#[test]
fn nothing_is_published_after_rollback() {
    let db = pg().create_db("nothing_is_published_after_rollback");
    let mut listener = Listener::new(&db);
    let mut client = db.connect();
    client
        .batch_execute("BEGIN; SELECT txevents.emit('candidate.rejected', '{}'); ROLLBACK;")
        .expect("rolled back emit");
    assert!(listener.drain(QUIET).is_empty());
    assert_eq!(outbox_count(&mut client), 0);

    // An error that aborts the transaction discards its events too.
    let err = client
        .batch_execute("BEGIN; SELECT txevents.emit('x.y', '{}'); SELECT 1/0; COMMIT;")
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    client
        .batch_execute("ROLLBACK")
        .expect("clear the aborted transaction");
    assert!(listener.drain(QUIET).is_empty());
    assert_eq!(outbox_count(&mut client), 0);

    // Positive control: the same listener does receive a committed event, and only
    // that one (a dead listener or a lost LISTEN would pass the checks above).
    let committed: i64 = client
        .query_one("SELECT txevents.emit('candidate.hired', '{}')", &[])
        .expect("committed emit")
        .get(0);
    let got = listener.drain(QUIET);
    assert_eq!(ids_of(&got), [committed], "{got:?}");
    assert_eq!(event_types(&got), ["candidate.hired"]);
    assert_eq!(outbox_count(&mut client), 1);
}

#[test]
fn rollback_to_savepoint_discards_only_later_events() {
    let db = pg().create_db("rollback_to_savepoint_discards_only_later_events");
    let mut listener = Listener::new(&db);
    let mut client = db.connect();
    client
        .batch_execute(
            "BEGIN;
             SELECT txevents.emit('kept.before', '{}');
             SAVEPOINT s1;
             SELECT txevents.emit('dropped.inside', '{}');
             SAVEPOINT s2;
             SELECT txevents.emit('dropped.nested', '{}');
             ROLLBACK TO SAVEPOINT s1;
             SELECT txevents.emit('kept.after', '{}');
             SAVEPOINT s3;
             SELECT txevents.emit('kept.released', '{}');
             RELEASE SAVEPOINT s3;
             COMMIT;",
        )
        .expect("transaction with savepoints");
    assert_eq!(
        event_types(&listener.drain(QUIET)),
        ["kept.before", "kept.after", "kept.released"]
    );
    let rows: Vec<String> = client
        .query("SELECT event_type FROM txevents.outbox ORDER BY id", &[])
        .expect("outbox")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, ["kept.before", "kept.after", "kept.released"]);
}

#[test]
fn large_event_is_notified_by_reference() {
    let db = pg().create_db("large_event_is_notified_by_reference");
    let mut listener = Listener::new(&db);
    let mut client = db.connect();
    let id: i64 = client
        .query_one(
            "SELECT txevents.emit('report.generated', jsonb_build_object('body', repeat('x', 9000)))",
            &[],
        )
        .expect("emit")
        .get(0);
    let got = listener.drain(QUIET);
    assert_eq!(got.len(), 1);
    assert!(
        matches!(&got[0], NotifyPayload::Ref { id: r, event_type } if *r == id && event_type == "report.generated"),
        "{:?}",
        got[0]
    );
}

#[test]
fn bad_arguments_raise_specific_sqlstates_and_insert_nothing() {
    let db = pg().create_db("bad_arguments_raise_specific_sqlstates");
    let mut listener = Listener::new(&db);
    let mut client = db.connect();
    let long_type = format!("SELECT txevents.emit('{}', '{{}}')", "x".repeat(256));
    let cases: [(&str, &str, &str); 8] = [
        (
            "SELECT txevents.emit(NULL, '{}')",
            "22004",
            "event_type must not be null",
        ),
        (
            "SELECT txevents.emit('', '{}')",
            "22023",
            "event_type must not be empty",
        ),
        (&long_type, "22023", "limit is 255"),
        (
            "SELECT txevents.emit('a.b', '[1, 2]')",
            "22023",
            "payload must be a JSON object",
        ),
        (
            "SELECT txevents.emit('a.b', '\"text\"')",
            "22023",
            "payload must be a JSON object",
        ),
        (
            "SELECT txevents.emit('a.b', NULL)",
            "22004",
            "payload must not be null",
        ),
        (
            "SELECT txevents.emit('a.b', '{}', NULL, NULL, '[]')",
            "22023",
            "headers must be a JSON object",
        ),
        (
            "SELECT txevents.emit('a.b', 'not json')",
            "22P02",
            "invalid input syntax",
        ),
    ];
    for (sql, code, text) in cases {
        expect_error(&mut client, sql, code, text);
    }
    assert_eq!(outbox_count(&mut client), 0);
    assert!(listener.drain(QUIET).is_empty());
}

#[test]
fn notify_off_and_custom_channel() {
    let db = pg().create_db("notify_off_and_custom_channel");
    let mut listener = Listener::new(&db);
    let mut other = db.connect();
    other.batch_execute("LISTEN orders").expect("LISTEN orders");
    let mut client = db.connect();
    client
        .batch_execute("SET txevents.notify = off; SELECT txevents.emit('silent.event')")
        .expect("emit with notify off");
    client
        .batch_execute("SET txevents.notify = commit; SET txevents.channel = 'orders'; SELECT txevents.emit('order.placed')")
        .expect("emit on another channel");
    assert!(listener.drain(QUIET).is_empty());
    let mut got = Vec::new();
    let mut notifications = other.notifications();
    let mut iter = notifications.timeout_iter(QUIET);
    while let Some(n) = iter.next().expect("stream") {
        got.push((
            n.channel().to_string(),
            NotifyPayload::parse(n.payload()).expect("parse"),
        ));
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "orders");
    assert_eq!(got[0].1.event_type(), "order.placed");
    assert_eq!(
        outbox_count(&mut client),
        2,
        "notify=off still records the event"
    );
}

#[test]
fn emit_refuses_an_outbox_it_would_bypass() {
    let db = pg().create_db("emit_refuses_an_outbox_it_would_bypass");
    let mut client = db.connect();
    let alterations = [
        (
            "CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
             CREATE TRIGGER audit BEFORE INSERT ON txevents.outbox FOR EACH ROW EXECUTE FUNCTION audit()",
            "DROP TRIGGER audit ON txevents.outbox",
            "a trigger",
        ),
        (
            "ALTER TABLE txevents.outbox ADD CONSTRAINT short CHECK (length(event_type) < 100)",
            "ALTER TABLE txevents.outbox DROP CONSTRAINT short",
            "a CHECK constraint",
        ),
        (
            "CREATE RULE also_notify AS ON INSERT TO txevents.outbox DO ALSO NOTIFY elsewhere",
            "DROP RULE also_notify ON txevents.outbox",
            "a rule",
        ),
    ];
    for (alter, undo, what) in alterations {
        client.batch_execute(alter).expect(alter);
        expect_error(&mut client, "SELECT txevents.emit('a.b')", "55000", what);
        client.batch_execute(undo).expect(undo);
    }
    client
        .batch_execute("SELECT txevents.emit('a.b')")
        .expect("emit after undoing");
    assert_eq!(outbox_count(&mut client), 1);
}
