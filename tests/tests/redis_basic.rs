//! nscache against a real redis-server: storage, expiry, slots, stats, bad input.

use std::collections::HashMap;
use std::time::Duration;

use cachetx_tests::nscache::{digest, info_field, key_range, pexpiretime, repl_offset, sweep_idle};
use cachetx_tests::{wait_until, RedisCluster, RedisServer};
use redis::{Connection, RedisResult, Value};

fn stats(conn: &mut Connection, prefix: &str) -> HashMap<String, Value> {
    let flat: Vec<Value> = redis::cmd("NSCACHE.STATS")
        .arg(prefix)
        .query(conn)
        .expect("NSCACHE.STATS");
    flat.chunks(2)
        .map(|pair| match &pair[0] {
            Value::BulkString(name) => {
                (String::from_utf8_lossy(name).into_owned(), pair[1].clone())
            }
            other => panic!("field name is not a bulk string: {other:?}"),
        })
        .collect()
}

fn stat(conn: &mut Connection, prefix: &str, field: &str) -> i64 {
    match stats(conn, prefix).get(field) {
        Some(Value::Int(v)) => *v,
        other => panic!("{field} is not an integer: {other:?}"),
    }
}

fn set(
    conn: &mut Connection,
    prefix: &str,
    key: &[u8],
    ttl: &str,
    value: &[u8],
) -> RedisResult<Value> {
    redis::cmd("NSCACHE.SET")
        .arg(prefix)
        .arg(key)
        .arg(ttl)
        .arg(value)
        .query(conn)
}

fn get(conn: &mut Connection, prefix: &str, key: &[u8]) -> Option<Vec<u8>> {
    redis::cmd("NSCACHE.GET")
        .arg(prefix)
        .arg(key)
        .query(conn)
        .expect("NSCACHE.GET")
}

fn dbsize(conn: &mut Connection) -> i64 {
    redis::cmd("DBSIZE").query(conn).expect("DBSIZE")
}

#[test]
fn set_then_get_is_binary_safe_and_stats_count_exactly() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let values: [&[u8]; 4] = [b"plain", b"nul\0inside", b"crlf\r\nline\r\n", b""];
    for (i, value) in values.iter().enumerate() {
        let key = format!("k{i}");
        assert_eq!(
            set(&mut conn, "candidates", key.as_bytes(), "60", value).expect("set"),
            Value::Okay
        );
    }
    let big = vec![0xABu8; 1 << 20];
    set(&mut conn, "candidates", b"big\0key\r\n", "60", &big).expect("set big");

    for (i, value) in values.iter().enumerate() {
        let key = format!("k{i}");
        assert_eq!(
            get(&mut conn, "candidates", key.as_bytes()).as_deref(),
            Some(*value)
        );
    }
    assert_eq!(get(&mut conn, "candidates", b"big\0key\r\n"), Some(big));
    assert_eq!(get(&mut conn, "candidates", b"missing"), None);
    assert_eq!(get(&mut conn, "candidates", b"also-missing"), None);

    let s = stats(&mut conn, "candidates");
    assert_eq!(s["hits"], Value::Int(5));
    assert_eq!(s["misses"], Value::Int(2));
    assert_eq!(s["sets"], Value::Int(5));
    assert_eq!(s["entries"], Value::Int(5));
    let ratio = match &s["hit_ratio"] {
        Value::Double(d) => *d,
        Value::BulkString(b) => String::from_utf8_lossy(b).parse().expect("ratio"),
        other => panic!("hit_ratio: {other:?}"),
    };
    assert!((ratio - 5.0 / 7.0).abs() < 1e-9, "hit_ratio {ratio}");
    // Other namespaces are untouched.
    assert_eq!(stat(&mut conn, "other", "hits"), 0);
    assert_eq!(stat(&mut conn, "other", "entries"), 0);
}

