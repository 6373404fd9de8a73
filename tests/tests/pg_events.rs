//! txevents emitting paths against a private Postgres cluster: two-phase commit,
//! notification order, `get` for references, `invalidate`, `capture`.

mod pg_common;

use cachetx_shared::{CacheInvalidation, Envelope, InvalidationScope, NotifyPayload};
use cachetx_tests::pg;
use pg_common::*;
use postgres::Client;

fn get(client: &mut Client, id: i64) -> Option<Envelope> {
    let text: Option<String> = client
        .query_one("SELECT txevents.get($1)::text", &[&id])
        .expect("get")
        .get(0);
    text.map(|t| Envelope::parse(&t).unwrap_or_else(|e| panic!("get({id}) = {t}: {e}")))
}

#[test]
fn prepared_transactions_publish_on_commit_prepared_only() {
    let db = pg().create_db("prepared_transactions_publish_on_commit_prepared");
    let mut listener = Listener::new(&db);
    let mut admin = db.connect();
    admin
        .batch_execute("SELECT txevents.create_consumer('g')")
        .expect("group");
    let mut c = db.connect();
    let gid = format!("{}-commit", db.name);
    c.batch_execute(&format!(
        "BEGIN;
         SELECT txevents.emit('two.phase', '{{\"n\": 1}}');
         SAVEPOINT s;
         SELECT txevents.emit('two.dropped');
         ROLLBACK TO SAVEPOINT s;
         SELECT txevents.emit('two.phase.more');
         PREPARE TRANSACTION '{gid}';"
    ))
    .expect("prepare");
    assert!(
        listener.drain(QUIET).is_empty(),
        "nothing before COMMIT PREPARED"
    );
    assert!(
        poll(&mut admin, "g", 100, "30s").is_empty(),
        "not visible to consumers yet"
    );

    // Committed from another session.
    admin
        .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .expect("commit prepared");
    let got = listener.drain(QUIET);
    assert_eq!(event_types(&got), ["two.phase", "two.phase.more"]);
    let NotifyPayload::Event(envelope) = &got[0] else {
        panic!("inline expected: {:?}", got[0])
    };
    assert_eq!(envelope.payload["n"], 1);
    assert_eq!(get(&mut admin, envelope.id).as_ref(), Some(envelope));
    assert_eq!(
        count(&mut admin, "SELECT count(*) FROM txevents.prepared_notify"),
        0,
        "the stored notifications are consumed"
    );
    let polled = poll(&mut admin, "g", 100, "30s");
    assert_eq!(polled_ids(&polled), ids_of(&got));

    let gid = format!("{}-rollback", db.name);
    c.batch_execute(&format!(
        "BEGIN; SELECT txevents.emit('two.rolled.back'); PREPARE TRANSACTION '{gid}';"
    ))
    .expect("prepare");
    admin
        .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
        .expect("rollback prepared");
    assert!(
        listener.drain(QUIET).is_empty(),
        "nothing after ROLLBACK PREPARED"
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM txevents.outbox WHERE event_type = 'two.rolled.back'"
        ),
        0
    );
    assert!(poll(&mut admin, "g", 100, "30s").is_empty());

    // A prepared transaction without events and plain transactions are unaffected.
    let gid = format!("{}-empty", db.name);
    c.batch_execute(&format!("BEGIN; SELECT 1; PREPARE TRANSACTION '{gid}'"))
        .expect("empty prepare");
    c.batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .expect("empty commit prepared");
    emit(&mut c, "after.two.phase");
    assert_eq!(event_types(&listener.drain(QUIET)), ["after.two.phase"]);
}

#[test]
fn one_notification_per_event_in_commit_order() {
    let db = pg().create_db("one_notification_per_event_in_commit_order");
    let mut listener = Listener::new(&db);
    let mut a = db.connect();
    let mut b = db.connect();
    a.batch_execute("BEGIN").expect("begin");
    let a1 = emit(&mut a, "a.one");
    let a2 = emit(&mut a, "a.two");
    b.batch_execute("BEGIN").expect("begin");
    let b1 = emit(&mut b, "b.one");
    b.batch_execute("COMMIT").expect("commit b");
    a.batch_execute("COMMIT").expect("commit a");
    assert_eq!(
        ids_of(&listener.drain(QUIET)),
        [b1, a1, a2],
        "commit order, not id order"
    );

    // Many small transactions from two sessions: each event exactly once.
    let mut expected = Vec::new();
    for i in 0..40 {
        let client = if i % 2 == 0 { &mut a } else { &mut b };
        expected.push(emit(client, "many.x"));
    }
    let got = ids_of(&listener.drain(QUIET));
    assert_eq!(got, expected);
}

