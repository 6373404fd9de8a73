//! What a DBA does to `txevents.outbox` as a relation (partitioning, replacing it,
//! triggers and foreign keys that do not fire on INSERT): emit's direct insert behaves
//! as a plain INSERT would, or refuses with 55000, and never writes a row a plain
//! INSERT would have refused.

mod pg_common;

use pg_common::{count, expect_error, setup};

#[test]
fn outbox_attached_as_a_partition_keeps_its_partition_bound() {
    let mut s = setup("outbox_attached_as_a_partition");
    let attach = "CREATE TABLE events_by_id (LIKE txevents.outbox) PARTITION BY RANGE (id);
             ALTER TABLE events_by_id ATTACH PARTITION txevents.outbox FOR VALUES FROM (1) TO (3);";
    let version = count(
        &mut s.client,
        "SELECT current_setting('server_version_num')::int8",
    );
    if version >= 170000 {
        // PostgreSQL 17+ refuses a partition with an identity column of its own, and
        // outbox.id is one: the outbox cannot become a partition there.
        expect_error(&mut s.client, attach, "55000", "identity column");
        return;
    }
    s.client.batch_execute(attach).expect("attach");
    // Ids 1 and 2 are inside the bound.
    for _ in 0..2 {
        s.client
            .batch_execute("SELECT txevents.emit('a.b')")
            .expect("emit inside the bound");
    }
    // A plain INSERT of id 3 fails with 23514; so must emit (it used to store the row
    // in the partition, outside its bound).
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('a.b')",
        "23514",
        "partition constraint",
    );
    assert_eq!(count(&mut s.client, "SELECT count(*) FROM events_by_id"), 2);
    assert_eq!(
        count(
            &mut s.client,
            "SELECT count(*) FROM txevents.outbox WHERE NOT (id >= 1 AND id < 3)"
        ),
        0
    );
    // Detached, it takes every id again.
    s.client
        .batch_execute("ALTER TABLE events_by_id DETACH PARTITION txevents.outbox")
        .expect("detach");
    s.client
        .batch_execute("SELECT txevents.emit('a.b')")
        .expect("emit after detach");
    s.check_alive();
}

#[test]
fn a_replaced_outbox_that_is_not_an_ordinary_table_is_refused() {
    let mut s = setup("replaced_outbox_not_a_table");
    s.client
        .batch_execute(
            "ALTER TABLE txevents.outbox RENAME TO outbox_old;
             CREATE TABLE txevents.outbox (LIKE txevents.outbox_old) PARTITION BY RANGE (id);
             CREATE TABLE txevents.outbox_all PARTITION OF txevents.outbox
                 FOR VALUES FROM (MINVALUE) TO (MAXVALUE);",
        )
        .expect("replace the outbox with a partitioned table");
    // A partitioned table has no storage of its own: writing to it as a heap failed with
    // "could not open file" (58P01). It is refused, naming what it is.
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('a.b')",
        "55000",
        "partitioned table",
    );
    assert_eq!(
        count(&mut s.client, "SELECT count(*) FROM txevents.outbox"),
        0
    );
    s.client
        .batch_execute(
            "DROP TABLE txevents.outbox;
             ALTER TABLE txevents.outbox_old RENAME TO outbox;",
        )
        .expect("restore the outbox");
    s.client
        .batch_execute("SELECT txevents.emit('a.b')")
        .expect("emit after restoring");
    s.check_alive();
}

#[test]
fn triggers_that_do_not_fire_on_insert_do_not_stop_emit() {
    let mut s = setup("triggers_not_on_insert");
    // A foreign key that references the outbox puts RI triggers for UPDATE and DELETE
    // on it; a plain INSERT fires none of them, and emit used to refuse for good.
    s.client
        .batch_execute(
            "CREATE TABLE audit (event_id bigint REFERENCES txevents.outbox (id));
             CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RETURN NULL; END $$;
             CREATE TRIGGER on_truncate AFTER TRUNCATE ON txevents.outbox
                 FOR EACH STATEMENT EXECUTE FUNCTION noop();
             CREATE TRIGGER on_delete AFTER DELETE ON txevents.outbox
                 FOR EACH ROW EXECUTE FUNCTION noop();",
        )
        .expect("foreign key and triggers");
    let id: i64 = s
        .client
        .query_one("SELECT txevents.emit('a.b')", &[])
        .expect("emit with UPDATE/DELETE/TRUNCATE triggers")
        .get(0);
    s.client
        .execute("INSERT INTO audit VALUES ($1)", &[&id])
        .expect("reference the event");
    // The foreign key still holds the event in place.
    expect_error(
        &mut s.client,
        &format!("DELETE FROM txevents.outbox WHERE id = {id}"),
        "23503",
        "audit",
    );
    // Triggers that do fire on INSERT are still refused, row or statement level.
    for ddl in [
        "CREATE TRIGGER ins AFTER INSERT ON txevents.outbox FOR EACH STATEMENT EXECUTE FUNCTION noop()",
        "CREATE TRIGGER ins BEFORE INSERT OR UPDATE ON txevents.outbox FOR EACH ROW EXECUTE FUNCTION noop()",
    ] {
        s.client.batch_execute(ddl).expect(ddl);
        expect_error(
            &mut s.client,
            "SELECT txevents.emit('a.b')",
            "55000",
            "trigger",
        );
        s.client
            .batch_execute("DROP TRIGGER ins ON txevents.outbox")
            .expect("drop trigger");
    }
    s.client
        .batch_execute("SELECT txevents.emit('a.b')")
        .expect("emit");
    s.check_alive();
}