#[test]
fn stats_fields_come_in_spec_order_and_as_a_map_in_resp3() {
    let server = RedisServer::start();
    let mut conn = server.conn_resp3();
    set(&mut conn, "p", b"a", "60", b"v").expect("set");
    let reply: Value = redis::cmd("NSCACHE.STATS")
        .arg("p")
        .query(&mut conn)
        .expect("stats");
    let Value::Map(fields) = reply else {
        panic!("RESP3 reply is not a map: {reply:?}")
    };
    let names: Vec<String> = fields
        .iter()
        .map(|(k, _)| match k {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            "hits",
            "misses",
            "hit_ratio",
            "sets",
            "deletes",
            "invalidations",
            "expired",
            "evicted",
            "entries",
            "bytes",
            "read_latency_us",
            "write_latency_us",
            "leases",
            "lease_waits",
            "refreshes",
            "stale_sets_rejected"
        ]
    );
    assert!(
        matches!(fields[2].1, Value::Double(_)),
        "hit_ratio is a RESP3 double"
    );
}

#[test]
fn stored_key_is_an_ordinary_redis_key_with_a_ttl() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "candidates", b"42", "100", b"profile").expect("set");
    let stored: String = redis::cmd("NSCACHE.KEYNAME")
        .arg("candidates")
        .arg("42")
        .query(&mut conn)
        .expect("keyname");
    assert_eq!(stored, "candidates:{42}");
    let kind: String = redis::cmd("TYPE")
        .arg(&stored)
        .query(&mut conn)
        .expect("TYPE");
    assert_eq!(kind, "nscache-e");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&stored)
        .query(&mut conn)
        .expect("TTL");
    assert!((99..=100).contains(&ttl), "TTL {ttl}");
    let usage: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&stored)
        .query(&mut conn)
        .expect("MEMORY USAGE");
    assert!(usage > 7, "MEMORY USAGE {usage}");

    let deleted: i64 = redis::cmd("DEL")
        .arg(&stored)
        .query(&mut conn)
        .expect("DEL");
    assert_eq!(deleted, 1);
    assert_eq!(get(&mut conn, "candidates", b"42"), None);
    assert_eq!(
        stat(&mut conn, "candidates", "entries"),
        0,
        "a plain DEL frees the entry"
    );
}

#[test]
fn entries_expire_after_their_ttl() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "session", b"short", "1", b"v").expect("set");
    set(&mut conn, "session", b"long", "100", b"v").expect("set");
    assert_eq!(
        get(&mut conn, "session", b"short").as_deref(),
        Some(&b"v"[..])
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        get(&mut conn, "session", b"short"),
        None,
        "expired entry reads as a miss"
    );
    assert_eq!(
        get(&mut conn, "session", b"long").as_deref(),
        Some(&b"v"[..])
    );
    wait_until(
        Duration::from_secs(5),
        "expired entry leaves the entry count",
        || stat(&mut conn, "session", "entries") == 1,
    );
    assert_eq!(dbsize(&mut conn), 1);
}

#[test]
fn nscache_del_counts_removed_entries() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "p", b"a", "60", b"1").expect("set");
    set(&mut conn, "p", b"b", "60", b"2").expect("set");
    let n: i64 = redis::cmd("NSCACHE.DEL")
        .arg("p")
        .arg("a")
        .arg("b")
        .arg("c")
        .query(&mut conn)
        .expect("del");
    assert_eq!(n, 2);
    assert_eq!(dbsize(&mut conn), 0);
    let s = stats(&mut conn, "p");
    assert_eq!(
        (s["deletes"].clone(), s["entries"].clone()),
        (Value::Int(2), Value::Int(0))
    );
}

