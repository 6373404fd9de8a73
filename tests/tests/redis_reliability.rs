//! Reliability findings of issue 7 against real servers: the namespace lifecycle
//! (SPEC 2.6), NSCACHE.RESTOREENTRY's origin check, all-or-nothing SET, reads
//! that may replicate, and callbacks that must not let a panic kill the server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cachetx_tests::nscache::{
    alive, config_set, dbsize, digest, fill, get, namespaces, pexpiretime, rewrite_aof, set, stats,
    used_memory, wait_lazy_free,
};
use cachetx_tests::{wait_until, RedisServer};
use redis::{Connection, Value};

fn exists(conn: &mut Connection, name: &str) -> i64 {
    redis::cmd("EXISTS").arg(name).query(conn).expect("EXISTS")
}

fn forget(conn: &mut Connection, prefix: &str) -> redis::RedisResult<Value> {
    redis::cmd("NSCACHE.FORGET").arg(prefix).query(conn)
}

/// `NSCACHE.INVALIDATE prefix` and `CLIENT PAUSE WRITE` in one transaction, so
/// the sweep cannot reclaim anything in between.
fn pause_after_invalidate(conn: &mut Connection, prefix: &str) {
    let _: () = redis::cmd("MULTI").query(conn).expect("MULTI");
    let _: Value = redis::cmd("NSCACHE.INVALIDATE")
        .arg(prefix)
        .query(conn)
        .expect("queued");
    let _: Value = redis::cmd("CLIENT")
        .arg(&["PAUSE", "100000", "WRITE"])
        .query(conn)
        .expect("queued");
    let _: Value = redis::cmd("EXEC").query(conn).expect("EXEC");
}

/// Waits until no AOF rewrite runs or is scheduled.
fn aof_idle(conn: &mut Connection) {
    wait_until(Duration::from_secs(20), "AOF rewrite idle", || {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(conn)
            .expect("INFO");
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    });
}

fn wait_replica(primary: &mut Connection) {
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(primary)
        .expect("WAIT");
}

// ---------------------------------------------------------------- item 5

#[test]
fn reads_of_unknown_prefixes_never_lock_writers_out() {
    let server = RedisServer::start_with_module_args(&["max-namespaces", "100"]);
    let mut reader = server.conn();
    let mut writer = server.conn();
    // The scenario: 100 reads of junk prefixes, then a write.
    for i in 0..100 {
        assert_eq!(get(&mut reader, &format!("junk{i}"), "k"), None);
    }
    set(&mut writer, "fresh", "k", 600, "v");
    // 10,000 distinct unknown prefixes, writes interleaved: none fails and the
    // registry never exceeds the cap.
    for round in 0..10 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            pipe.cmd("NSCACHE.GET")
                .arg(format!("r{round}x{i}"))
                .arg("k")
                .ignore();
        }
        let () = pipe.query(&mut reader).expect("pipelined reads");
        assert!(namespaces(&mut reader) <= 100);
        set(&mut writer, &format!("w{round}"), "k", 600, "v");
        assert!(namespaces(&mut reader) <= 100);
    }
    for round in 0..10 {
        assert_eq!(
            get(&mut writer, &format!("w{round}"), "k").as_deref(),
            Some("v")
        );
    }
    assert_eq!(get(&mut writer, "fresh", "k").as_deref(), Some("v"));
    // MGET, STATS and TOPKEYS of unknown prefixes do not exhaust it either.
    for i in 0..300 {
        let _: Value = redis::cmd("NSCACHE.MGET")
            .arg(format!("m{i}"))
            .arg("a")
            .arg("b")
            .query(&mut reader)
            .expect("MGET");
        let _: Value = redis::cmd("NSCACHE.STATS")
            .arg(format!("s{i}"))
            .query(&mut reader)
            .expect("STATS");
        let _: Value = redis::cmd("NSCACHE.TOPKEYS")
            .arg(format!("t{i}"))
            .query(&mut reader)
            .expect("TOPKEYS");
    }
    assert!(namespaces(&mut reader) <= 100);
    set(&mut writer, "last", "k", 600, "v");
}

