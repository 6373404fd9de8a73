//! txevents privileges (SPEC 3.5): nothing for PUBLIC, SECURITY DEFINER functions with a
//! fixed search_path, and the producer / consumer / admin roles.

mod pg_common;

use std::sync::atomic::{AtomicU32, Ordering};

use cachetx_tests::pg;
use pg_common::*;
use postgres::Client;

static ROLES: AtomicU32 = AtomicU32::new(0);

/// A new login role (cluster-wide, so named uniquely), member of `member_of`.
fn login_role(admin: &mut Client, stem: &str, member_of: Option<&str>) -> String {
    let name = format!(
        "{stem}_{}_{}",
        std::process::id(),
        ROLES.fetch_add(1, Ordering::Relaxed)
    );
    let grant = member_of
        .map(|r| format!(" IN ROLE {r}"))
        .unwrap_or_default();
    admin
        .batch_execute(&format!("CREATE ROLE {name} LOGIN{grant}"))
        .expect("create role");
    name
}

const DENIED: &str = "42501";

#[test]
fn nothing_is_granted_to_public() {
    let db = pg().create_db("nothing_is_granted_to_public");
    let mut c = db.connect();
    let public_tables: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_class c,
                    aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
              WHERE c.relnamespace = 'txevents'::regnamespace AND a.grantee = 0",
            &[],
        )
        .expect("acl")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(public_tables.is_empty(), "PUBLIC may use {public_tables:?}");
    let public_functions: Vec<String> = c
        .query(
            "SELECT p.proname::text FROM pg_proc p,
                    aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
              WHERE p.pronamespace = 'txevents'::regnamespace AND a.grantee = 0",
            &[],
        )
        .expect("acl")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        public_functions.is_empty(),
        "PUBLIC may call {public_functions:?}"
    );
    // Every function that touches the tables bypasses privileges only with a fixed
    // search_path.
    let loose: Vec<String> = c
        .query(
            "SELECT p.proname::text FROM pg_proc p
              WHERE p.pronamespace = 'txevents'::regnamespace AND p.prosecdef
                AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) s WHERE s LIKE 'search_path=%')",
            &[],
        )
        .expect("proconfig")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        loose.is_empty(),
        "SECURITY DEFINER without search_path: {loose:?}"
    );
    let definers: Vec<String> = c
        .query(
            "SELECT p.proname::text FROM pg_proc p
              WHERE p.pronamespace = 'txevents'::regnamespace AND p.prosecdef ORDER BY 1",
            &[],
        )
        .expect("prosecdef")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for f in [
        "ack",
        "capture_trigger",
        "create_consumer",
        "drop_consumer",
        "emit",
        "get",
        "invalidate",
        "invalidate_namespace",
        "nack",
        "poll",
        "prune",
        "redrive",
    ] {
        assert!(
            definers.iter().any(|d| d == f),
            "{f} is not SECURITY DEFINER"
        );
    }
}

#[test]
fn roles_grant_exactly_their_part() {
    let db = pg().create_db("roles_grant_exactly_their_part");
    let mut admin = db.connect();
    admin
        .batch_execute(
            "SELECT txevents.create_consumer('g');
             CREATE TABLE public.items (id int PRIMARY KEY, v text);
             SELECT txevents.capture('public.items');",
        )
        .expect("setup");
    let nobody = login_role(&mut admin, "nobody", None);
    let producer = login_role(&mut admin, "producer", Some("txevents_producer"));
    let consumer = login_role(&mut admin, "consumer", Some("txevents_consumer"));
    let boss = login_role(&mut admin, "boss", Some("txevents_admin"));
    admin
        .batch_execute(&format!("GRANT ALL ON public.items TO {nobody}"))
        .expect("grant items");

    let emit_sql = "SELECT txevents.emit('sec.x', '{\"secret\": 1}')";
    let poll_sql = "SELECT * FROM txevents.poll('g')";
    let read_sql = "SELECT payload FROM txevents.outbox";
    let get_sql = "SELECT txevents.get(1)";
    let dead_sql = "SELECT * FROM txevents.dead_letters";
    let create_sql = "SELECT txevents.create_consumer('other')";

    // No grant: nothing at all.
    let mut n = db.connect_as(&nobody);
    for sql in [emit_sql, poll_sql, read_sql, get_sql, dead_sql, create_sql] {
        expect_error(&mut n, sql, DENIED, "permission denied");
    }
    // ...but writing a captured table still records the event (the trigger is
    // SECURITY DEFINER), without giving the writer any access to it.
    n.batch_execute("INSERT INTO public.items VALUES (1, 'a')")
        .expect("captured write without a txevents role");
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM txevents.outbox WHERE event_type = 'items.inserted'"
        ),
        1
    );

    // Producer: emit and invalidate, nothing else.
    let mut p = db.connect_as(&producer);
    p.batch_execute(emit_sql).expect("producer emits");
    p.batch_execute("SELECT txevents.invalidate('candidates', 'k'), txevents.invalidate_namespace('candidates')")
        .expect("producer invalidates");
    for sql in [poll_sql, read_sql, get_sql, dead_sql, create_sql] {
        expect_error(&mut p, sql, DENIED, "permission denied");
    }

    // Consumer: poll, ack, nack, get, dead letters; no emit, no table access.
    let mut cons = db.connect_as(&consumer);
    let got = poll(&mut cons, "g", 100, "30s");
    assert!(!got.is_empty(), "the consumer receives events");
    let ids = polled_ids(&got);
    cons.batch_execute(&format!(
        "SELECT txevents.nack('g', {}, 'x', '0 s')",
        ids[0]
    ))
    .expect("nack");
    assert_eq!(ack(&mut cons, "g", &ids), (ids.len() - 1) as i64);
    cons.batch_execute(get_sql).expect("get");
    cons.batch_execute(dead_sql).expect("dead letters");
    cons.batch_execute("SELECT txevents.redrive('g')")
        .expect("redrive");
    for sql in [
        emit_sql,
        read_sql,
        create_sql,
        "SELECT txevents.prune('1 day')",
        "SELECT * FROM txevents._poll('g')",
    ] {
        expect_error(&mut cons, sql, DENIED, "permission denied");
    }

    // Admin: group management, capture, prune (and is a producer and consumer).
    let mut b = db.connect_as(&boss);
    b.batch_execute(
        "SELECT txevents.create_consumer('other');
         SELECT txevents.drop_consumer('other');
         SELECT txevents.prune('1 day');",
    )
    .expect("admin functions");
    b.batch_execute(emit_sql).expect("admin emits");
    expect_error(&mut b, read_sql, DENIED, "permission denied");
    // capture runs with the caller's rights: the admin must be allowed to add
    // triggers to the table.
    expect_error(
        &mut b,
        "SELECT txevents.capture('public.items', 'it')",
        DENIED,
        "permission denied for table items",
    );
    admin
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {boss}"))
        .expect("grant create");
    b.batch_execute(
        "CREATE TABLE public.own (id int);
         SELECT txevents.capture('public.own');
         INSERT INTO public.own VALUES (1);",
    )
    .expect("admin captures a table it owns");
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM txevents.outbox WHERE event_type = 'own.inserted'"
        ),
        1
    );
}