#[test]
fn stored_name_keeps_the_cluster_slot_of_the_key() {
    let cluster = RedisCluster::start(1);
    let node = &cluster.nodes[0];
    let mut conn = node.conn();
    let keys: [&[u8]; 8] = [
        b"42",
        b"candidate:1001",
        b"user:{7}:profile",
        b"{tagged}",
        b"a{b",
        b"}{y}",
        b"\xff\x00bin",
        b"{{x}",
    ];
    for key in keys {
        set(&mut conn, "candidates", key, "60", b"v").expect("set on a cluster node");
        let stored: Vec<u8> = redis::cmd("NSCACHE.KEYNAME")
            .arg("candidates")
            .arg(key)
            .query(&mut conn)
            .expect("keyname");
        let slot_of = |conn: &mut Connection, k: &[u8]| -> i64 {
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(k)
                .query(conn)
                .expect("KEYSLOT")
        };
        let slot = slot_of(&mut conn, key);
        assert_eq!(
            slot_of(&mut conn, &stored),
            slot,
            "key {key:?} stored as {stored:?}"
        );
        let in_slot: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query(&mut conn)
            .expect("GETKEYSINSLOT");
        assert!(
            in_slot.contains(&stored),
            "entry of {key:?} is in slot {slot}"
        );
    }
    // Clients route on the user's key: argument 2 (COMMAND INFO's first,
    // last, step; the NOT_KEY key spec keeps it out of COMMAND GETKEYS).
    assert_eq!(key_range(&mut conn, "nscache.set"), (2, 2, 1));
    for refused in [&b"a}b"[..], b"x{}", b""] {
        let err = set(&mut conn, "candidates", refused, "60", b"v").expect_err("must be refused");
        assert!(
            err.to_string().contains("invalid key"),
            "key {refused:?}: {err}"
        );
    }
    assert_eq!(dbsize(&mut conn), keys.len() as i64);
}

#[test]
fn bad_input_gets_an_error_and_writes_nothing() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let long_prefix = "p".repeat(65);
    let cases: Vec<(Vec<&[u8]>, &str)> = vec![
        (
            vec![b"NSCACHE.SET", b"p", b"k", b"60"],
            "wrong number of arguments",
        ),
        (vec![b"NSCACHE.SET", b"p"], "wrong number of arguments"),
        (vec![b"NSCACHE.GET", b"p"], "wrong number of arguments"),
        (
            vec![b"NSCACHE.GET", b"p", b"k", b"extra"],
            "wrong number of arguments",
        ),
        (vec![b"NSCACHE.DEL", b"p"], "wrong number of arguments"),
        (
            vec![b"NSCACHE.STATS", b"p", b"q", b"r"],
            "wrong number of arguments",
        ),
        (vec![b"NSCACHE.STATS", b"p", b"BOGUS"], "unknown option"),
        (vec![b"NSCACHE.SET", b"p", b"k", b"0", b"v"], "invalid ttl"),
        (vec![b"NSCACHE.SET", b"p", b"k", b"-1", b"v"], "invalid ttl"),
        (
            vec![b"NSCACHE.SET", b"p", b"k", b"1.5", b"v"],
            "invalid ttl",
        ),
        (
            vec![b"NSCACHE.SET", b"p", b"k", b"abc", b"v"],
            "invalid ttl",
        ),
        (
            vec![b"NSCACHE.SET", b"p", b"k", b"99999999999999999999999", b"v"],
            "invalid ttl",
        ),
        (
            vec![b"NSCACHE.SET", b"", b"k", b"60", b"v"],
            "invalid prefix",
        ),
        (
            vec![b"NSCACHE.SET", b"bad prefix", b"k", b"60", b"v"],
            "invalid prefix",
        ),
        (
            vec![b"NSCACHE.SET", b"p:x", b"k", b"60", b"v"],
            "invalid prefix",
        ),
        (
            vec![b"NSCACHE.SET", long_prefix.as_bytes(), b"k", b"60", b"v"],
            "invalid prefix",
        ),
        (vec![b"NSCACHE.GET", b"p{", b"k"], "invalid prefix"),
        (
            vec![b"NSCACHE.SET", b"p", b"k", b"60", b"v", b"FOO"],
            "unknown option",
        ),
        (
            vec![b"NSCACHE.SET", b"p", b"k", b"60", b"v", b"NX", b"XX"],
            "not compatible",
        ),
        (
            vec![b"NSCACHE.SET", b"p", b"a}b", b"60", b"v"],
            "invalid key",
        ),
        (vec![b"NSCACHE.DEL", b"p", b"ok", b"a}b"], "invalid key"),
    ];
    for (argv, expected) in &cases {
        let mut cmd = redis::cmd(std::str::from_utf8(argv[0]).expect("ascii"));
        for arg in &argv[1..] {
            cmd.arg(*arg);
        }
        let err = cmd
            .query::<Value>(&mut conn)
            .expect_err(&format!("{argv:?} must fail"));
        assert!(err.to_string().contains(expected), "{argv:?}: {err}");
    }
    assert_eq!(dbsize(&mut conn), 0, "no bad command wrote a key");
    assert_eq!(stat(&mut conn, "p", "sets"), 0);

    // A plain key at an entry's stored name is another type: WRONGTYPE, untouched.
    let _: () = redis::cmd("SET")
        .arg("p:{plain}")
        .arg("x")
        .query(&mut conn)
        .expect("SET");
    for argv in [
        vec!["NSCACHE.GET", "p", "plain"],
        vec!["NSCACHE.SET", "p", "plain", "60", "v"],
        vec!["NSCACHE.DEL", "p", "other", "plain"],
    ] {
        let err = redis::cmd(argv[0])
            .arg(&argv[1..])
            .query::<Value>(&mut conn)
            .expect_err("WRONGTYPE");
        assert_eq!(err.code(), Some("WRONGTYPE"), "{argv:?}: {err}");
    }
    let still: String = redis::cmd("GET")
        .arg("p:{plain}")
        .query(&mut conn)
        .expect("GET");
    assert_eq!(still, "x");
    assert_eq!(dbsize(&mut conn), 1);
}