/// `NSCACHE.GET c<i> k` for every i in `range`, pipelined.
fn read_unknown_prefixes(conn: &mut Connection, range: std::ops::Range<usize>) {
    let mut pipe = redis::pipe();
    for i in range {
        pipe.cmd("NSCACHE.GET")
            .arg(format!("c{i}"))
            .arg("k")
            .ignore();
    }
    let () = pipe.query(conn).expect("reads");
}

#[test]
fn forgotten_namespaces_give_their_memory_back() {
    let server = RedisServer::start_with_module_args(&["max-namespaces", "100"]);
    let mut conn = server.conn();
    read_unknown_prefixes(&mut conn, 0..2_000);
    let before = used_memory(&mut conn);
    // Each namespace costs ~21 KiB: keeping 20,000 would be ~400 MB.
    read_unknown_prefixes(&mut conn, 2_000..22_000);
    let after = used_memory(&mut conn);
    assert!(
        after - before < 4 * 1024 * 1024,
        "used_memory grew from {before} to {after}"
    );
    assert!(namespaces(&mut conn) <= 100);
}

#[test]
fn a_namespace_is_not_forgotten_while_its_entries_await_lazy_freeing() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    fill(&mut conn, "p", 100_000, 600, "value");
    let _: () = redis::cmd("FLUSHALL")
        .arg("ASYNC")
        .query(&mut conn)
        .expect("FLUSHALL ASYNC");
    // The entries are freed on the lazy-free thread: FORGET succeeds only
    // once the last one is gone, and never corrupts what comes after.
    let mut refused = 0;
    loop {
        match forget(&mut conn, "p") {
            Ok(Value::Okay) => break,
            Ok(other) => panic!("FORGET: {other:?}"),
            Err(err) => {
                assert!(err.to_string().contains("holds"), "{err}");
                refused += 1;
            }
        }
    }
    set(&mut conn, "p", "k", 600, "v");
    wait_lazy_free(&mut conn, Duration::from_secs(20));
    let s = stats(&mut conn, "p");
    let usage: u64 = redis::cmd("MEMORY")
        .arg(&["USAGE", "p:{k}"])
        .query(&mut conn)
        .expect("MEMORY USAGE");
    assert_eq!(
        (s.entries, s.bytes, s.sets),
        (1, usage, 1),
        "refused {refused} times"
    );
    alive(&server);
}

#[test]
fn when_every_namespace_holds_entries_writes_hit_the_cap_and_reads_still_answer() {
    let server = RedisServer::start_with_module_args(&["max-namespaces", "3"]);
    let mut conn = server.conn();
    for ns in ["a", "b", "c"] {
        set(&mut conn, ns, "k", 600, "v");
    }
    let err = redis::cmd("NSCACHE.SET")
        .arg(&["d", "k", "600", "v"])
        .query::<Value>(&mut conn)
        .expect_err("cap");
    assert!(err.to_string().contains("too many namespaces"), "{err}");
    // A read of a fourth prefix is a plain miss, not an error.
    assert_eq!(get(&mut conn, "d", "k"), None);
    let v: Vec<Option<String>> = redis::cmd("NSCACHE.MGET")
        .arg(&["d", "x", "y"])
        .query(&mut conn)
        .expect("MGET");
    assert_eq!(v, [None, None]);
    let deleted: i64 = redis::cmd("NSCACHE.DEL")
        .arg(&["d", "x"])
        .query(&mut conn)
        .expect("DEL");
    assert_eq!(deleted, 0);
    assert_eq!(namespaces(&mut conn), 3);
    assert_eq!(dbsize(&mut conn), 3);
}