#[test]
fn rules_that_do_not_fire_on_insert_do_not_stop_emit() {
    let mut s = setup("rules_not_on_insert");
    // Rules on UPDATE and DELETE: a plain INSERT runs none of them.
    s.client
        .batch_execute(
            "CREATE TABLE pruned (id bigint);
             CREATE RULE keep_pruned AS ON DELETE TO txevents.outbox
                 DO ALSO INSERT INTO pruned VALUES (OLD.id);
             CREATE RULE no_updates AS ON UPDATE TO txevents.outbox DO INSTEAD NOTHING;",
        )
        .expect("rules");
    let id: i64 = s
        .client
        .query_one("SELECT txevents.emit('a.b')", &[])
        .expect("emit with DELETE and UPDATE rules")
        .get(0);
    s.client
        .execute("DELETE FROM txevents.outbox WHERE id = $1", &[&id])
        .expect("delete");
    assert_eq!(count(&mut s.client, "SELECT count(*) FROM pruned"), 1);
    // An INSERT rule is still refused.
    s.client
        .batch_execute("CREATE RULE ins AS ON INSERT TO txevents.outbox DO ALSO NOTIFY x")
        .expect("insert rule");
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('a.b')",
        "55000",
        "a rule",
    );
    s.client
        .batch_execute("DROP RULE ins ON txevents.outbox; SELECT txevents.emit('a.b')")
        .expect("emit after dropping the INSERT rule");
    s.check_alive();
}

#[test]
fn row_level_security_is_refused_only_where_it_applies_to_emit() {
    let mut s = setup("rls_only_where_it_applies");
    // RLS enabled to restrict other readers: emit runs as the outbox's owner (the
    // extension's superuser), whom RLS does not apply to, as with a plain INSERT by
    // that owner. Emit used to refuse every call.
    s.client
        .batch_execute(
            "ALTER TABLE txevents.outbox ENABLE ROW LEVEL SECURITY;
             CREATE POLICY nothing_for_others ON txevents.outbox USING (false) WITH CHECK (false);",
        )
        .expect("enable RLS");
    s.client
        .batch_execute("SELECT txevents.emit('a.b')")
        .expect("emit with RLS that does not apply to the owner");
    s.client
        .batch_execute("ALTER TABLE txevents.outbox FORCE ROW LEVEL SECURITY")
        .expect("force RLS");
    s.client
        .batch_execute("SELECT txevents.emit('a.b')")
        .expect("emit: a superuser owner bypasses even forced RLS");
    // A non-superuser owner of emit and the outbox, with FORCE: RLS applies to it, so
    // emit refuses rather than bypass the policy's WITH CHECK.
    s.client
        .batch_execute(
            "CREATE ROLE outbox_owner NOLOGIN;
             GRANT USAGE ON SCHEMA txevents TO outbox_owner;
             ALTER TABLE txevents.outbox OWNER TO outbox_owner;
             ALTER FUNCTION txevents.emit(text, jsonb, text, text, jsonb) OWNER TO outbox_owner;",
        )
        .expect("owner");
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('a.b')",
        "55000",
        "row level security",
    );
    // Not forced: the owner is exempt again.
    s.client
        .batch_execute("ALTER TABLE txevents.outbox NO FORCE ROW LEVEL SECURITY")
        .expect("no force");
    s.client
        .batch_execute("SELECT txevents.emit('a.b')")
        .expect("emit as a non-superuser owner without FORCE");
    assert_eq!(
        count(&mut s.client, "SELECT count(*) FROM txevents.outbox"),
        3
    );
    s.check_alive();
}

#[test]
fn a_disabled_insert_trigger_does_not_stop_emit() {
    let mut s = setup("disabled_insert_trigger");
    s.client
        .batch_execute(
            "CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN NEW.aggregate_type := 'stamped'; RETURN NEW; END $$;
             CREATE TRIGGER stamp BEFORE INSERT ON txevents.outbox
                 FOR EACH ROW EXECUTE FUNCTION stamp();
             ALTER TABLE txevents.outbox DISABLE TRIGGER stamp;",
        )
        .expect("disabled trigger");
    // A plain INSERT fires no disabled trigger; emit used to refuse for good.
    s.client
        .batch_execute("SELECT txevents.emit('a.b')")
        .expect("emit with a disabled INSERT trigger");
    s.client
        .batch_execute("ALTER TABLE txevents.outbox ENABLE TRIGGER stamp")
        .expect("enable");
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('a.b')",
        "55000",
        "a trigger",
    );
    // ENABLE REPLICA: fires only under session_replication_role = replica, where
    // emit refuses it; refused the same way otherwise (it is not disabled).
    s.client
        .batch_execute("ALTER TABLE txevents.outbox ENABLE REPLICA TRIGGER stamp")
        .expect("enable replica");
    expect_error(
        &mut s.client,
        "SELECT txevents.emit('a.b')",
        "55000",
        "a trigger",
    );
    assert_eq!(
        count(
            &mut s.client,
            "SELECT count(*) FROM txevents.outbox WHERE aggregate_type IS NULL"
        ),
        1
    );
    s.check_alive();
}