#[test]
fn nx_and_xx_follow_entry_existence() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    assert_eq!(
        redis::cmd("NSCACHE.SET")
            .arg(&["p", "k", "60", "v1", "XX"])
            .query::<Value>(&mut conn)
            .expect("xx"),
        Value::Nil
    );
    assert_eq!(
        redis::cmd("NSCACHE.SET")
            .arg(&["p", "k", "60", "v1", "NX"])
            .query::<Value>(&mut conn)
            .expect("nx"),
        Value::Okay
    );
    assert_eq!(
        redis::cmd("NSCACHE.SET")
            .arg(&["p", "k", "60", "v2", "nx"])
            .query::<Value>(&mut conn)
            .expect("nx"),
        Value::Nil
    );
    assert_eq!(
        redis::cmd("NSCACHE.SET")
            .arg(&["p", "k", "60", "v3", "xx"])
            .query::<Value>(&mut conn)
            .expect("xx"),
        Value::Okay
    );
    assert_eq!(get(&mut conn, "p", b"k").as_deref(), Some(&b"v3"[..]));
    assert_eq!(stat(&mut conn, "p", "sets"), 2);
    assert_eq!(
        stat(&mut conn, "p", "entries"),
        1,
        "overwrite keeps one entry"
    );
}

#[test]
fn keys_that_share_a_stored_name_never_read_each_other() {
    // `a` is stored as `p:{a}`, and so is `{a}` (which carries its own tag).
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "p", b"a", "60", b"plain").expect("set");
    assert_eq!(get(&mut conn, "p", b"{a}"), None);
    set(&mut conn, "p", b"{a}", "60", b"tagged").expect("set");
    assert_eq!(get(&mut conn, "p", b"a"), None);
    assert_eq!(get(&mut conn, "p", b"{a}").as_deref(), Some(&b"tagged"[..]));
}

fn keyname(conn: &mut Connection, prefix: &str, key: &[u8]) -> Vec<u8> {
    redis::cmd("NSCACHE.KEYNAME")
        .arg(prefix)
        .arg(key)
        .query(conn)
        .expect("NSCACHE.KEYNAME")
}

fn config_set(conn: &mut Connection, name: &str, value: &str) {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(conn)
        .expect("CONFIG SET");
}

fn wait_link_up(replica: &mut Connection) {
    wait_until(Duration::from_secs(30), "replica link up", || {
        info_field(replica, "replication", "master_link_status").as_deref() == Some("up")
    });
}