#[test]
fn misses_of_a_never_written_namespace_count() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    for _ in 0..3 {
        assert_eq!(get(&mut conn, "cold", "k"), None);
    }
    let _: Value = redis::cmd("NSCACHE.MGET")
        .arg(&["cold", "a", "b"])
        .query(&mut conn)
        .expect("MGET");
    let s = stats(&mut conn, "cold");
    assert_eq!((s.hits, s.misses, s.entries), (0, 5, 0));
}

#[test]
fn forget_refuses_a_namespace_with_entries_and_drops_an_empty_ones_counters() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "p", "k", 600, "v");
    assert_eq!(get(&mut conn, "p", "k").as_deref(), Some("v"));
    let before = stats(&mut conn, "p");
    let err = forget(&mut conn, "p").expect_err("holds an entry");
    assert!(err.to_string().contains("holds 1 entries"), "{err}");
    assert_eq!(stats(&mut conn, "p"), before, "nothing changed");
    assert_eq!(get(&mut conn, "p", "k").as_deref(), Some("v"));
    assert_eq!(namespaces(&mut conn), 1);

    let _: i64 = redis::cmd("NSCACHE.DEL")
        .arg(&["p", "k"])
        .query(&mut conn)
        .expect("DEL");
    assert_eq!(forget(&mut conn, "p").expect("FORGET"), Value::Okay);
    assert_eq!(namespaces(&mut conn), 0);
    let s = stats(&mut conn, "p");
    assert_eq!(
        (s.hits, s.misses, s.sets, s.deletes, s.entries),
        (0, 0, 0, 0, 0)
    );
    // Unknown prefix: nothing to forget, OK. Bad input: an error.
    assert_eq!(forget(&mut conn, "never").expect("FORGET"), Value::Okay);
    let err = forget(&mut conn, "bad prefix").expect_err("prefix");
    assert!(err.to_string().contains("invalid prefix"), "{err}");
    let err = redis::cmd("NSCACHE.FORGET")
        .query::<Value>(&mut conn)
        .expect_err("arity");
    assert!(
        err.to_string().contains("wrong number of arguments"),
        "{err}"
    );
}

#[test]
fn forgetting_never_resurrects_invalidated_entries() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    fill(&mut conn, "p", 200, 600, "old");
    // A pause holds the sweep: the invalidated entries stay in memory.
    pause_after_invalidate(&mut conn, "p");
    let err = forget(&mut conn, "p").expect_err("stale entries are still there");
    assert!(err.to_string().contains("holds 200 entries"), "{err}");
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut conn)
        .expect("UNPAUSE");
    assert_eq!(get(&mut conn, "p", "key1"), None);
    config_set(&mut conn, "nscache.sweep-budget", "100000");
    wait_until(Duration::from_secs(20), "sweep reclaims", || {
        stats(&mut conn, "p").entries == 0
    });
    assert_eq!(forget(&mut conn, "p").expect("FORGET"), Value::Okay);
    set(&mut conn, "p", "key0", 600, "new");
    assert_eq!(get(&mut conn, "p", "key0").as_deref(), Some("new"));
    for i in 1..200 {
        assert_eq!(get(&mut conn, "p", &format!("key{i}")), None, "key{i}");
    }
    assert_eq!(dbsize(&mut conn), 1);
}

