//! Hostile and unusual inputs that once crashed redis-server or corrupted data:
//! each test reproduces a review finding against a real server.

use std::time::Duration;

use cachetx_tests::nscache::{
    alive, config_set, crc64, dbsize, fill, get, rewrite_aof, set, stats,
};
use cachetx_tests::{wait_until, RedisServer};
use redis::{Connection, Value};

#[test]
fn error_replies_with_any_bytes_never_take_the_server_down() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    // U+4E00 is e4 b8 80: a char-by-char byte cast would have put a NUL in the reply.
    for arg in [
        "一",
        "\u{3000}",
        "\u{100}",
        "bad\r\nline",
        "%s%n%x",
        "\u{0}",
    ] {
        let err = redis::cmd("NSCACHE.SET")
            .arg(&["p", "k", "10", "v", arg])
            .query::<Value>(&mut conn)
            .expect_err(arg);
        assert!(err.to_string().contains("unknown option"), "{arg:?}: {err}");
        let err = redis::cmd("NSCACHE.STATS")
            .arg(&["p", arg])
            .query::<Value>(&mut conn)
            .expect_err(arg);
        assert!(err.to_string().contains("unknown option"), "{arg:?}: {err}");
        let err = redis::cmd("NSCACHE.GET")
            .arg(&[arg, "k"])
            .query::<Value>(&mut conn)
            .expect_err(arg);
        assert!(err.to_string().contains("invalid prefix"), "{arg:?}: {err}");
    }
    alive(&server);
}

#[test]
fn paused_writes_stop_the_sweep_and_lazy_reclaim_instead_of_crashing() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    fill(&mut conn, "p", 5000, 600, "v");
    config_set(&mut conn, "nscache.sweep-budget", "10");
    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("p")
        .query(&mut conn)
        .expect("INVALIDATE");
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "1500", "WRITE"])
        .query(&mut conn)
        .expect("CLIENT PAUSE");
    let at_pause = dbsize(&mut conn);
    // Stale reads during a write pause must not propagate a delete: Redis holds
    // them (they may replicate) and the module would not reclaim anyway.
    let mut reader = server.conn();
    let reads = std::thread::spawn(move || {
        (0..5000)
            .step_by(500)
            .map(|i| get(&mut reader, "p", &format!("key{i}")))
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        dbsize(&mut conn),
        at_pause,
        "nothing deleted during the pause"
    );
    assert!(at_pause > 0, "stale entries were left for the test");
    let reads = reads.join().expect("reader thread");
    assert!(reads.iter().all(Option::is_none), "{reads:?}");
    std::thread::sleep(Duration::from_millis(200));
    alive(&server);
    config_set(&mut conn, "nscache.sweep-budget", "100000");
    wait_until(
        Duration::from_secs(20),
        "sweep resumes after the pause",
        || stats(&mut conn, "p").entries == 0,
    );
}

#[test]
fn a_truncated_restore_payload_is_refused() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "p", "k", 600, "some value");
    let dump: Vec<u8> = redis::cmd("DUMP")
        .arg("p:{k}")
        .query(&mut conn)
        .expect("DUMP");
    let (body, tail) = dump.split_at(dump.len() - 10);
    assert!(body.len() > 20, "payload shorter than the cuts below");
    let crc = u64::from_le_bytes(tail[2..].try_into().expect("8 bytes"));
    assert_eq!(
        crc64(&dump[..dump.len() - 8]),
        crc,
        "the test's CRC matches Redis's"
    );
    // Cuts inside the module id, the opcodes and the value. (Dropping the last
    // bytes can yield another valid payload: the version bytes then read as data.)
    for cut in [3, 6, 12, 16, 20] {
        let mut forged = body[..cut].to_vec();
        forged.extend_from_slice(&tail[..2]);
        let crc = crc64(&forged);
        forged.extend_from_slice(&crc.to_le_bytes());
        let err = redis::cmd("RESTORE")
            .arg("evil")
            .arg(0)
            .arg(forged)
            .query::<Value>(&mut conn)
            .expect_err("truncated");
        let text = err.to_string();
        assert!(
            text.contains("Bad data format") || text.contains("payload"),
            "{text}"
        );
        alive(&server);
    }
    // An intact payload restores, under any name, and is charged as MEMORY USAGE counts it.
    let long = format!("p:{{{}}}", "x".repeat(60));
    let _: () = redis::cmd("RESTORE")
        .arg(&long)
        .arg(0)
        .arg(&dump)
        .query(&mut conn)
        .expect("RESTORE");
    let usage: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&long)
        .query(&mut conn)
        .expect("MEMORY USAGE");
    let k_usage: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("p:{k}")
        .query(&mut conn)
        .expect("MEMORY USAGE");
    assert_eq!(stats(&mut conn, "p").bytes, usage + k_usage);
}

