//! Namespace lifecycle under hostile load, against real servers: what making
//! room costs at the cap, and forgetting racing frees on the lazy-free thread.

use cachetx_tests::nscache::{config_set, get, set};
use cachetx_tests::RedisServer;
use redis::Connection;

/// `namespaces` from `INFO nscache`.
fn namespaces(conn: &mut Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("nscache").query(conn).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("nscache_namespaces:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no namespaces line in INFO nscache:\n{info}"))
}

fn digest(conn: &mut Connection) -> String {
    redis::cmd("DEBUG")
        .arg("DIGEST")
        .query(conn)
        .expect("DEBUG DIGEST")
}

fn wait_replica(primary: &mut Connection) {
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query(primary)
        .expect("WAIT");
    assert_eq!(acked, 1, "the replica caught up");
}

/// Microseconds per call of `command` from `INFO commandstats`.
fn usec_per_call(conn: &mut Connection, command: &str) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:");
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {command} in INFO commandstats:\n{info}"));
    line.split(',')
        .find_map(|f| f.strip_prefix("usec_per_call="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no usec_per_call in {line}"))
}

fn reset_stats(conn: &mut Connection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(conn)
        .expect("CONFIG RESETSTAT");
}

/// `NSCACHE.GET prefix k` for each prefix, pipelined.
fn read_prefixes(conn: &mut Connection, prefixes: impl Iterator<Item = String>) {
    let mut pipe = redis::pipe();
    for prefix in prefixes {
        pipe.cmd("NSCACHE.GET").arg(prefix).arg("k").ignore();
    }
    let _: () = pipe.query(conn).expect("pipelined reads");
}

/// At the cap, each read of an unknown prefix forgets an empty namespace to make
/// room. Choosing it must not scan every namespace: with a cap in the
/// thousands, a read-only client sending fresh prefixes made each of its reads
/// cost O(cap) on the main thread (1.6 ms at 50,000), stalling every client.
#[test]
fn making_room_at_the_cap_does_not_scan_every_namespace() {
    const CAP: usize = 10_000;
    let cap = CAP.to_string();
    let server = RedisServer::start_with_module_args(&["max-namespaces", &cap, "topk", "1"]);
    let mut conn = server.conn();
    // Some namespaces of a working application hold entries.
    for i in 0..50 {
        let _: () = redis::cmd("NSCACHE.SET")
            .arg(format!("app{i}"))
            .arg("k")
            .arg(600)
            .arg("v")
            .query(&mut conn)
            .expect("SET");
    }
    read_prefixes(&mut conn, (0..CAP).map(|i| format!("fill{i}")));

    // Baseline: reads of namespaces that exist, alternating so each one is a
    // registry lookup.
    reset_stats(&mut conn);
    read_prefixes(&mut conn, (0..2000).map(|i| format!("app{}", i % 50)));
    let known = usec_per_call(&mut conn, "nscache.get");

    // Fresh prefixes at the cap: each one makes room.
    reset_stats(&mut conn);
    read_prefixes(&mut conn, (0..2000).map(|i| format!("junk{i}")));
    let fresh = usec_per_call(&mut conn, "nscache.get");
    eprintln!("per read: {known} µs of a known prefix, {fresh} µs of a fresh one at the cap");

    let info: String = redis::cmd("INFO")
        .arg("nscache")
        .query(&mut conn)
        .expect("INFO");
    assert!(
        info.contains(&format!("nscache_namespaces:{CAP}\r")),
        "{}",
        &info[..200]
    );
    // Creating and forgetting a namespace (~21 KiB of statistics) costs a few
    // µs more than a lookup; a scan of 10,000 costs ~100 µs.
    assert!(
        fresh < 5.0 * known + 20.0,
        "a read of a fresh prefix at the cap costs {fresh} µs, a read of a known one {known} µs"
    );
    // The application's namespaces were never forgotten.
    for i in 0..50 {
        let v: Option<String> = redis::cmd("NSCACHE.GET")
            .arg(format!("app{i}"))
            .arg("k")
            .query(&mut conn)
            .expect("GET");
        assert_eq!(v.as_deref(), Some("v"));
    }
}

/// Replicated writes and an AOF replay are never refused by the cap, but they
/// must still make room from empty namespaces: the primary forgets its empty
/// namespaces as tenants come and go, and a replica that kept one for every
/// prefix its primary ever named grew without bound (~21 KiB each), as did a
/// server replaying a long AOF at restart.
#[test]
fn a_replica_and_an_aof_replay_keep_their_namespaces_within_the_cap() {
    let mut primary =
        RedisServer::start_with_args(&["--appendonly", "yes"], &["max-namespaces", "50"]);
    let replica = RedisServer::start_replica_of(&primary, &[]);
    let (mut p, mut r) = (primary.conn(), replica.conn());
    config_set(&mut r, "nscache.max-namespaces", "50");
    for i in 0..10 {
        set(&mut p, &format!("app{i}"), "k", 600, &format!("v{i}"));
    }
    // Tenants that come and go: invalidated, or written and deleted.
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("NSCACHE.INVALIDATE")
            .arg(format!("gone{i}"))
            .ignore();
        pipe.cmd("NSCACHE.SET")
            .arg(format!("brief{i}"))
            .arg("k")
            .arg(600)
            .arg("v")
            .ignore();
        pipe.cmd("NSCACHE.DEL")
            .arg(format!("brief{i}"))
            .arg("k")
            .ignore();
    }
    let _: () = pipe.query(&mut p).expect("churn");
    wait_replica(&mut p);
    assert!(
        namespaces(&mut p) <= 50,
        "{} on the primary",
        namespaces(&mut p)
    );
    assert!(
        namespaces(&mut r) <= 50,
        "{} namespaces on the replica, cap 50",
        namespaces(&mut r)
    );
    assert_eq!(digest(&mut p), digest(&mut r));
    for i in 0..10 {
        assert_eq!(
            get(&mut r, &format!("app{i}"), "k").as_deref(),
            Some(format!("v{i}").as_str())
        );
    }

    // The AOF holds the whole history; replaying it stays within the cap too.
    primary.restart();
    let mut p = primary.conn();
    assert!(
        namespaces(&mut p) <= 50,
        "{} namespaces after replaying the AOF, cap 50",
        namespaces(&mut p)
    );
    for i in 0..10 {
        assert_eq!(
            get(&mut p, &format!("app{i}"), "k").as_deref(),
            Some(format!("v{i}").as_str())
        );
    }
}