#[test]
fn client_restore_obeys_the_cap_while_reload_and_restart_keep_everything() {
    let mut server =
        RedisServer::start_with_args(&["--appendonly", "no"], &["max-namespaces", "3"]);
    let mut conn = server.conn();
    config_set(&mut conn, "nscache.max-namespaces", "100");
    for i in 0..6 {
        set(&mut conn, &format!("n{i}"), "k", 600, &format!("v{i}"));
    }
    set(&mut conn, "extra", "k", 600, "x");
    let dump: Vec<u8> = redis::cmd("DUMP")
        .arg("extra:{k}")
        .query(&mut conn)
        .expect("DUMP");
    let _: i64 = redis::cmd("DEL")
        .arg("extra:{k}")
        .query(&mut conn)
        .expect("DEL");
    assert_eq!(forget(&mut conn, "extra").expect("FORGET"), Value::Okay);
    config_set(&mut conn, "nscache.max-namespaces", "3");
    // Six namespaces hold entries, the cap is 3: a client's RESTORE of a
    // seventh namespace is a write past the cap.
    let err = redis::cmd("RESTORE")
        .arg("extra:{k}")
        .arg(0)
        .arg(&dump)
        .query::<Value>(&mut conn)
        .expect_err("RESTORE past the cap");
    assert!(!err.to_string().is_empty());
    assert_eq!(exists(&mut conn, "extra:{k}"), 0);
    assert_eq!(namespaces(&mut conn), 6);
    assert!(
        server.log().contains("too many namespaces"),
        "the log says why"
    );
    // A RESTORE into an existing namespace needs no room.
    let n0: Vec<u8> = redis::cmd("DUMP")
        .arg("n0:{k}")
        .query(&mut conn)
        .expect("DUMP");
    let _: () = redis::cmd("RESTORE")
        .arg("n0:{copy}")
        .arg(0)
        .arg(&n0)
        .query(&mut conn)
        .expect("RESTORE in an existing namespace");

    let check = |conn: &mut Connection| {
        for i in 0..6 {
            assert_eq!(
                get(conn, &format!("n{i}"), "k").as_deref(),
                Some(format!("v{i}").as_str())
            );
        }
        assert_eq!(dbsize(conn), 7);
        assert_eq!(namespaces(conn), 6);
    };
    let _: () = redis::cmd("DEBUG")
        .arg("RELOAD")
        .query(&mut conn)
        .expect("DEBUG RELOAD");
    check(&mut conn);
    let _: () = redis::cmd("SAVE").query(&mut conn).expect("SAVE");
    server.restart();
    let mut conn = server.conn();
    check(&mut conn);
}

// ---------------------------------------------------------------- item 6

#[test]
fn restoreentry_is_refused_from_clients() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let err = redis::cmd("NSCACHE.RESTOREENTRY")
        .arg(&["foo", "candidates", "0", "hello"])
        .query::<Value>(&mut conn)
        .expect_err("a client may not run it");
    assert!(err.to_string().contains("internal"), "{err}");
    assert_eq!(exists(&mut conn, "foo"), 0);
    assert_eq!(namespaces(&mut conn), 0);
    // Not through a script or a transaction either.
    let err = redis::cmd("EVAL")
        .arg("return redis.call('NSCACHE.RESTOREENTRY', 'foo', 'c', '0', 'v')")
        .arg(0)
        .query::<Value>(&mut conn)
        .expect_err("script");
    assert!(err.to_string().contains("internal"), "{err}");
    let (reply,): (Value,) = redis::pipe()
        .atomic()
        .cmd("NSCACHE.RESTOREENTRY")
        .arg(&["foo", "c", "0", "v"])
        .query(&mut conn)
        .unwrap_or((Value::Nil,));
    assert!(!matches!(reply, Value::Okay), "{reply:?}");
    assert_eq!(exists(&mut conn, "foo"), 0);
    assert_eq!(dbsize(&mut conn), 0);
}

