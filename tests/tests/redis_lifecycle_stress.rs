//! Namespace lifecycle under hostile load, against real servers: what making
//! room costs at the cap, and forgetting racing frees on the lazy-free thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachetx_tests::nscache::{config_set, digest, get, namespaces, set, stats, wait_lazy_free};
use cachetx_tests::{wait_until, RedisServer};
use redis::Connection;

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

/// Entries and `MEMORY USAGE` bytes per prefix, from the keyspace of every
/// database (the test never renames an entry out of its prefix).
fn keyspace_by_prefix(conn: &mut Connection) -> BTreeMap<String, (u64, u64)> {
    let mut found = BTreeMap::new();
    for db in 0..16 {
        let _: () = redis::cmd("SELECT").arg(db).query(conn).expect("SELECT");
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(conn).expect("KEYS");
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query(conn).expect("TYPE");
            if kind != "nscache-e" {
                continue;
            }
            let usage: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .arg("SAMPLES")
                .arg(0)
                .query(conn)
                .expect("MEMORY USAGE");
            let prefix = key.split(':').next().unwrap_or_default().to_string();
            let e = found.entry(prefix).or_insert((0, 0));
            e.0 += 1;
            e.1 += usage;
        }
    }
    let _: () = redis::cmd("SELECT").arg(0).query(conn).expect("SELECT");
    found
}

