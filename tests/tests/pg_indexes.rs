//! Indexes and columns a DBA changes on `txevents.outbox`: emit's direct insert
//! maintains every index kind a plain INSERT maintains (expression, partial, unique,
//! exclusion, deferrable constraints checked when due, not yet ready indexes skipped),
//! honours an added NOT NULL, and refuses (55000) columns it would write wrongly. No
//! backend crashes and the server never restarts.

mod pg_common;

use cachetx_tests::sqlstate;
use pg_common::{count, expect_error, setup};
use postgres::Client;

/// Runs `query` with sequential and bitmap scans off, checks that the plan uses
/// `index`, and returns the ids it finds.
fn ids_by_index(client: &mut Client, query: &str, index: &str) -> Vec<i64> {
    client
        .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .expect("planner settings");
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {query}"), &[])
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|line| line.contains(index)),
        "the plan must scan {index}:\n{}",
        plan.join("\n")
    );
    let ids = client
        .query(query, &[])
        .expect(query)
        .iter()
        .map(|r| r.get(0))
        .collect();
    client
        .batch_execute("RESET enable_seqscan; RESET enable_bitmapscan")
        .expect("reset planner settings");
    ids
}

fn emit(client: &mut Client, event_type: &str, payload: &str, aggregate_id: &str) -> i64 {
    client
        .query_one(
            "SELECT txevents.emit($1, $2::text::jsonb, 'order', $3)",
            &[&event_type, &payload, &aggregate_id],
        )
        .unwrap_or_else(|e| panic!("emit {event_type} {payload}: {e:?}"))
        .get(0)
}