/// Both digests taken at one replication offset: the primary's digest between two
/// equal readings of its offset, the replica's once it has processed exactly
/// that offset. Sound while the primary's state changes (the sweep).
fn digests_at_one_offset(p: &mut Connection, r: &mut Connection) -> (String, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let at = repl_offset(p, "master_repl_offset");
        let primary = digest(p);
        if repl_offset(p, "master_repl_offset") != at {
            continue;
        }
        let caught_up = std::time::Instant::now() + Duration::from_secs(10);
        while repl_offset(r, "slave_repl_offset") < at && std::time::Instant::now() < caught_up {
            std::thread::sleep(Duration::from_millis(10));
        }
        let before = repl_offset(r, "slave_repl_offset");
        let replica = digest(r);
        if before == at && repl_offset(r, "slave_repl_offset") == at {
            return (primary, replica);
        }
    }
    panic!("the replica never reached the primary's replication offset")
}

#[test]
fn replica_and_restart_keep_absolute_expiry() {
    let mut primary =
        RedisServer::start_with(&["--appendonly", "yes", "--repl-diskless-sync-delay", "0"]);
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    wait_link_up(&mut r);

    // Entries of both key forms, binary keys and values, and very different TTLs.
    let entries: [(&[u8], &str, &[u8]); 5] = [
        (b"k", "100", b"v"),
        (b"{tag}", "1000", b"tagged"),
        (b"bin\0\xff", "86400", b"\0\xffvalue\r\n"),
        (b"user:{7}:profile", "3153600000", b"{\"id\":7}"),
        (b"empty", "700", b""),
    ];
    for (key, ttl, value) in entries {
        assert_eq!(set(&mut p, "p", key, ttl, value).expect("set"), Value::Okay);
    }
    // A namespace invalidated with many entries in it, swept slowly so that the
    // replica holds invalidated entries for a while, then written again.
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("NSCACHE.SET")
            .arg("inv")
            .arg(format!("key{i}"))
            .arg(600)
            .arg("old")
            .ignore();
    }
    let () = pipe.query(&mut p).expect("pipelined NSCACHE.SET");
    config_set(&mut p, "nscache.sweep-budget", "10");
    let invalidated: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("inv")
        .query(&mut p)
        .expect("INVALIDATE");
    assert_eq!(invalidated, 2000);
    set(&mut p, "inv", b"after", "600", b"new").expect("set after INVALIDATE");
    set(&mut p, "inv", b"key7", "600", b"rewritten").expect("rewrite after INVALIDATE");
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query(&mut p)
        .expect("WAIT");
    assert_eq!(acked, 1, "the replica acknowledged the writes");

    // Entries and their absolute expiry replicate.
    for (key, ttl, value) in entries {
        assert_eq!(get(&mut r, "p", key).as_deref(), Some(value), "{key:?}");
        let stored = keyname(&mut p, "p", key);
        let at = pexpiretime(&mut p, &stored);
        assert!(at > 0, "{key:?} has an expiry");
        assert_eq!(pexpiretime(&mut r, &stored), at, "{key:?}: same expiry");
        let ttl_left: i64 = redis::cmd("NSCACHE.TTL")
            .arg("p")
            .arg(key)
            .query(&mut r)
            .expect("NSCACHE.TTL");
        let ttl: i64 = ttl.parse().expect("ttl");
        assert!(
            (ttl - 10..=ttl).contains(&ttl_left),
            "{key:?}: replica's NSCACHE.TTL {ttl_left}, set with {ttl}"
        );
    }
    // The generation replicates: the replica still holds invalidated entries
    // (the primary sweeps them at 10 keys per tick) and reads them as misses,
    // while entries written after INVALIDATE are hits.
    let mut stale_present = 0;
    for i in (0..2000).filter(|i| *i != 7) {
        let key = format!("key{i}");
        assert_eq!(
            get(&mut r, "inv", key.as_bytes()),
            None,
            "{key} invalidated"
        );
        let present: i64 = redis::cmd("EXISTS")
            .arg(format!("inv:{{{key}}}"))
            .query(&mut r)
            .expect("EXISTS");
        stale_present += present;
    }
    assert!(
        stale_present > 0,
        "the replica held no invalidated entry: the test checked deletes, not generations"
    );
    assert_eq!(get(&mut r, "inv", b"after").as_deref(), Some(&b"new"[..]));
    assert_eq!(
        get(&mut r, "inv", b"key7").as_deref(),
        Some(&b"rewritten"[..])
    );
    // A replica's reads of invalidated entries leave them to the primary.
    assert!(dbsize(&mut r) > 3, "the replica deleted nothing by itself");
    let (dp, dr) = digests_at_one_offset(&mut p, &mut r);
    assert_eq!(dr, dp, "replica digest while invalidated entries remain");

    // Once the sweep is done both sides agree again, without the old entries.
    config_set(&mut p, "nscache.sweep-budget", "1000");
    wait_until(Duration::from_secs(20), "sweep done", || sweep_idle(&mut p));
    let (dp, dr) = digests_at_one_offset(&mut p, &mut r);
    assert_eq!(dr, dp, "replica digest after the sweep");
    assert_eq!(dbsize(&mut r), 7, "5 entries of p, 2 of inv");
    assert_eq!(stat(&mut r, "inv", "entries"), 2);
    assert_eq!(stat(&mut p, "inv", "entries"), 2);

    // A restart replays the AOF: same values, same absolute expiry, same digest,
    // and the replica follows the restarted primary.
    let expiry: Vec<i64> = entries
        .iter()
        .map(|(key, _, _)| {
            let stored = keyname(&mut p, "p", key);
            pexpiretime(&mut p, &stored)
        })
        .collect();
    let before = digest(&mut p);
    primary.restart();
    let mut p = primary.conn();
    for ((key, _, value), at) in entries.iter().zip(&expiry) {
        assert_eq!(get(&mut p, "p", key).as_deref(), Some(*value), "{key:?}");
        let stored = keyname(&mut p, "p", key);
        assert_eq!(
            pexpiretime(&mut p, &stored),
            *at,
            "{key:?}: AOF replay keeps the absolute expiry"
        );
    }
    assert_eq!(get(&mut p, "inv", b"key8"), None, "still invalidated");
    assert_eq!(
        get(&mut p, "inv", b"key7").as_deref(),
        Some(&b"rewritten"[..])
    );
    wait_until(Duration::from_secs(20), "sweep done after restart", || {
        sweep_idle(&mut p)
    });
    assert_eq!(digest(&mut p), before, "same data after AOF replay");
    wait_link_up(&mut r);
    let (dp, dr) = digests_at_one_offset(&mut p, &mut r);
    assert_eq!(dr, dp, "replica digest after the primary restarted");
    assert_eq!(dp, before);
}

