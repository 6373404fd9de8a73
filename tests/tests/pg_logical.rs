//! emit's direct insert is WAL-logged like an INSERT: logical decoding
//! (`test_decoding`, `wal_level = logical`) sees every committed event with all its
//! columns, a large (TOASTed) payload whole, and nothing of rolled-back transactions
//! or savepoints; a publication and `REPLICA IDENTITY FULL` on the outbox change
//! nothing for emit.

mod pg_common;

use cachetx_tests::pg_cluster::pg_with_settings;
use postgres::Client;

/// The decoded changes to txevents.outbox since the last call.
fn outbox_changes(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT data FROM pg_logical_slot_get_changes('txevents_slot', NULL, NULL)
              WHERE data LIKE 'table txevents.outbox:%'",
            &[],
        )
        .expect("get changes")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn logical_decoding_sees_exactly_the_committed_events() {
    let db = pg_with_settings(&["wal_level=logical"]).create_db("logical_decoding");
    let mut client = db.connect();
    client
        .batch_execute(
            "CREATE INDEX outbox_kind ON txevents.outbox ((payload->>'kind'));
             ALTER TABLE txevents.outbox ADD CONSTRAINT one_per_aggregate
                 UNIQUE (aggregate_type, aggregate_id) DEFERRABLE INITIALLY DEFERRED;",
        )
        .expect("setup");
    // In a transaction of its own (a multi-statement string is one transaction).
    client
        .batch_execute(
            "SELECT pg_create_logical_replication_slot('txevents_slot', 'test_decoding')",
        )
        .expect("slot");

    let big = "y".repeat(200_000);
    let committed: i64 = client
        .query_one(
            r#"SELECT txevents.emit('a.b', '{"kind": "k", "n": 12345678901234567890123}', 'order', '1',
                                    '{"trace": "t"}')"#,
            &[],
        )
        .expect("emit")
        .get(0);
    let mut tx = client.transaction().expect("begin");
    let kept: i64 = tx
        .query_one(
            "SELECT txevents.emit('a.big', jsonb_build_object('big', $1::text))",
            &[&big],
        )
        .expect("emit big")
        .get(0);
    tx.batch_execute(
        "SAVEPOINT s; SELECT txevents.emit('a.rolled.back.savepoint'); ROLLBACK TO SAVEPOINT s",
    )
    .expect("savepoint");
    tx.commit().expect("commit");
    client
        .batch_execute("BEGIN; SELECT txevents.emit('a.rolled.back'); ROLLBACK")
        .expect("rolled back");

    let changes = outbox_changes(&mut client);
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert!(
        changes[0].starts_with(&format!(
            "table txevents.outbox: INSERT: id[bigint]:{committed} event_type[text]:'a.b' \
             aggregate_type[text]:'order' aggregate_id[text]:'1' \
             payload[jsonb]:'{{\"n\": 12345678901234567890123, \"kind\": \"k\"}}' \
             headers[jsonb]:'{{\"trace\": \"t\"}}' occurred_at[timestamp with time zone]:'"
        )),
        "{}",
        changes[0]
    );
    assert!(changes[0].contains(" txid[xid8]:'"), "{}", changes[0]);
    assert!(
        changes[1].starts_with(&format!(
            "table txevents.outbox: INSERT: id[bigint]:{kept} event_type[text]:'a.big'"
        )),
        "{}",
        &changes[1][..200]
    );
    assert!(
        changes[1].contains(&format!("payload[jsonb]:'{{\"big\": \"{big}\"}}'")),
        "the TOASTed payload is decoded whole"
    );

    // A publication and REPLICA IDENTITY FULL: emit is unaffected, and a DELETE of an
    // event (prune's) decodes with the whole old row.
    client
        .batch_execute(
            "CREATE PUBLICATION outbox_pub FOR TABLE txevents.outbox;
             ALTER TABLE txevents.outbox REPLICA IDENTITY FULL;",
        )
        .expect("publication");
    let third: i64 = client
        .query_one("SELECT txevents.emit('a.c')", &[])
        .expect("emit with a publication")
        .get(0);
    client
        .execute("DELETE FROM txevents.outbox WHERE id = $1", &[&third])
        .expect("delete");
    let changes = outbox_changes(&mut client);
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert!(
        changes[0].starts_with(&format!(
            "table txevents.outbox: INSERT: id[bigint]:{third} event_type[text]:'a.c'"
        )),
        "{}",
        changes[0]
    );
    assert!(
        changes[1].starts_with(&format!(
            "table txevents.outbox: DELETE: id[bigint]:{third} event_type[text]:'a.c'"
        )),
        "{}",
        changes[1]
    );
    // A slot keeps its database from being dropped.
    client
        .batch_execute("SELECT pg_drop_replication_slot('txevents_slot')")
        .expect("drop slot");
}