#[test]
fn expression_index_is_maintained() {
    let mut s = setup("expression_index_is_maintained");
    // The issue's reproduction: this crashed the backend and restarted the server.
    s.client
        .batch_execute("CREATE INDEX outbox_x ON txevents.outbox ((payload->>'x'))")
        .expect("create index");
    let id = emit(&mut s.client, "a", r#"{"x":"1"}"#, "o-1");
    emit(&mut s.client, "a", r#"{"x":"2"}"#, "o-2");
    emit(&mut s.client, "a", r#"{"y":"1"}"#, "o-3");
    s.check_alive();
    assert_eq!(
        ids_by_index(
            &mut s.client,
            "SELECT id FROM txevents.outbox WHERE payload->>'x' = '1'",
            "outbox_x"
        ),
        [id]
    );
    // An expression that fails for a payload fails that emit as an INSERT would
    // (22P02), in the same session, without a crash.
    s.client
        .batch_execute("CREATE INDEX outbox_n ON txevents.outbox (((payload->>'n')::int))")
        .expect("create index");
    expect_error(
        &mut s.client,
        r#"SELECT txevents.emit('a', '{"n": "abc"}')"#,
        "22P02",
        "invalid input syntax for type integer",
    );
    let n = emit(&mut s.client, "a", r#"{"n": "7"}"#, "o-4");
    assert_eq!(
        ids_by_index(
            &mut s.client,
            "SELECT id FROM txevents.outbox WHERE (payload->>'n')::int = 7",
            "outbox_n"
        ),
        [n]
    );
    s.check_alive();
}

#[test]
fn plain_extra_btree_index_is_maintained() {
    let mut s = setup("plain_extra_btree_index_is_maintained");
    s.client
        .batch_execute("CREATE INDEX outbox_agg ON txevents.outbox (aggregate_id)")
        .expect("create index");
    let ids: Vec<i64> = (0..20)
        .map(|i| emit(&mut s.client, "order.placed", "{}", &format!("o-{i}")))
        .collect();
    assert_eq!(
        ids_by_index(
            &mut s.client,
            "SELECT id FROM txevents.outbox WHERE aggregate_id = 'o-13'",
            "outbox_agg"
        ),
        [ids[13]]
    );
    // The index is consistent with the table (amcheck-free check: an index-only count
    // equals the heap count).
    let by_index: i64 = s
        .client
        .query_one(
            "SELECT count(*) FROM txevents.outbox WHERE aggregate_id >= ''",
            &[],
        )
        .expect("count")
        .get(0);
    assert_eq!(by_index, 20);
    s.check_alive();
}

#[test]
fn partial_unique_index_honours_its_predicate() {
    let mut s = setup("partial_unique_index_honours_its_predicate");
    s.client
        .batch_execute(
            "CREATE UNIQUE INDEX one_placed_per_order ON txevents.outbox (aggregate_id)
              WHERE event_type = 'order.placed'",
        )
        .expect("create index");
    let placed = emit(&mut s.client, "order.placed", "{}", "o-1");
    // Rows outside the predicate are not in the index: no uniqueness between them.
    emit(&mut s.client, "order.shipped", "{}", "o-1");
    emit(&mut s.client, "order.shipped", "{}", "o-1");
    // Inside the predicate, uniqueness holds.
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('order.placed', '{}', 'order', 'o-1')",
        "23505",
        "one_placed_per_order",
    );
    assert_eq!(
        ids_by_index(
            &mut s.client,
            "SELECT id FROM txevents.outbox WHERE event_type = 'order.placed' AND aggregate_id = 'o-1'",
            "one_placed_per_order"
        ),
        [placed]
    );
    s.check_alive();
}

#[test]
fn exclusion_constraint_is_checked() {
    let mut s = setup("exclusion_constraint_is_checked");
    s.client
        .batch_execute(
            "ALTER TABLE txevents.outbox
               ADD CONSTRAINT one_event_per_order EXCLUDE USING btree (aggregate_id WITH =)",
        )
        .expect("add exclusion constraint");
    emit(&mut s.client, "order.placed", "{}", "o-1");
    emit(&mut s.client, "order.placed", "{}", "o-2");
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('order.shipped', '{}', 'order', 'o-1')",
        "23P01",
        "one_event_per_order",
    );
    let n = count(&mut s.client, "SELECT count(*) FROM txevents.outbox");
    assert_eq!(n, 2);
    s.check_alive();
}

/// Runs `sql`, expects an error with `code` whose message names `constraint`.
fn expect_violation(client: &mut Client, sql: &str, code: &str, constraint: &str) {
    expect_error(client, sql, code, constraint);
    // A failed COMMIT ends the transaction; a failed statement inside one does not.
    client.batch_execute("ROLLBACK").expect("rollback");
}

#[test]
fn deferrable_constraints_are_checked_when_they_are_due() {
    let mut s = setup("deferrable_constraints_are_checked_when_due");
    let cases = [
        (
            "ALTER TABLE txevents.outbox ADD CONSTRAINT agg_once UNIQUE (aggregate_id)
               DEFERRABLE INITIALLY DEFERRED",
            "ALTER TABLE txevents.outbox DROP CONSTRAINT agg_once",
            "agg_once",
            "23505",
        ),
        (
            "ALTER TABLE txevents.outbox ADD CONSTRAINT agg_excl
               EXCLUDE USING btree (aggregate_id WITH =) DEFERRABLE INITIALLY DEFERRED",
            "ALTER TABLE txevents.outbox DROP CONSTRAINT agg_excl",
            "agg_excl",
            "23P01",
        ),
    ];
    for (add, drop, constraint, code) in cases {
        s.client.batch_execute(add).expect(add);
        let before = count(&mut s.client, "SELECT count(*) FROM txevents.outbox");
        // A conflict inside the transaction is allowed until COMMIT checks it.
        // Each constraint its own value: the rows of the previous case stay.
        let dup = format!("'dup-{constraint}'");
        expect_violation(
            &mut s.client,
            &format!(
                "BEGIN;
                 SELECT txevents.emit('order.placed', '{{}}', 'order', {dup});
                 SELECT txevents.emit('order.placed', '{{}}', 'order', {dup});
                 COMMIT;"
            ),
            code,
            constraint,
        );
        // SET CONSTRAINTS ... IMMEDIATE checks at once, as for an INSERT.
        expect_violation(
            &mut s.client,
            &format!(
                "BEGIN;
                 SELECT txevents.emit('order.placed', '{{}}', 'order', {dup});
                 SELECT txevents.emit('order.placed', '{{}}', 'order', {dup});
                 SET CONSTRAINTS ALL IMMEDIATE;"
            ),
            code,
            constraint,
        );
        // A conflict resolved before COMMIT (the first row rolled back to a
        // savepoint) is no violation.
        s.client
            .batch_execute(&format!(
                "BEGIN;
                 SAVEPOINT a;
                 SELECT txevents.emit('order.placed', '{{}}', 'order', {dup});
                 ROLLBACK TO SAVEPOINT a;
                 SELECT txevents.emit('order.placed', '{{}}', 'order', {dup});
                 COMMIT;"
            ))
            .expect("no conflict left at commit");
        // Distinct values commit, and the index holds them.
        let ids: Vec<i64> = (0..3)
            .map(|i| {
                emit(
                    &mut s.client,
                    "order.placed",
                    "{}",
                    &format!("ok-{constraint}-{i}"),
                )
            })
            .collect();
        let found = ids_by_index(
            &mut s.client,
            &format!("SELECT id FROM txevents.outbox WHERE aggregate_id = 'ok-{constraint}-1'"),
            constraint,
        );
        assert_eq!(found, [ids[1]]);
        let after = count(&mut s.client, "SELECT count(*) FROM txevents.outbox");
        assert_eq!(after, before + 4, "the failed transactions left no rows");
        s.client.batch_execute(drop).expect(drop);
    }
    // DEFERRABLE INITIALLY IMMEDIATE: checked at the end of the emit.
    s.client
        .batch_execute(
            "ALTER TABLE txevents.outbox ADD CONSTRAINT agg_imm UNIQUE (aggregate_id)
               DEFERRABLE INITIALLY IMMEDIATE",
        )
        .expect("add constraint");
    emit(&mut s.client, "order.placed", "{}", "imm");
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('order.placed', '{}', 'order', 'imm')",
        "23505",
        "agg_imm",
    );
    s.check_alive();
}

#[test]
fn index_left_by_a_failed_concurrent_build_is_handled_like_insert() {
    let mut s = setup("index_left_by_a_failed_concurrent_build");
    emit(&mut s.client, "dup", "{}", "o-1");
    emit(&mut s.client, "dup", "{}", "o-2");
    // Fails on the duplicates and leaves an invalid, not-ready unique index behind.
    let err = s
        .client
        .batch_execute(
            "CREATE UNIQUE INDEX CONCURRENTLY outbox_type_u ON txevents.outbox (event_type)",
        )
        .expect_err("duplicate event types");
    assert_eq!(sqlstate(&err).as_deref(), Some("23505"), "{err:?}");
    let (valid, ready): (bool, bool) = {
        let row = s
            .client
            .query_one(
                "SELECT indisvalid, indisready FROM pg_index
                  WHERE indexrelid = 'txevents.outbox_type_u'::regclass",
                &[],
            )
            .expect("index state");
        (row.get(0), row.get(1))
    };
    assert_eq!((valid, ready), (false, false));
    // A plain INSERT skips an index that is not ready; so must emit (before the fix
    // it inserted into it and raised a unique violation).
    s.client
        .batch_execute("INSERT INTO txevents.outbox (event_type, payload) VALUES ('dup', '{}')")
        .expect("plain insert");
    emit(&mut s.client, "dup", "{}", "o-3");

    // An index that is ready but not valid (a concurrent build that failed after its
    // build phase) takes inserts, and its uniqueness is enforced, as INSERT does.
    s.client
        .batch_execute(
            "DROP INDEX txevents.outbox_type_u;
             CREATE UNIQUE INDEX outbox_agg_u ON txevents.outbox (aggregate_id);
             UPDATE pg_index SET indisvalid = false
              WHERE indexrelid = 'txevents.outbox_agg_u'::regclass;",
        )
        .expect("ready but invalid index");
    emit(&mut s.client, "x", "{}", "o-9");
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('x', '{}', 'order', 'o-9')",
        "23505",
        "outbox_agg_u",
    );
    s.check_alive();
}