#[test]
fn rewritten_aof_still_loads_and_feeds_a_replica() {
    let aof = ["--appendonly", "yes", "--aof-use-rdb-preamble", "no"];
    let mut primary = RedisServer::start_with(&aof);
    let mut p = primary.conn();
    fill(&mut p, "a", 50, 600, "va");
    set(&mut p, "b", "short", 300, "vb");
    set(&mut p, "b", "{tag}x", 900, "tagged");
    let expiry = pexpiretime(&mut p, "b:{short}");
    aof_idle(&mut p);
    rewrite_aof(&mut p);
    primary.restart();
    let mut p = primary.conn();
    let check = |c: &mut Connection| {
        assert_eq!(get(c, "a", "key7").as_deref(), Some("va"));
        assert_eq!(get(c, "b", "short").as_deref(), Some("vb"));
        assert_eq!(get(c, "b", "{tag}x").as_deref(), Some("tagged"));
        assert_eq!(pexpiretime(c, "b:{short}"), expiry, "absolute TTL kept");
        assert_eq!(dbsize(c), 52);
    };
    check(&mut p);

    let mut replica = RedisServer::start_replica_of(&primary, &aof);
    let mut r = replica.conn();
    set(&mut p, "c", "after", 600, "vc");
    wait_replica(&mut p);
    assert_eq!(get(&mut r, "c", "after").as_deref(), Some("vc"));
    let _: i64 = redis::cmd("NSCACHE.DEL")
        .arg(&["c", "after"])
        .query(&mut p)
        .expect("DEL");
    wait_replica(&mut p);
    check(&mut r);
    assert_eq!(digest(&mut p), digest(&mut r));
    // The replica's own rewritten AOF (RESTOREENTRY lines) loads too.
    aof_idle(&mut r);
    rewrite_aof(&mut r);
    replica.restart();
    replica.wait_for_link();
    let mut r = replica.conn();
    check(&mut r);
    assert_eq!(digest(&mut p), digest(&mut r));
}

// ---------------------------------------------------------------- item 8

#[test]
fn a_set_that_fails_writes_nothing() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "p", "k", 600, "old");
    let expiry = pexpiretime(&mut conn, "p:{k}");
    for ttl in ["3153600001", "9223372036854775807", "0", "-1"] {
        let err = redis::cmd("NSCACHE.SET")
            .arg(&["p", "k", ttl, "new"])
            .query::<Value>(&mut conn)
            .expect_err(ttl);
        assert!(err.to_string().contains("invalid ttl"), "{ttl}: {err}");
        let err = redis::cmd("NSCACHE.SET")
            .arg(&["p", "fresh", ttl, "new"])
            .query::<Value>(&mut conn)
            .expect_err(ttl);
        assert!(err.to_string().contains("invalid ttl"), "{ttl}: {err}");
    }
    assert_eq!(get(&mut conn, "p", "k").as_deref(), Some("old"));
    assert_eq!(pexpiretime(&mut conn, "p:{k}"), expiry);
    assert_eq!(exists(&mut conn, "p:{fresh}"), 0);
    // The largest ttl still gets an expiry.
    set(&mut conn, "p", "far", 3_153_600_000, "v");
    assert!(pexpiretime(&mut conn, "p:{far}") > 0);
    assert_eq!(stats(&mut conn, "p").sets, 2);
}

// ---------------------------------------------------------------- item 9

fn command_flags(conn: &mut Connection, name: &str) -> Vec<String> {
    let info: Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg(name)
        .query(conn)
        .expect("COMMAND INFO");
    let Value::Array(outer) = info else {
        panic!("COMMAND INFO: {info:?}")
    };
    let Some(Value::Array(fields)) = outer.first() else {
        panic!("COMMAND INFO {name}: {outer:?}")
    };
    let Some(Value::Array(flags)) = fields.get(2) else {
        panic!("COMMAND INFO {name} flags: {fields:?}")
    };
    flags
        .iter()
        .map(|f| redis::from_redis_value::<String>(f.clone()).expect("flag"))
        .collect()
}

// COMMAND INFO hides `may_replicate` on purpose (Redis 7.0), so the flag is
// tested by its effect: a write pause holds the read (next test).
#[test]
fn reads_stay_readonly_and_forget_is_no_write() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    for name in ["nscache.get", "nscache.mget"] {
        let flags = command_flags(&mut conn, name);
        assert!(flags.iter().any(|f| f == "readonly"), "{name}: {flags:?}");
        assert!(!flags.iter().any(|f| f == "write"), "{name}: {flags:?}");
    }
    let flags = command_flags(&mut conn, "nscache.forget");
    assert!(
        !flags.iter().any(|f| f == "write" || f == "may_replicate"),
        "FORGET is per node: {flags:?}"
    );
}

fn blocked_clients(conn: &mut Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("clients").query(conn).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("blocked_clients")
}