fn memory_usage(conn: &mut Connection, stored: &[u8]) -> i64 {
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(stored)
        .arg("SAMPLES")
        .arg(0)
        .query(conn)
        .expect("MEMORY USAGE")
}

/// Stored names of every entry, with SCAN.
fn entry_names(conn: &mut Connection) -> Vec<Vec<u8>> {
    redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("TYPE")
        .arg("nscache-e")
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(conn)
        .expect("SCAN")
        .collect::<Result<_, _>>()
        .expect("SCAN item")
}

/// jemalloc's size classes up to `max` for an 8- and a 16-byte quantum together.
fn size_classes(max: usize) -> Vec<usize> {
    let mut classes: Vec<usize> = (1..=8).map(|i| i * 8).collect();
    let mut base = 64;
    while base < max {
        let step = base / 4;
        classes.extend((1..=4).map(|i| base + i * step));
        base *= 2;
    }
    classes
}

/// A key whose stored name in namespace `prefix` is `stored_len` bytes long,
/// wrapped (`prefix:{key}`) or carrying its own tag (`prefix:...{t}`).
fn key_of_stored_len(prefix: &str, stored_len: usize, tagged: bool) -> Vec<u8> {
    if tagged {
        let len = stored_len - prefix.len() - 1;
        let mut key = b"{t}".to_vec();
        key.resize(len, b'k');
        key
    } else {
        vec![b'k'; stored_len - prefix.len() - 3]
    }
}