#[test]
fn large_events_are_references_that_get_resolves() {
    let db = pg().create_db("large_events_are_references_that_get_resolves");
    let mut listener = Listener::new(&db);
    let mut c = db.connect();
    c.batch_execute("SELECT txevents.create_consumer('g')")
        .expect("group");
    let big: i64 = c
        .query_one(
            "SELECT txevents.emit('report.generated', jsonb_build_object('body', repeat('x', 9000)), 'report', 'r-1', '{\"h\": true}')",
            &[],
        )
        .expect("emit")
        .get(0);
    let small = emit(&mut c, "small.one");
    let got = listener.drain(QUIET);
    assert_eq!(got.len(), 2);
    assert!(
        matches!(&got[0], NotifyPayload::Ref { id, event_type } if *id == big && event_type == "report.generated"),
        "{:?}",
        got[0]
    );
    let envelope = get(&mut c, big).expect("the referenced event");
    assert_eq!(envelope.id, big);
    assert_eq!(envelope.event_type, "report.generated");
    assert_eq!(envelope.payload["body"].as_str().map(str::len), Some(9000));
    assert_eq!(envelope.aggregate_type.as_deref(), Some("report"));
    assert_eq!(envelope.aggregate_id.as_deref(), Some("r-1"));
    assert_eq!(envelope.headers["h"], true);
    assert!(envelope.txid.is_some());

    // get returns exactly the envelope an inline notification carries.
    let NotifyPayload::Event(inline) = &got[1] else {
        panic!("inline expected")
    };
    assert_eq!(get(&mut c, small).as_ref(), Some(inline));
    assert_eq!(get(&mut c, 999_999), None);

    // A payload too large for a heap page is stored out of line and read back whole.
    let (huge, expected): (i64, String) = {
        let r = c
            .query_one(
                "WITH body AS (SELECT string_agg(md5(i::text), '') AS b FROM generate_series(1, 20000) i)
                 SELECT txevents.emit('huge.one', jsonb_build_object('b', b)), b FROM body",
                &[],
            )
            .expect("emit huge");
        (r.get(0), r.get(1))
    };
    let envelope = get(&mut c, huge).expect("huge event");
    assert_eq!(envelope.payload["b"].as_str(), Some(expected.as_str()));
    assert!(matches!(&listener.drain(QUIET)[..], [NotifyPayload::Ref { id, .. }] if *id == huge));
    // poll returns the stored payloads whole, the out-of-line one included.
    let polled: Vec<(i64, i32)> = c
        .query(
            "SELECT id, length(payload::text) FROM txevents.poll('g') ORDER BY id",
            &[],
        )
        .expect("poll")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let lengths: Vec<(i64, i32)> = c
        .query(
            "SELECT id, length(payload::text) FROM txevents.outbox ORDER BY id",
            &[],
        )
        .expect("outbox")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(polled, lengths);
    assert!(polled.iter().any(|&(id, len)| id == huge && len > 640_000));
}

