//! The read/write fast path of issue 8 against a real server: commands read
//! Redis's argument vector in place (dispatch.rs), stored names are built on
//! the stack up to 128 bytes and on the heap beyond, the previous command's
//! namespace is reused without validating or looking its prefix up again,
//! keys without braces skip the hash-tag search, latencies come from the TSC,
//! and SET's PEXPIREAT is replicated with the time as a buffer. Each branch
//! that leaves the fast path has a case here.

use std::time::Duration;

use cachetx_tests::nscache::{get, pexpiretime, set, stats, wait_lazy_free};
use cachetx_tests::RedisServer;
use redis::{Connection, Value};

fn keyname(conn: &mut Connection, prefix: &str, key: &[u8]) -> redis::RedisResult<Vec<u8>> {
    redis::cmd("NSCACHE.KEYNAME")
        .arg(prefix)
        .arg(key)
        .query(conn)
}

fn set_bytes(conn: &mut Connection, prefix: &str, key: &[u8], value: &[u8]) {
    let reply: Value = redis::cmd("NSCACHE.SET")
        .arg(prefix)
        .arg(key)
        .arg(600)
        .arg(value)
        .query(conn)
        .expect("NSCACHE.SET");
    assert!(
        matches!(reply, Value::Okay) || reply == Value::SimpleString("OK".into()),
        "{reply:?}"
    );
}

fn get_bytes(conn: &mut Connection, prefix: &str, key: &[u8]) -> Option<Vec<u8>> {
    redis::cmd("NSCACHE.GET")
        .arg(prefix)
        .arg(key)
        .query(conn)
        .expect("NSCACHE.GET")
}

/// The stored name the SPEC 2.2 rules give (first `{`, then the first `}`
/// after it, a non-empty tag), or None for a key that must be refused.
fn expected_name(prefix: &str, key: &[u8]) -> Option<Vec<u8>> {
    let tagged = key.iter().position(|&b| b == b'{').is_some_and(|open| {
        key[open + 1..]
            .iter()
            .position(|&b| b == b'}')
            .is_some_and(|close| close > 0)
    });
    let mut name = format!("{prefix}:").into_bytes();
    if tagged {
        name.extend_from_slice(key);
    } else if key.is_empty() || key.contains(&b'}') {
        return None;
    } else {
        name.push(b'{');
        name.extend_from_slice(key);
        name.push(b'}');
    }
    Some(name)
}

#[test]
fn stored_names_longer_than_the_stack_buffer_round_trip() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    // 64 is the longest prefix; names of 127, 128, 129 and 300 bytes, wrapped
    // and tagged, straddle the 128-byte stack buffer.
    let prefix = "p".repeat(64);
    for name_len in [127usize, 128, 129, 300, 5000] {
        for tagged in [false, true] {
            let key_len = name_len - prefix.len() - if tagged { 1 } else { 3 };
            let mut key = vec![b'k'; key_len];
            if tagged {
                key[0] = b'{';
                key[2] = b'}';
            }
            key[key_len - 1] = b'\0';
            let name = keyname(&mut conn, &prefix, &key).expect("KEYNAME");
            assert_eq!(name.len(), name_len);
            assert_eq!(Some(name.clone()), expected_name(&prefix, &key));
            let value = format!("v{name_len}{tagged}").into_bytes();
            set_bytes(&mut conn, &prefix, &key, &value);
            assert_eq!(get_bytes(&mut conn, &prefix, &key), Some(value.clone()));
            let fetched: Vec<Value> = redis::cmd("NSCACHE.FETCH")
                .arg(&prefix)
                .arg(&key)
                .arg(1000)
                .query(&mut conn)
                .expect("FETCH");
            assert_eq!(fetched[1], Value::BulkString(value), "HIT of {name_len}");
            assert!(pexpiretime(&mut conn, &name) > 0, "stored under its name");
            let deleted: i64 = redis::cmd("NSCACHE.DEL")
                .arg(&prefix)
                .arg(&key)
                .query(&mut conn)
                .expect("DEL");
            assert_eq!(deleted, 1);
        }
    }
}

#[test]
fn braces_anywhere_in_short_and_long_keys_follow_the_tag_rules() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    // The brace scan reads eight bytes at a time: a brace at every position
    // of keys around the word size, alone and in pairs.
    for len in [1usize, 7, 8, 9, 12, 16, 17, 40] {
        let base = vec![b'x'; len];
        let mut keys = vec![base.clone()];
        for at in 0..len {
            for brace in [b'{', b'}'] {
                let mut key = base.clone();
                key[at] = brace;
                keys.push(key);
            }
            for close in at + 1..len {
                let mut key = base.clone();
                key[at] = b'{';
                key[close] = b'}';
                keys.push(key);
            }
        }
        for key in keys {
            match expected_name("ns", &key) {
                Some(name) => {
                    assert_eq!(keyname(&mut conn, "ns", &key).ok(), Some(name), "{key:?}");
                    set_bytes(&mut conn, "ns", &key, &key);
                    assert_eq!(get_bytes(&mut conn, "ns", &key), Some(key.clone()));
                }
                None => {
                    let err = keyname(&mut conn, "ns", &key).expect_err("refused");
                    assert!(err.to_string().contains("invalid key"), "{key:?}: {err}");
                    let err = redis::cmd("NSCACHE.GET")
                        .arg("ns")
                        .arg(&key)
                        .query::<Value>(&mut conn)
                        .expect_err("GET refused");
                    assert!(err.to_string().contains("invalid key"), "{key:?}: {err}");
                }
            }
        }
    }
}

