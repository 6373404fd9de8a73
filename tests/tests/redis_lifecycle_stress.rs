//! Namespace lifecycle under hostile load, against real servers: what making
//! room costs at the cap, and forgetting racing frees on the lazy-free thread.

use cachetx_tests::RedisServer;
use redis::Connection;

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