#[test]
fn column_changes_are_honoured_or_refused() {
    let mut s = setup("column_changes_are_honoured_or_refused");
    // An added NOT NULL is checked, as an INSERT would (23502).
    s.client
        .batch_execute("ALTER TABLE txevents.outbox ALTER COLUMN aggregate_type SET NOT NULL")
        .expect("set not null");
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('a.b')",
        "23502",
        "aggregate_type",
    );
    emit(&mut s.client, "a.b", "{}", "o-1");
    s.client
        .batch_execute("ALTER TABLE txevents.outbox ALTER COLUMN aggregate_type DROP NOT NULL")
        .expect("drop not null");
    // A column the tuple is not formed for: refused, naming the column.
    let changes = [
        (
            "ALTER TABLE txevents.outbox ADD COLUMN note text DEFAULT 'x'",
            "ALTER TABLE txevents.outbox DROP COLUMN note",
            "column \"note\"",
        ),
        (
            "ALTER TABLE txevents.outbox ALTER COLUMN aggregate_id TYPE varchar(10)",
            "ALTER TABLE txevents.outbox ALTER COLUMN aggregate_id TYPE text",
            "column \"aggregate_id\"",
        ),
    ];
    for (change, undo, text) in changes {
        s.client.batch_execute(change).expect(change);
        expect_error(&mut s.client, "SELECT txevents.emit('a.b')", "55000", text);
        s.client.batch_execute(undo).expect(undo);
        // Undone, emit works again; a dropped column stays in the tuple descriptor
        // for good and is written as NULL.
        let id = emit(&mut s.client, "a.b", r#"{"k": 1}"#, "o-2");
        let row = s
            .client
            .query_one(
                "SELECT event_type, payload->>'k', aggregate_id FROM txevents.outbox WHERE id = $1",
                &[&id],
            )
            .expect("the row reads back");
        let got: (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(got, ("a.b".into(), "1".into(), "o-2".into()));
    }
    // A renamed outbox or sequence: 55000 naming it, not an internal error.
    for (rename, undo, name) in [
        (
            "ALTER TABLE txevents.outbox RENAME TO outbox_old",
            "ALTER TABLE txevents.outbox_old RENAME TO outbox",
            "txevents.outbox does not exist",
        ),
        (
            "ALTER SEQUENCE txevents.outbox_id_seq RENAME TO seq_old",
            "ALTER SEQUENCE txevents.seq_old RENAME TO outbox_id_seq",
            "txevents.outbox_id_seq does not exist",
        ),
    ] {
        s.client.batch_execute(rename).expect(rename);
        expect_error(&mut s.client, "SELECT txevents.emit('a.b')", "55000", name);
        s.client.batch_execute(undo).expect(undo);
    }
    emit(&mut s.client, "a.b", "{}", "o-3");
    s.check_alive();
}