/// Checks that writing, overwriting and deleting each `(prefix, key, value
/// size)` moves `bytes` by exactly the `MEMORY USAGE` of the key; returns the
/// cases that did not, described.
fn bytes_mismatches(conn: &mut Connection, cases: &[(String, Vec<u8>, usize)]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (prefix, key, value_len) in cases {
        let value = vec![b'v'; *value_len];
        let before = stat(conn, prefix, "bytes");
        set(conn, prefix, key, "600", &value).expect("set");
        let stored = keyname(conn, prefix, key);
        let usage = memory_usage(conn, &stored);
        let charged = stat(conn, prefix, "bytes") - before;
        if charged != usage {
            wrong.push(format!(
                "{prefix}: stored name {} bytes, value {value_len} bytes: bytes +{charged}, MEMORY USAGE {usage}",
                stored.len()
            ));
        }
        // Overwriting with another size charges the difference.
        let other = vec![b'w'; value_len / 2 + 17];
        set(conn, prefix, key, "600", &other).expect("overwrite");
        let usage_other = memory_usage(conn, &stored);
        let charged = stat(conn, prefix, "bytes") - before;
        if charged != usage_other {
            wrong.push(format!(
                "{prefix}: stored name {} bytes, value {value_len} overwritten with {} bytes: bytes +{charged}, MEMORY USAGE {usage_other}",
                stored.len(),
                other.len()
            ));
        }
        let deleted: i64 = redis::cmd("NSCACHE.DEL")
            .arg(prefix.as_str())
            .arg(key.as_slice())
            .query(conn)
            .expect("NSCACHE.DEL");
        assert_eq!(deleted, 1);
        let left = stat(conn, prefix, "bytes") - before;
        if left != 0 {
            wrong.push(format!(
                "{prefix}: stored name {} bytes, value {value_len}: {left} bytes left after DEL",
                stored.len()
            ));
        }
    }
    wrong
}

/// Every (key, value) shape the bytes tests cover: value sizes on both sides of
/// every allocator size class up to 1 MiB (the entry adds a 24-byte header), and
/// stored-name lengths on both sides of the sds header and size-class limits, in
/// both key forms and with 1- and 64-character prefixes.
fn bytes_cases() -> Vec<(String, Vec<u8>, usize)> {
    const HEADER: usize = 24;
    let long_prefix = "x".repeat(64);
    let mut cases = Vec::new();
    let mut value_sizes: Vec<usize> = vec![0, 1, 2, 1 << 20];
    for class in size_classes(2 << 20) {
        // The largest value in the class, and the smallest of the next one.
        for len in [class.checked_sub(HEADER), (class + 1).checked_sub(HEADER)]
            .into_iter()
            .flatten()
        {
            if len <= (1 << 20) + 1 {
                value_sizes.push(len);
            }
        }
    }
    value_sizes.sort_unstable();
    value_sizes.dedup();
    for &value_len in &value_sizes {
        cases.push(("b".to_string(), b"k".to_vec(), value_len));
        if value_len < 70_000 {
            cases.push(("b".to_string(), b"{t}k".to_vec(), value_len));
            cases.push((long_prefix.clone(), b"k".to_vec(), value_len));
        }
    }
    // sds headers change at 32, 256 and 65536 bytes; classes are around 16-byte steps.
    let mut stored_lens: Vec<usize> = (5..=140).collect();
    stored_lens.extend([
        159, 160, 161, 191, 192, 250, 251, 252, 253, 254, 255, 256, 257, 258, 300, 315, 316, 1000,
        1018, 1019, 4000, 65_520, 65_530, 65_531, 65_534, 65_535, 65_536, 65_537, 70_000,
    ]);
    for &stored_len in &stored_lens {
        for value_len in [0, 9, 100] {
            cases.push((
                "b".to_string(),
                key_of_stored_len("b", stored_len, false),
                value_len,
            ));
            if stored_len >= 5 {
                cases.push((
                    "b".to_string(),
                    key_of_stored_len("b", stored_len, true),
                    value_len,
                ));
            }
            if stored_len >= 68 {
                cases.push((
                    long_prefix.clone(),
                    key_of_stored_len(&long_prefix, stored_len, false),
                    value_len,
                ));
            }
        }
    }
    cases
}