#[test]
fn a_stale_get_during_a_write_pause_waits_and_deletes_nothing() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    fill(&mut conn, "p", 20, 600, "v");
    // Hold the sweep (a pause stops it) with stale entries in place.
    pause_after_invalidate(&mut conn, "p");
    assert_eq!(dbsize(&mut conn), 20, "nothing reclaimed yet");

    let mut reader = server.conn();
    let handle = std::thread::spawn(move || {
        let one = get(&mut reader, "p", "key3");
        let many: Vec<Option<String>> = redis::cmd("NSCACHE.MGET")
            .arg(&["p", "key4", "key5"])
            .query(&mut reader)
            .expect("MGET");
        (one, many)
    });
    // Redis holds a may-replicate command until the pause ends.
    wait_until(Duration::from_secs(5), "the stale GET is held", || {
        blocked_clients(&mut conn) == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        exists(&mut conn, "p:{key3}"),
        1,
        "nothing deleted while paused"
    );
    assert_eq!(dbsize(&mut conn), 20);
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut conn)
        .expect("UNPAUSE");
    let (one, many) = handle.join().expect("reader thread");
    assert_eq!(one, None, "a stale entry reads as a miss");
    assert_eq!(many, [None, None]);
    assert_eq!(
        exists(&mut conn, "p:{key3}"),
        0,
        "reclaimed after the pause"
    );
    wait_until(Duration::from_secs(20), "sweep", || dbsize(&mut conn) == 0);
}

#[test]
fn a_stale_read_on_a_replica_is_a_miss_and_the_replica_does_not_diverge() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary, &[]);
    let (mut p, mut r) = (primary.conn(), replica.conn());
    fill(&mut p, "p", 500, 600, "v");
    set(&mut p, "q", "k", 600, "live");
    // The replica holds the entries before they go stale (on a loaded machine
    // its initial sync may still run here, and an empty replica would pass
    // the misses below for the wrong reason).
    wait_replica(&mut p);
    // Keep the primary from sweeping while the replica reads stale entries.
    pause_after_invalidate(&mut p, "p");
    wait_until(Duration::from_secs(10), "INVALIDATE replicated", || {
        get(&mut r, "p", "key0").is_none()
    });
    for i in 0..500 {
        assert_eq!(get(&mut r, "p", &format!("key{i}")), None);
    }
    let _: Vec<Option<String>> = redis::cmd("NSCACHE.MGET")
        .arg(&["p", "key1", "key2"])
        .query(&mut r)
        .expect("MGET");
    assert_eq!(dbsize(&mut r), 501, "the replica deletes nothing by itself");
    assert_eq!(get(&mut r, "q", "k").as_deref(), Some("live"));
    assert!(stats(&mut r, "p").misses >= 500);
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut p)
        .expect("UNPAUSE");
    wait_until(
        Duration::from_secs(20),
        "primary sweeps, replica follows",
        || {
            wait_replica(&mut p);
            dbsize(&mut p) == 1 && dbsize(&mut r) == 1
        },
    );
    assert_eq!(digest(&mut p), digest(&mut r));
}

#[test]
fn a_replica_applies_its_primarys_restore_past_its_own_cap() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary, &[]);
    let (mut p, mut r) = (primary.conn(), replica.conn());
    set(&mut p, "one", "k", 600, "1");
    set(&mut p, "two", "k", 600, "2");
    wait_replica(&mut p);
    config_set(&mut r, "nscache.max-namespaces", "1");
    let dump: Vec<u8> = redis::cmd("DUMP")
        .arg("two:{k}")
        .query(&mut p)
        .expect("DUMP");
    let _: i64 = redis::cmd("DEL").arg("two:{k}").query(&mut p).expect("DEL");
    set(&mut p, "three", "k", 600, "3");
    let _: () = redis::cmd("RESTORE")
        .arg("two:{k}")
        .arg(0)
        .arg(&dump)
        .query(&mut p)
        .expect("RESTORE on the primary");
    wait_replica(&mut p);
    assert_eq!(get(&mut r, "two", "k").as_deref(), Some("2"));
    assert_eq!(get(&mut r, "three", "k").as_deref(), Some("3"));
    assert_eq!(digest(&mut p), digest(&mut r));
}

