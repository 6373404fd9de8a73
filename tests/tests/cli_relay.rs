//! `cachetx relay` end to end against a real redis-server with nscache and a private
//! Postgres with txevents (SPEC 5, SPEC 7 "Relay").

use std::thread;
use std::time::Duration;

use cachetx_shared::Envelope;
use cachetx_tests::cli::{server_env, wait_for_group, CliProcess};
use cachetx_tests::nscache::{fill, get, set, stats};
use cachetx_tests::{pg, wait_until, RedisCluster, RedisServer, TestDb};
use redis::Value;

/// Generous bound for the relay to catch up; a wait, never a timing assertion.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Starts a relay and waits until its consumer group exists: the group receives the
/// events committed after it was created.
fn start_relay(db: &TestDb, env: &[(&'static str, String)], extra: &[&str]) -> CliProcess {
    let mut args = vec![
        "relay",
        "--poll-interval-ms",
        "200",
        "--max-backoff-ms",
        "300",
    ];
    args.extend_from_slice(extra);
    let relay = CliProcess::start(&args, env);
    wait_for_group(db, "relay");
    relay
}

fn commit(db: &TestDb, sql: &str) {
    db.connect()
        .batch_execute(&format!("BEGIN; {sql}; COMMIT"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `n` entries `cand:key0..` in Redis and one committed invalidation for each, for a
/// group `relay` created first (so that it receives all of them).
fn backlog(db: &TestDb, conn: &mut redis::Connection, n: usize) {
    fill(conn, "cand", n, 3600, "v");
    commit(
        db,
        "SELECT txevents.create_consumer('relay', ARRAY['cache.invalidate'])",
    );
    commit(
        db,
        &format!(
            "SELECT txevents.invalidate('cand', 'key' || i) FROM generate_series(0, {}) i",
            n - 1
        ),
    );
}

fn present(conn: &mut redis::Connection, prefix: &str, key: &str) -> bool {
    get(conn, prefix, key).is_some()
}

fn expect_clean_exit(relay: &mut CliProcess) {
    let status = relay.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "relay exit {status:?}\n{}", relay.log());
}

#[test]
fn committed_invalidations_are_applied_and_rolled_back_ones_never() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_relay_commit");
    let mut conn = server.conn();
    for key in ["1", "2", "3", "4"] {
        set(&mut conn, "cand", key, 300, "v");
    }
    set(&mut conn, "proc", "x", 300, "v");
    let mut relay = start_relay(&db, &server_env(server.port(), &db), &[]);

    db.connect()
        .batch_execute("BEGIN; SELECT txevents.invalidate('cand', '1'); ROLLBACK")
        .expect("rolled back invalidation");
    commit(&db, "SELECT txevents.invalidate('cand', '2', '3')");
    commit(&db, "SELECT txevents.invalidate_namespace('proc')");
    wait_until(CATCH_UP, "committed invalidations applied", || {
        !present(&mut conn, "cand", "2")
            && !present(&mut conn, "cand", "3")
            && !present(&mut conn, "proc", "x")
    });
    assert_eq!(stats(&mut conn, "proc").invalidations, 1);
    // Committed after the rollback: once it is applied, the relay has seen everything
    // before it, and the rolled-back key must still be there.
    commit(&db, "SELECT txevents.invalidate('cand', '4')");
    wait_until(CATCH_UP, "the later invalidation applied", || {
        !present(&mut conn, "cand", "4")
    });
    assert!(
        present(&mut conn, "cand", "1"),
        "a rolled-back invalidation was applied"
    );
    expect_clean_exit(&mut relay);
}

#[test]
fn redis_outage_loses_nothing_and_acks_nothing_early() {
    // Persistence on: an invalidation acked without reaching Redis would leave its key
    // in the restarted server.
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let db = pg().create_db("cli_relay_outage");
    let mut conn = server.conn();
    fill(&mut conn, "cand", 60, 3600, "v");
    let relay = start_relay(&db, &server_env(server.port(), &db), &[]);
    commit(&db, "SELECT txevents.invalidate('cand', 'key0')");
    wait_until(CATCH_UP, "the relay works before the outage", || {
        !present(&mut conn, "cand", "key0")
    });
    drop(conn);

    server.stop();
    for i in 1..50 {
        commit(
            &db,
            &format!("SELECT txevents.invalidate('cand', 'key{i}')"),
        );
    }
    let mut client = db.connect();
    // The relay claimed events while Redis was down, and keeps them in hand.
    wait_until(CATCH_UP, "the relay meets the outage", || {
        let row = client
            .query_one(
                "SELECT count(*) FROM txevents.claims WHERE consumer = 'relay'",
                &[],
            )
            .expect("read claims");
        row.get::<_, i64>(0) > 0 && relay.log().contains("Redis unavailable")
    });
    thread::sleep(Duration::from_secs(5));
    server.restart();

    let mut conn = server.conn();
    // Positive control: the restart kept the data set.
    assert!(
        present(&mut conn, "cand", "key55"),
        "AOF did not survive the restart"
    );
    wait_until(
        CATCH_UP,
        "every invalidation applied after the outage",
        || (1..50).all(|i| !present(&mut conn, "cand", &format!("key{i}"))),
    );
    assert!(present(&mut conn, "cand", "key50"));
    let dead: i64 = client
        .query_one(
            "SELECT count(*) FROM txevents.dead WHERE consumer = 'relay'",
            &[],
        )
        .expect("dead letters")
        .get(0);
    assert_eq!(dead, 0);
}

#[test]
fn relay_killed_mid_batch_then_restarted_applies_everything() {
    const N: usize = 20_000;
    let server = RedisServer::start();
    let db = pg().create_db("cli_relay_kill");
    let mut conn = server.conn();
    backlog(&db, &mut conn, N);
    let env = server_env(server.port(), &db);
    let args = ["--batch", "100", "--lease-secs", "2"];
    let mut relay = start_relay(&db, &env, &args);
    wait_until(CATCH_UP, "the relay made progress", || {
        stats(&mut conn, "cand").entries < N as u64
    });
    relay.kill();
    let left = stats(&mut conn, "cand").entries;
    assert!(left > 0, "the relay finished before it could be killed");

    // Two relays share the group from here on.
    let mut a = start_relay(&db, &env, &args);
    let mut b = start_relay(&db, &env, &args);
    wait_until(
        CATCH_UP,
        "every invalidation applied after the restart",
        || stats(&mut conn, "cand").entries == 0,
    );
    expect_clean_exit(&mut a);
    expect_clean_exit(&mut b);
}

#[test]
fn cluster_keys_reach_their_node_and_namespaces_every_primary() {
    let cluster = RedisCluster::start(3);
    let db = pg().create_db("cli_relay_cluster");
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    for key in &keys {
        set(&mut cluster.node_for_key(key).conn(), "cand", key, 300, "v");
    }
    // One key of namespace "proc" on every primary.
    let mut per_node: Vec<(u16, String)> = Vec::new();
    for i in 0.. {
        let key = format!("n{i}");
        let port = cluster.node_for_key(&key).port();
        if !per_node.iter().any(|(p, _)| *p == port) {
            set(
                &mut cluster.node_for_key(&key).conn(),
                "proc",
                &key,
                300,
                "v",
            );
            per_node.push((port, key));
        }
        if per_node.len() == cluster.nodes.len() {
            break;
        }
    }
    set(
        &mut cluster.node_for_key("keep").conn(),
        "cand",
        "keep",
        300,
        "v",
    );
    let mut env = server_env(cluster.nodes[0].port(), &db);
    env.push(("REDIS_CLUSTER", "1".to_string()));
    let mut relay = start_relay(&db, &env, &[]);

    let list = keys
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(",");
    commit(&db, &format!("SELECT txevents.invalidate('cand', {list})"));
    commit(&db, "SELECT txevents.invalidate_namespace('proc')");
    wait_until(CATCH_UP, "keys gone from their nodes", || {
        keys.iter()
            .all(|k| !present(&mut cluster.node_for_key(k).conn(), "cand", k))
    });
    wait_until(
        CATCH_UP,
        "the namespace invalidated on every primary",
        || {
            cluster
                .nodes
                .iter()
                .all(|n| stats(&mut n.conn(), "proc").invalidations == 1)
        },
    );
    for node in &cluster.nodes {
        let mut c = node.conn();
        let (_, key) = per_node
            .iter()
            .find(|(p, _)| *p == node.port())
            .expect("a proc key on every node");
        assert!(!present(&mut c, "proc", key));
        // Every node got only its own keys' deletes.
        let deleted = stats(&mut c, "cand").deletes;
        let own = keys
            .iter()
            .filter(|k| cluster.node_for_key(k).port() == node.port())
            .count() as u64;
        assert_eq!(deleted, own, "node {}", node.port());
    }
    assert!(present(
        &mut cluster.node_for_key("keep").conn(),
        "cand",
        "keep"
    ));
    expect_clean_exit(&mut relay);
}

#[test]
fn streams_mirror_every_event_in_group_order_with_the_shared_envelope() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_relay_streams");
    let mut conn = server.conn();
    set(&mut conn, "cand", "7", 300, "v");
    let mut relay = start_relay(
        &db,
        &server_env(server.port(), &db),
        &["--streams", "--stream-name", "events:test"],
    );
    let big = r#"{"n": 123456789012345678901234567890, "d": 0.1000000000000000000000001}"#;
    let mut client = db.connect();
    let mut ids: Vec<i64> = Vec::new();
    for i in 0..5 {
        let mut tx = client.transaction().expect("begin");
        let id: i64 = tx
            .query_one(
                "SELECT txevents.emit('candidate.updated', $1::text::jsonb, 'candidate', $2)",
                &[&big, &i.to_string()],
            )
            .expect("emit")
            .get(0);
        ids.push(id);
        let inv: i64 = tx
            .query_one("SELECT txevents.invalidate('cand', '7')", &[])
            .expect("invalidate")
            .get(0);
        ids.push(inv);
        tx.commit().expect("commit");
    }
    let entries = || -> Vec<(String, String)> {
        let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg("events:test")
            .arg("-")
            .arg("+")
            .query(&mut server.conn())
            .expect("XRANGE");
        reply.into_iter().flat_map(|(_, fields)| fields).collect()
    };
    wait_until(CATCH_UP, "every event mirrored", || {
        entries().len() == ids.len()
    });
    assert!(!present(&mut conn, "cand", "7"));
    let texts: Vec<String> = entries()
        .into_iter()
        .map(|(field, text)| {
            assert_eq!(field, "envelope");
            text
        })
        .collect();
    let mut seen = Vec::new();
    for text in &texts {
        let exact: String = client
            .query_one(
                "SELECT txevents.get(($1::text::jsonb->>'id')::bigint)::text",
                &[text],
            )
            .expect("get")
            .get(0);
        let (ours, theirs): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(text).expect("json"),
            serde_json::from_str(&exact).expect("json"),
        );
        assert_eq!(ours, theirs, "stream envelope differs from txevents.get");
        let id = ours["id"].as_i64().expect("id");
        seen.push(id);
        if ours["type"] == "candidate.updated" {
            // Verbatim: the big numbers survive as written by jsonb.
            assert!(text.contains("123456789012345678901234567890"), "{text}");
            assert!(text.contains("0.1000000000000000000000001"), "{text}");
        } else {
            Envelope::parse(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        }
    }
    assert_eq!(seen, ids, "stream order is not the commit order");
    let len: Value = redis::cmd("TYPE")
        .arg("events:test")
        .query(&mut conn)
        .expect("TYPE");
    assert_eq!(len, Value::SimpleString("stream".into()));
    expect_clean_exit(&mut relay);
}

#[test]
fn a_key_redis_refuses_is_nacked_alone_and_the_rest_of_the_batch_applied() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_relay_refused");
    let mut conn = server.conn();
    set(&mut conn, "cand", "ok1", 300, "v");
    set(&mut conn, "cand", "ok2", 300, "v");
    // Positive control: nscache refuses this key (a `}` without a valid hash tag).
    let refused = redis::cmd("NSCACHE.DEL")
        .arg("cand")
        .arg("bad}key")
        .query::<Value>(&mut conn);
    assert!(refused.is_err(), "{refused:?}");
    // Created first, so the three events land in the relay's first batch together.
    commit(
        &db,
        "SELECT txevents.create_consumer('relay', ARRAY['cache.invalidate'])",
    );
    commit(
        &db,
        "SELECT txevents.invalidate('cand', 'ok1'); SELECT txevents.invalidate('cand', 'bad}key'); \
         SELECT txevents.invalidate('cand', 'ok2')",
    );
    let mut relay = start_relay(&db, &server_env(server.port(), &db), &[]);
    wait_until(CATCH_UP, "the good keys applied", || {
        !present(&mut conn, "cand", "ok1") && !present(&mut conn, "cand", "ok2")
    });
    let mut client = db.connect();
    wait_until(
        CATCH_UP,
        "the refused event nacked with Redis's error",
        || {
            client
            .query_opt(
                "SELECT last_error FROM txevents.retries r JOIN txevents.outbox o ON o.id = r.event_id
                  WHERE r.consumer = 'relay' AND o.payload->'keys' ? 'bad}key'",
                &[],
            )
            .expect("retries")
            .and_then(|row| row.get::<_, Option<String>>(0))
            .is_some_and(|e| e.starts_with("Redis refused"))
        },
    );
    let nacked: i64 = client
        .query_one(
            "SELECT count(*) FROM txevents.retries WHERE consumer = 'relay'",
            &[],
        )
        .expect("retries")
        .get(0);
    assert_eq!(nacked, 1, "only the refused event is retried");
    expect_clean_exit(&mut relay);
}

#[test]
fn sigterm_finishes_the_batch_in_hand_and_exits_zero() {
    const N: usize = 20_000;
    let server = RedisServer::start();
    let db = pg().create_db("cli_relay_sigterm");
    let mut conn = server.conn();
    backlog(&db, &mut conn, N);
    let mut relay = start_relay(&db, &server_env(server.port(), &db), &["--batch", "100"]);
    wait_until(CATCH_UP, "the relay made progress", || {
        stats(&mut conn, "cand").entries < N as u64
    });
    expect_clean_exit(&mut relay);
    // Stopped mid-stream (positive control), and no claim was left to its lease: the
    // batch in hand was applied and acked before the exit.
    let left = stats(&mut conn, "cand").entries;
    assert!(left > 0, "the relay finished everything before the signal");
    let claimed: i64 = db
        .connect()
        .query_one(
            // Leased claims only: txevents 0.2.0 also keeps read-ahead batches as
            // claim rows without a lease, which no worker holds.
            "SELECT coalesce(sum(cardinality(event_ids)), 0)::bigint FROM txevents.claims WHERE consumer = 'relay' AND lease_until IS NOT NULL",
            &[],
        )
        .expect("claims")
        .get(0);
    assert_eq!(claimed, 0, "a claimed batch was abandoned");
    let pending: i64 = db
        .connect()
        .query_one(
            "SELECT pending FROM txevents.consumer_lag WHERE consumer = 'relay'",
            &[],
        )
        .expect("lag")
        .get(0);
    assert_eq!(
        pending as u64, left,
        "every acked event was applied, every applied one acked"
    );
}