/// FORGET, FLUSHALL/FLUSHDB ASYNC (entries freed on the lazy-free thread),
/// writes of large values in two databases, COPY and MOVE between them,
/// SWAPDB, INVALIDATE, reads of fresh prefixes at a small cap and a lowered
/// cap, from concurrent clients: the server survives, every namespace's
/// `entries` and `bytes` match the keyspace once lazy freeing is done, and a
/// namespace the keyspace no longer uses can be forgotten.
#[test]
fn forgetting_races_lazy_free_and_writes_and_counts_stay_exact() {
    let server = RedisServer::start_with_args(
        &["--lazyfree-lazy-user-flush", "yes"],
        &["max-namespaces", "8"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let prefixes: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    let workers: Vec<_> = (0..4u64)
        .map(|seed| {
            let (client, stop, prefixes) = (server.client(), stop.clone(), prefixes.clone());
            std::thread::spawn(move || {
                let mut conn = client.get_connection().expect("connect");
                let big = "x".repeat(64 * 1024);
                // xorshift: deterministic per thread, no dependency.
                let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut next = move |n: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % n
                };
                while !stop.load(Ordering::Relaxed) {
                    let p = &prefixes[next(prefixes.len() as u64) as usize];
                    let k = next(20).to_string();
                    let name = format!("{p}:{{{k}}}");
                    let cmd = match next(14) {
                        0..=3 => {
                            let value = if next(3) == 0 { big.as_str() } else { "v" };
                            redis::cmd("NSCACHE.SET")
                                .arg(p)
                                .arg(&k)
                                .arg(600)
                                .arg(value)
                                .clone()
                        }
                        4 => redis::cmd("NSCACHE.FORGET").arg(p).clone(),
                        5 if next(8) == 0 => redis::cmd("FLUSHALL").arg("ASYNC").clone(),
                        5 => redis::cmd("NSCACHE.DEL").arg(p).arg(&k).clone(),
                        6 if next(8) == 0 => redis::cmd("FLUSHDB").arg("ASYNC").clone(),
                        6 => redis::cmd("NSCACHE.GET").arg(p).arg(&k).clone(),
                        7 => redis::cmd("SELECT").arg(next(2)).clone(),
                        8 => redis::cmd("COPY")
                            .arg(&name)
                            .arg(format!("{p}:{{{}}}", next(20)))
                            .arg("DB")
                            .arg(next(2))
                            .arg("REPLACE")
                            .clone(),
                        9 => redis::cmd("MOVE").arg(&name).arg(next(2)).clone(),
                        10 => redis::cmd("SWAPDB").arg(0).arg(1).clone(),
                        11 => redis::cmd("NSCACHE.INVALIDATE").arg(p).clone(),
                        12 => redis::cmd("NSCACHE.GET")
                            .arg(format!("junk{}", next(1_000_000)))
                            .arg(&k)
                            .clone(),
                        _ => redis::cmd("CONFIG")
                            .arg("SET")
                            .arg("nscache.max-namespaces")
                            .arg([2, 8, 100][next(3) as usize])
                            .clone(),
                    };
                    // Errors are expected (a namespace holding entries, the
                    // cap, a missing key); a dropped connection is not.
                    if let Err(err) = cmd.query::<redis::Value>(&mut conn) {
                        assert!(!err.is_io_error(), "server gone: {err}");
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker");
    }

    let mut conn = server.conn();
    config_set(&mut conn, "nscache.max-namespaces", "100");
    wait_until(Duration::from_secs(30), "lazy free and sweep done", || {
        let memory: String = redis::cmd("INFO")
            .arg("memory")
            .query(&mut conn)
            .expect("INFO");
        let ns: String = redis::cmd("INFO")
            .arg("nscache")
            .query(&mut conn)
            .expect("INFO");
        memory.contains("lazyfree_pending_objects:0") && ns.contains("nscache_sweep_pending:0")
    });
    let keyspace = keyspace_by_prefix(&mut conn);
    eprintln!("entries and bytes per prefix after the churn: {keyspace:?}");
    for p in &prefixes {
        let s = stats(&mut conn, p);
        let expected = keyspace.get(p).copied().unwrap_or((0, 0));
        assert_eq!((s.entries, s.bytes), expected, "namespace {p}");
    }
    // Everything flushed: every namespace is empty and can be forgotten.
    let _: () = redis::cmd("FLUSHALL")
        .arg("ASYNC")
        .query(&mut conn)
        .expect("FLUSHALL");
    wait_lazy_free(&mut conn, Duration::from_secs(30));
    for p in &prefixes {
        let reply: redis::Value = redis::cmd("NSCACHE.FORGET")
            .arg(p)
            .query(&mut conn)
            .expect("FORGET of an empty namespace");
        assert_eq!(reply, redis::Value::Okay);
        let s = stats(&mut conn, p);
        assert_eq!((s.entries, s.bytes, s.sets), (0, 0, 0));
    }
}

/// INVALIDATE replies with the number of live entries it invalidated. After
/// FLUSHALL ASYNC the keyspace holds none, but the entries still waiting for
/// the lazy-free thread were counted as live: INVALIDATE replied with tens of
/// thousands.
#[test]
fn invalidate_after_flushall_async_counts_no_flushed_entry() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    cachetx_tests::nscache::fill(&mut conn, "p", 200_000, 600, "value");
    let replies: Vec<redis::Value> = redis::pipe()
        .atomic()
        .cmd("FLUSHALL")
        .arg("ASYNC")
        .cmd("NSCACHE.INVALIDATE")
        .arg("p")
        .query(&mut conn)
        .expect("MULTI FLUSHALL ASYNC, INVALIDATE");
    assert_eq!(replies[1], redis::Value::Int(0), "{replies:?}");
    // Entries written after the flush are counted, whenever the old ones are freed.
    set(&mut conn, "p", "k", 600, "v");
    wait_lazy_free(&mut conn, Duration::from_secs(30));
    let invalidated: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("p")
        .query(&mut conn)
        .expect("INVALIDATE");
    assert_eq!(invalidated, 1);
    assert_eq!(get(&mut conn, "p", "k"), None);
    // FLUSHDB of one database leaves the others' entries live.
    set(&mut conn, "q", "k", 600, "v");
    let _: () = redis::cmd("SELECT")
        .arg(1)
        .query(&mut conn)
        .expect("SELECT");
    let _: () = redis::cmd("FLUSHDB").query(&mut conn).expect("FLUSHDB");
    let _: () = redis::cmd("SELECT")
        .arg(0)
        .query(&mut conn)
        .expect("SELECT");
    assert_eq!(get(&mut conn, "q", "k").as_deref(), Some("v"));
}