// ---------------------------------------------------------------- item 7

/// A build of the module with the `fault-injection` feature (test-only: an
/// entry whose value is `nscache-fault:<callback>` panics in that callback):
/// `$NSCACHE_FAULT_MODULE`, or built here into its own target directory.
fn fault_module() -> PathBuf {
    if let Some(path) = std::env::var_os("NSCACHE_FAULT_MODULE").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let target = root.join("target").join("fault-injection");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
        .current_dir(root)
        .args(["build", "-p", "nscache", "--features", "fault-injection"])
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("run cargo build for the fault-injection module");
    assert!(
        status.success(),
        "building the fault-injection module failed"
    );
    target.join("debug").join("libnscache.so")
}

#[test]
fn a_panic_in_any_data_type_callback_does_not_kill_the_server() {
    let server = RedisServer::start_with_module(&fault_module(), &[]);
    let mut conn = server.conn();
    let fault = |c: &str| format!("nscache-fault:{c}");

    set(&mut conn, "p", "mem", 600, &fault("mem_usage"));
    let _: Value = redis::cmd("MEMORY")
        .arg(&["USAGE", "p:{mem}"])
        .query(&mut conn)
        .expect("MEMORY USAGE answers");
    alive(&server);

    set(&mut conn, "p", "dig", 600, &fault("digest"));
    let _: Value = redis::cmd("DEBUG")
        .arg("DIGEST")
        .query(&mut conn)
        .expect("DEBUG DIGEST answers");
    alive(&server);

    set(&mut conn, "p", "cp", 600, &fault("copy"));
    let copied = redis::cmd("COPY")
        .arg(&["p:{cp}", "p:{cp2}"])
        .query::<Value>(&mut conn);
    assert!(!matches!(copied, Ok(Value::Int(1))), "{copied:?}");
    assert_eq!(
        exists(&mut conn, "p:{cp2}"),
        0,
        "a failed COPY creates nothing"
    );
    alive(&server);

    set(&mut conn, "p", "load", 600, &fault("rdb_load"));
    let dump: Vec<u8> = redis::cmd("DUMP")
        .arg("p:{load}")
        .query(&mut conn)
        .expect("DUMP");
    let restored = redis::cmd("RESTORE")
        .arg("p:{load2}")
        .arg(0)
        .arg(&dump)
        .query::<Value>(&mut conn);
    assert!(restored.is_err(), "{restored:?}");
    assert_eq!(exists(&mut conn, "p:{load2}"), 0);
    alive(&server);

    for (key, callback) in [("unl", "unlink"), ("fr", "free")] {
        set(&mut conn, "p", key, 600, &fault(callback));
        let _: i64 = redis::cmd("DEL")
            .arg(format!("p:{{{key}}}"))
            .query(&mut conn)
            .expect("DEL");
        alive(&server);
    }

    set(&mut conn, "p", "save", 600, &fault("rdb_save"));
    let _: Value = redis::cmd("DUMP")
        .arg("p:{save}")
        .query(&mut conn)
        .expect("DUMP answers");
    alive(&server);

    set(&mut conn, "p", "aof", 600, &fault("aof_rewrite"));
    config_set(&mut conn, "aof-use-rdb-preamble", "no");
    // Turning the AOF on rewrites it (in a child, where the fault fires).
    config_set(&mut conn, "appendonly", "yes");
    aof_idle(&mut conn);
    alive(&server);

    let log = server.log();
    for callback in [
        "mem_usage",
        "digest",
        "copy",
        "rdb_load",
        "unlink",
        "free",
        "rdb_save",
    ] {
        assert!(
            log.contains(&format!("panic in the {callback} callback")),
            "{callback} logged:\n{log}"
        );
    }
}