/// `bytes` equals the sum of `MEMORY USAGE` over the namespace's keys.
fn assert_bytes_equal_memory_usage(conn: &mut Connection, prefixes: &[&str], when: &str) {
    let names = entry_names(conn);
    for prefix in prefixes {
        let own = format!("{prefix}:");
        let usage: i64 = names
            .iter()
            .filter(|n| n.starts_with(own.as_bytes()))
            .map(|n| memory_usage(conn, n))
            .sum();
        assert_eq!(
            stat(conn, prefix, "bytes"),
            usage,
            "{when}: bytes of {prefix} vs the sum of MEMORY USAGE of its keys"
        );
    }
}

#[test]
fn stats_bytes_equal_memory_usage_exactly() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let long_prefix = "x".repeat(64);
    let prefixes = ["b", long_prefix.as_str()];

    let cases = bytes_cases();
    let wrong = bytes_mismatches(&mut conn, &cases);
    assert!(
        wrong.is_empty(),
        "{} of {} cases charge other than MEMORY USAGE:\n{}",
        wrong.len(),
        3 * cases.len(),
        wrong.join("\n")
    );

    // All at once, through COPY, RESTORE and a reload of the RDB.
    let mut pipe = redis::pipe();
    for (prefix, key, value_len) in &cases {
        pipe.cmd("NSCACHE.SET")
            .arg(prefix.as_str())
            .arg(key.as_slice())
            .arg(600)
            .arg(vec![b'v'; *value_len])
            .ignore();
    }
    let () = pipe.query(&mut conn).expect("pipelined NSCACHE.SET");
    assert_bytes_equal_memory_usage(&mut conn, &prefixes, "after SET");
    for (from, to) in [
        ("b:{k}", "b:{copy-with-a-longer-name}"),
        ("b:{t}k", "b:{c}"),
    ] {
        let copied: i64 = redis::cmd("COPY")
            .arg(from)
            .arg(to)
            .query(&mut conn)
            .expect("COPY");
        assert_eq!(copied, 1, "COPY {from}");
        let dump: Vec<u8> = redis::cmd("DUMP").arg(from).query(&mut conn).expect("DUMP");
        let () = redis::cmd("RESTORE")
            .arg(format!("{to}-restored-under-a-longer-name"))
            .arg(0)
            .arg(dump)
            .query(&mut conn)
            .expect("RESTORE");
    }
    assert_bytes_equal_memory_usage(&mut conn, &prefixes, "after COPY and RESTORE");
    let () = redis::cmd("DEBUG")
        .arg("RELOAD")
        .query(&mut conn)
        .expect("DEBUG RELOAD");
    assert_bytes_equal_memory_usage(&mut conn, &prefixes, "after DEBUG RELOAD");
    let () = redis::cmd("FLUSHALL").query(&mut conn).expect("FLUSHALL");
    for prefix in prefixes {
        assert_eq!(
            stat(&mut conn, prefix, "bytes"),
            0,
            "{prefix} after FLUSHALL"
        );
    }
}

#[test]
fn stats_bytes_equal_memory_usage_exactly_in_cluster_mode() {
    // Cluster mode adds per-key slot metadata to MEMORY USAGE.
    let cluster = RedisCluster::start(1);
    let mut conn = cluster.nodes[0].conn();
    let cases: Vec<(String, Vec<u8>, usize)> = bytes_cases()
        .into_iter()
        .filter(|(_, key, value_len)| key.len() < 300 && *value_len < 5000)
        .collect();
    let wrong = bytes_mismatches(&mut conn, &cases);
    assert!(
        wrong.is_empty(),
        "{} of {} cases charge other than MEMORY USAGE:\n{}",
        wrong.len(),
        3 * cases.len(),
        wrong.join("\n")
    );
}