#[test]
fn restored_entries_keep_their_validity_whatever_the_target_generation() {
    let source = RedisServer::start();
    let target = RedisServer::start();
    let (mut a, mut b) = (source.conn(), target.conn());
    config_set(&mut a, "nscache.sweep-budget", "10");
    fill(&mut a, "mi", 3000, 600, "v");
    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("mi")
        .query(&mut a)
        .expect("INVALIDATE");
    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("mi")
        .query(&mut a)
        .expect("INVALIDATE");
    set(&mut a, "mi", "live", 600, "fresh");
    let stale: Vec<u8> = redis::cmd("DUMP")
        .arg("mi:{key2999}")
        .query(&mut a)
        .expect("DUMP of a stale entry");
    let live: Vec<u8> = redis::cmd("DUMP")
        .arg("mi:{live}")
        .query(&mut a)
        .expect("DUMP");
    for (name, payload) in [("mi:{key2999}", &stale), ("mi:{live}", &live)] {
        let _: () = redis::cmd("RESTORE")
            .arg(name)
            .arg(0)
            .arg(payload)
            .query(&mut b)
            .expect("RESTORE");
    }
    assert_eq!(get(&mut b, "mi", "live").as_deref(), Some("fresh"));
    assert_eq!(
        get(&mut b, "mi", "key2999"),
        None,
        "invalidated on the source, invalid here"
    );
    // Bumping the target's generation past the source's never revives it.
    let _: () = redis::cmd("RESTORE")
        .arg("mi:{key2999}")
        .arg(0)
        .arg(&stale)
        .arg("REPLACE")
        .query(&mut b)
        .expect("RESTORE");
    for _ in 0..3 {
        let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
            .arg("mi")
            .query(&mut b)
            .expect("INVALIDATE");
        assert_eq!(get(&mut b, "mi", "key2999"), None);
    }
}

#[test]
fn a_full_sync_replaces_the_replicas_own_generations() {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    let (mut p, mut r) = (primary.conn(), replica.conn());
    for _ in 0..3 {
        let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
            .arg("g")
            .query(&mut r)
            .expect("INVALIDATE on the future replica");
    }
    set(&mut p, "g", "k", 600, "v1");
    // The replica must not refuse the primary's writes over its namespace cap.
    config_set(&mut r, "nscache.max-namespaces", "1");
    let port = primary.port().to_string();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(&port)
        .query(&mut r)
        .expect("REPLICAOF");
    wait_until(Duration::from_secs(20), "full sync", || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut r)
            .expect("INFO");
        info.contains("master_link_status:up")
    });
    for ns in ["n2", "n3", "n4"] {
        set(&mut p, ns, "k", 600, "v");
    }
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut p)
        .expect("WAIT");
    assert_eq!(get(&mut r, "g", "k").as_deref(), Some("v1"));
    for ns in ["n2", "n3", "n4"] {
        assert_eq!(
            get(&mut r, ns, "k").as_deref(),
            Some("v"),
            "{ns} replicated despite the cap"
        );
    }
    let digest = |c: &mut Connection| -> String {
        redis::cmd("DEBUG").arg("DIGEST").query(c).expect("DIGEST")
    };
    assert_eq!(digest(&mut p), digest(&mut r));
}