#[test]
fn invalidate_emits_the_shared_invalidation_payload() {
    let db = pg().create_db("invalidate_emits_the_shared_invalidation");
    let mut listener = Listener::new(&db);
    let mut c = db.connect();
    c.batch_execute(
        "BEGIN;
         SELECT txevents.invalidate('candidates', '42', '{user:7}:profile');
         SELECT txevents.invalidate_namespace('processes');
         COMMIT;",
    )
    .expect("invalidate");
    let got = listener.drain(QUIET);
    assert_eq!(event_types(&got), ["cache.invalidate", "cache.invalidate"]);
    let invalidations: Vec<CacheInvalidation> = got
        .iter()
        .map(|p| match p {
            NotifyPayload::Event(e) => {
                CacheInvalidation::from_payload(&e.payload).expect("shared format")
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        invalidations,
        [
            CacheInvalidation {
                prefix: "candidates".into(),
                scope: InvalidationScope::Keys(vec!["42".into(), "{user:7}:profile".into()]),
            },
            CacheInvalidation {
                prefix: "processes".into(),
                scope: InvalidationScope::Namespace,
            },
        ]
    );

    let cases: &[(&str, &str, &str)] = &[
        (
            "SELECT txevents.invalidate('a b', 'k')",
            "22023",
            "invalid prefix",
        ),
        (
            "SELECT txevents.invalidate_namespace('')",
            "22023",
            "prefix is empty",
        ),
        (
            "SELECT txevents.invalidate_namespace(repeat('p', 65))",
            "22023",
            "limit is 64",
        ),
        (
            "SELECT txevents.invalidate(NULL, 'k')",
            "22004",
            "prefix must not be null",
        ),
        (
            "SELECT txevents.invalidate('p', VARIADIC ARRAY[]::text[])",
            "22023",
            "at least one key",
        ),
        (
            "SELECT txevents.invalidate('p', 'k', NULL)",
            "22004",
            "keys element must not be null",
        ),
        (
            "SELECT txevents.invalidate('p', VARIADIC NULL::text[])",
            "22004",
            "keys must not be null",
        ),
    ];
    for (sql, code, text) in cases {
        expect_error(&mut c, sql, code, text);
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM txevents.outbox"), 2);
    assert!(listener.drain(QUIET).is_empty());
}

fn events_after(
    c: &mut Client,
    after: i64,
) -> Vec<(String, Option<String>, Option<String>, String)> {
    c.query(
        "SELECT event_type, aggregate_type, aggregate_id, payload::text FROM txevents.outbox WHERE id > $1 ORDER BY id",
        &[&after],
    )
    .expect("outbox")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[test]
fn capture_emits_row_changes_until_uncapture() {
    let db = pg().create_db("capture_emits_row_changes_until_uncapture");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE SCHEMA hr;
         CREATE TABLE hr.\"Candidates\" (id int PRIMARY KEY, name text, tags text[]);
         CREATE TABLE notes (body text);
         CREATE VIEW v AS SELECT 1 AS one;
         SELECT txevents.capture('hr.\"Candidates\"');
         SELECT txevents.capture('notes', 'note');",
    )
    .expect("capture");
    c.batch_execute(
        "INSERT INTO hr.\"Candidates\" VALUES (1, 'Ada', '{a}');
         UPDATE hr.\"Candidates\" SET name = 'Ada L.' WHERE id = 1;
         DELETE FROM hr.\"Candidates\" WHERE id = 1;
         INSERT INTO notes VALUES ('hello');",
    )
    .expect("row changes");
    let got = events_after(&mut c, 0);
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        [
            ("Candidates.inserted".into(), s("Candidates"), s("1"),
             r#"{"new": {"id": 1, "name": "Ada", "tags": ["a"]}}"#.into()),
            ("Candidates.updated".into(), s("Candidates"), s("1"),
             r#"{"new": {"id": 1, "name": "Ada L.", "tags": ["a"]}, "old": {"id": 1, "name": "Ada", "tags": ["a"]}}"#.into()),
            ("Candidates.deleted".into(), s("Candidates"), s("1"),
             r#"{"old": {"id": 1, "name": "Ada L.", "tags": ["a"]}}"#.into()),
            ("note.inserted".into(), s("notes"), None, r#"{"new": {"body": "hello"}}"#.into()),
        ]
    );
    // A rolled-back change emits nothing.
    c.batch_execute("BEGIN; INSERT INTO notes VALUES ('x'); ROLLBACK;")
        .expect("rollback");
    let last: i64 = count(&mut c, "SELECT max(id) FROM txevents.outbox");
    assert_eq!(events_after(&mut c, last).len(), 0);

    let removed: bool = c
        .query_one("SELECT txevents.uncapture('hr.\"Candidates\"')", &[])
        .expect("uncapture")
        .get(0);
    assert!(removed);
    c.batch_execute("INSERT INTO hr.\"Candidates\" VALUES (2, 'Bob', NULL)")
        .expect("insert");
    assert!(events_after(&mut c, last).is_empty(), "uncaptured");
    let again: bool = c
        .query_one("SELECT txevents.uncapture('hr.\"Candidates\"')", &[])
        .expect("uncapture")
        .get(0);
    assert!(!again);

    expect_error(
        &mut c,
        "SELECT txevents.capture('v')",
        "42809",
        "is not a table",
    );
    expect_error(
        &mut c,
        "SELECT txevents.capture('missing')",
        "42P01",
        "does not exist",
    );
    expect_error(
        &mut c,
        "SELECT txevents.capture('notes', '')",
        "22023",
        "must not be empty",
    );
    // A dropped table's OID (found by the fuzz test): undefined_table, as Postgres.
    expect_error(
        &mut c,
        "SELECT txevents.capture(0::regclass)",
        "42P01",
        "relation with OID 0 does not exist",
    );
}

#[test]
fn emit_is_refused_in_a_read_only_transaction() {
    let db = pg().create_db("emit_is_refused_in_a_read_only_transaction");
    let mut c = db.connect();
    c.batch_execute("BEGIN READ ONLY").expect("begin");
    expect_error(
        &mut c,
        "SELECT txevents.emit('x.y')",
        "25006",
        "read-only transaction",
    );
    c.batch_execute("ROLLBACK").expect("rollback");
    c.batch_execute("SET default_transaction_read_only = on")
        .expect("set");
    expect_error(
        &mut c,
        "SELECT txevents.invalidate_namespace('p')",
        "25006",
        "read-only transaction",
    );
    c.batch_execute("SET default_transaction_read_only = off")
        .expect("set");
    assert_eq!(count(&mut c, "SELECT count(*) FROM txevents.outbox"), 0);
}