#[test]
fn the_namespace_of_the_previous_command_only_serves_its_own_name() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "abc", "k", 600, "in-abc");
    // Right after a command on `abc`, names that share bytes with it are
    // still other namespaces, and invalid ones are still refused.
    for other in ["ab", "abcd", "ABC", "abc.", "x"] {
        set(&mut conn, "abc", "k", 600, "in-abc");
        assert_eq!(get(&mut conn, other, "k"), None, "{other}");
    }
    for invalid in [&b"ab c"[..], b"abc\0", b"", b"a:b", &[b'a'; 65]] {
        set(&mut conn, "abc", "k", 600, "in-abc");
        let err = redis::cmd("NSCACHE.GET")
            .arg(invalid)
            .arg("k")
            .query::<Value>(&mut conn)
            .expect_err("refused");
        assert!(
            err.to_string().contains("invalid prefix"),
            "{invalid:?}: {err}"
        );
    }
    assert_eq!(get(&mut conn, "abc", "k").as_deref(), Some("in-abc"));
    // Alternating namespaces count in their own statistics.
    for _ in 0..10 {
        assert_eq!(get(&mut conn, "abc", "k").as_deref(), Some("in-abc"));
        assert_eq!(get(&mut conn, "ab", "k"), None);
    }
    let (abc, ab) = (stats(&mut conn, "abc"), stats(&mut conn, "ab"));
    assert_eq!((abc.hits, abc.misses), (11, 0));
    assert_eq!((ab.hits, ab.misses), (0, 11));
}

#[test]
fn a_forgotten_namespace_is_not_served_from_the_cache() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "gone", "k", 600, "v");
    assert_eq!(get(&mut conn, "gone", "k").as_deref(), Some("v"));
    let _: i64 = redis::cmd("NSCACHE.DEL")
        .arg("gone")
        .arg("k")
        .query(&mut conn)
        .expect("DEL");
    wait_lazy_free(&mut conn, Duration::from_secs(10));
    let _: () = redis::cmd("NSCACHE.FORGET")
        .arg("gone")
        .query(&mut conn)
        .expect("FORGET");
    // The next command names the forgotten (freed) namespace: it must find a
    // fresh one, not the cached pointer.
    assert_eq!(get(&mut conn, "gone", "k"), None);
    set(&mut conn, "gone", "k", 600, "again");
    assert_eq!(get(&mut conn, "gone", "k").as_deref(), Some("again"));
    let s = stats(&mut conn, "gone");
    assert_eq!((s.sets, s.hits, s.misses, s.deletes), (1, 1, 1, 0));
}

#[test]
fn latencies_measured_by_the_stopwatch_are_sane() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    for i in 0..2000 {
        set(&mut conn, "lat", &format!("k{i}"), 600, "v");
        assert_eq!(
            get(&mut conn, "lat", &format!("k{i}")).as_deref(),
            Some("v")
        );
    }
    let s = stats(&mut conn, "lat");
    for (what, l) in [("read", &s.read_latency_us), ("write", &s.write_latency_us)] {
        assert!(l.p50 >= 1, "{what}: something was measured: {l:?}");
        assert!(l.p50 <= l.p99 && l.p99 <= l.max, "{what}: ordered: {l:?}");
        // A command of this module takes microseconds; a broken tick rate
        // would show as milliseconds or seconds.
        assert!(l.p50 < 1000, "{what}: p50 under 1 ms: {l:?}");
        assert!(l.max < 10_000_000, "{what}: max under 10 s: {l:?}");
    }
}

#[test]
fn set_replies_ok_in_resp2_and_resp3_and_replicates_its_absolute_expiry() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary, &[]);
    let mut p2 = primary.conn();
    let mut p3 = primary.conn_resp3();
    for (conn, proto) in [(&mut p2, "resp2"), (&mut p3, "resp3")] {
        let reply: Value = redis::cmd("NSCACHE.SET")
            .arg("r")
            .arg(proto)
            .arg(600)
            .arg("v")
            .query(conn)
            .expect("SET");
        assert!(
            matches!(reply, Value::Okay) || reply == Value::SimpleString("OK".into()),
            "{proto}: {reply:?}"
        );
    }
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut p2)
        .expect("WAIT");
    let mut r = replica.conn();
    for key in ["resp2", "resp3"] {
        let stored = format!("r:{{{key}}}");
        let at = pexpiretime(&mut p2, &stored);
        assert!(at > 0);
        assert_eq!(
            pexpiretime(&mut r, &stored),
            at,
            "{key}: same absolute expiry"
        );
    }
}