#[test]
fn del_counts_a_key_named_twice_once() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "p", "a", 600, "1");
    let n: i64 = redis::cmd("NSCACHE.DEL")
        .arg(&["p", "a", "a", "a"])
        .query(&mut conn)
        .expect("DEL");
    assert_eq!(n, 1);
    set(&mut conn, "p", "{b}", 600, "2");
    let n: i64 = redis::cmd("NSCACHE.DEL")
        .arg(&["p", "b", "{b}", "{b}"])
        .query(&mut conn)
        .expect("DEL");
    assert_eq!(
        n, 1,
        "`b` and `{{b}}` share a stored name; only `{{b}}` owned it"
    );
    assert_eq!(stats(&mut conn, "p").deletes, 2);
}

#[test]
fn entries_moved_behind_a_running_sweep_are_still_reclaimed() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    fill(&mut conn, "sw", 3000, 600, "v");
    let _: () = redis::cmd("SELECT")
        .arg(1)
        .query(&mut conn)
        .expect("SELECT");
    fill(&mut conn, "sw", 3000, 600, "v");
    config_set(&mut conn, "nscache.sweep-budget", "10");
    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("sw")
        .query(&mut conn)
        .expect("INVALIDATE");
    std::thread::sleep(Duration::from_millis(300));
    let _: () = redis::cmd("SWAPDB")
        .arg(0)
        .arg(1)
        .query(&mut conn)
        .expect("SWAPDB mid-pass");
    config_set(&mut conn, "nscache.sweep-budget", "1000");
    wait_until(
        Duration::from_secs(60),
        "every stale entry reclaimed",
        || stats(&mut conn, "sw").entries == 0,
    );
    let sizes: Vec<i64> = (0..2)
        .map(|db| {
            let _: () = redis::cmd("SELECT")
                .arg(db)
                .query(&mut conn)
                .expect("SELECT");
            redis::cmd("DBSIZE").query(&mut conn).expect("DBSIZE")
        })
        .collect();
    assert_eq!(sizes, [0, 0]);
}

#[test]
fn a_plain_key_expiring_after_a_del_is_not_counted() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "e", "z", 600, "v");
    let _: i64 = redis::cmd("DEL")
        .arg("e:{z}")
        .query(&mut conn)
        .expect("DEL");
    let _: () = redis::cmd("SET")
        .arg(&["e:{z}", "plain", "PX", "30"])
        .query(&mut conn)
        .expect("SET");
    wait_until(Duration::from_secs(5), "plain key expires", || {
        let v: Option<String> = redis::cmd("GET")
            .arg("e:{z}")
            .query(&mut conn)
            .expect("GET");
        v.is_none()
    });
    assert_eq!(stats(&mut conn, "e").expired, 0);
}

#[test]
fn aof_rewrite_without_preamble_keeps_renamed_and_persisted_entries() {
    let mut server =
        RedisServer::start_with(&["--appendonly", "yes", "--aof-use-rdb-preamble", "no"]);
    let mut conn = server.conn();
    set(&mut conn, "ab", "x", 600, "renamed");
    set(&mut conn, "ab", "persisted", 600, "kept");
    let _: () = redis::cmd("RENAME")
        .arg("ab:{x}")
        .arg("elsewhere")
        .query(&mut conn)
        .expect("RENAME");
    let _: i64 = redis::cmd("PERSIST")
        .arg("ab:{persisted}")
        .query(&mut conn)
        .expect("PERSIST");
    rewrite_aof(&mut conn);
    server.restart();
    let mut conn = server.conn();
    std::thread::sleep(Duration::from_millis(1200));
    let kind: String = redis::cmd("TYPE")
        .arg("elsewhere")
        .query(&mut conn)
        .expect("TYPE");
    assert_eq!(kind, "nscache-e");
    let ttl: i64 = redis::cmd("TTL")
        .arg("ab:{persisted}")
        .query(&mut conn)
        .expect("TTL");
    assert_eq!(ttl, -1, "still persistent");
    assert_eq!(get(&mut conn, "ab", "persisted").as_deref(), Some("kept"));
    let err = redis::cmd("NSCACHE.RESTOREENTRY")
        .arg(&["x", "p", "2", "v"])
        .query::<Value>(&mut conn)
        .expect_err("form");
    assert!(err.to_string().contains("invalid form"), "{err}");
}
