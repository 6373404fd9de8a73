//! `make bench-redis` part 2 (issue 8): what NSCACHE.FETCH leases save a
//! cache-aside reader, on a private redis-server with the module (started
//! through the test harness). Prints markdown to stdout.
//!
//! 1. Stampede: N readers (500) of one cold key whose loader takes 50 ms, all
//!    released at once. Cache-aside is GET, on a miss load and SET; with
//!    leases, FETCH: MISS loads and writes back with SET ... LEASE, WAIT
//!    sleeps the suggested retry_ms and fetches again, HIT is done. Counted:
//!    loader calls, and each reader's latency from release to holding the
//!    value.
//! 2. Hot key with a short ttl (1 s) under constant load (readers that read
//!    in a loop for several ttls): loader calls that a reader waited for (a
//!    miss) per expiry, cache-aside vs FETCH with REFRESH (an entry inside
//!    the refresh window hands one reader a lease to reload it early, in the
//!    background here, while everyone else keeps getting HIT).
//!
//! Knobs (environment): LEASE_BENCH_READERS (500), LEASE_BENCH_LOADER_MS (50),
//! LEASE_BENCH_ROUNDS (3), LEASE_BENCH_HOT_READERS (16), LEASE_BENCH_HOT_SECONDS (6).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use cachetx_tests::RedisServer;
use redis::{Connection, Value};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A FETCH reply.
enum Fetch {
    Hit,
    Miss(Vec<u8>),
    Wait(u64),
    Refresh(Vec<u8>),
}

fn fetch(
    conn: &mut Connection,
    prefix: &str,
    key: &str,
    lease_ms: u64,
    window_ms: Option<u64>,
) -> Fetch {
    let mut cmd = redis::cmd("NSCACHE.FETCH");
    cmd.arg(prefix).arg(key).arg(lease_ms);
    if let Some(window) = window_ms {
        cmd.arg("REFRESH").arg(window);
    }
    let reply: Vec<Value> = cmd.query(conn).expect("NSCACHE.FETCH");
    let word = match &reply[0] {
        Value::SimpleString(s) => s.clone(),
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("FETCH reply {other:?}"),
    };
    let bytes = |v: &Value| match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        other => panic!("FETCH field {other:?}"),
    };
    match word.as_str() {
        "HIT" => Fetch::Hit,
        "MISS" => Fetch::Miss(bytes(&reply[1])),
        "WAIT" => Fetch::Wait(match reply[1] {
            Value::Int(ms) => u64::try_from(ms).unwrap_or(1),
            ref other => panic!("WAIT retry {other:?}"),
        }),
        "REFRESH" => Fetch::Refresh(bytes(&reply[2])),
        other => panic!("FETCH said {other}"),
    }
}

fn set(
    conn: &mut Connection,
    prefix: &str,
    key: &str,
    ttl: u64,
    value: &str,
    lease: Option<&[u8]>,
) {
    let mut cmd = redis::cmd("NSCACHE.SET");
    cmd.arg(prefix).arg(key).arg(ttl).arg(value);
    if let Some(token) = lease {
        cmd.arg("LEASE").arg(token);
    }
    let _: Value = cmd.query(conn).expect("NSCACHE.SET");
}

fn get(conn: &mut Connection, prefix: &str, key: &str) -> Option<Vec<u8>> {
    redis::cmd("NSCACHE.GET")
        .arg(prefix)
        .arg(key)
        .query(conn)
        .expect("NSCACHE.GET")
}

/// The loader: the slow computation a cache saves.
fn load(loads: &AtomicU64, loader: Duration) -> String {
    loads.fetch_add(1, Ordering::Relaxed);
    thread::sleep(loader);
    "computed".to_string()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    CacheAside,
    Leases,
}

struct Stampede {
    loads: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn stampede(
    server: &RedisServer,
    mode: Mode,
    key: &str,
    readers: usize,
    loader: Duration,
) -> Stampede {
    let loads = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(readers));
    let handles: Vec<_> = (0..readers)
        .map(|_| {
            let mut conn = server.conn();
            let (loads, barrier, key) = (loads.clone(), barrier.clone(), key.to_string());
            thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                match mode {
                    Mode::CacheAside => {
                        if get(&mut conn, "stampede", &key).is_none() {
                            let value = load(&loads, loader);
                            set(&mut conn, "stampede", &key, 600, &value, None);
                        }
                    }
                    Mode::Leases => loop {
                        match fetch(&mut conn, "stampede", &key, 2000, None) {
                            Fetch::Hit | Fetch::Refresh(_) => break,
                            Fetch::Miss(token) => {
                                let value = load(&loads, loader);
                                set(&mut conn, "stampede", &key, 600, &value, Some(&token));
                                break;
                            }
                            Fetch::Wait(ms) => thread::sleep(Duration::from_millis(ms)),
                        }
                    },
                }
                started.elapsed()
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = handles
        .into_iter()
        .map(|h| h.join().expect("reader"))
        .collect();
    latencies.sort();
    Stampede {
        loads: loads.load(Ordering::Relaxed),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: percentile(&latencies, 1.0),
    }
}

struct Hot {
    reads: u64,
    misses: u64,
    refreshes: u64,
    expiries: f64,
}

fn hot_key(
    server: &RedisServer,
    mode: Mode,
    readers: usize,
    seconds: u64,
    loader: Duration,
) -> Hot {
    const TTL: u64 = 1;
    const LEASE_MS: u64 = 1000;
    // Reload when less than 300 ms are left: the 50 ms loader lands in time.
    const WINDOW_MS: u64 = 300;
    let key = match mode {
        Mode::CacheAside => "aside",
        Mode::Leases => "leases",
    };
    let mut conn = server.conn();
    set(&mut conn, "hot", key, TTL, "warm", None);
    let (reads, misses, refreshes, loads) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..readers)
        .map(|_| {
            let (mut conn, url) = (server.conn(), server.url());
            let (reads, misses, refreshes, loads) = (
                reads.clone(),
                misses.clone(),
                refreshes.clone(),
                loads.clone(),
            );
            thread::spawn(move || {
                // A background reloader for REFRESH leases, so the reader
                // that got one answers at once, as a real client would.
                let mut background: Option<thread::JoinHandle<()>> = None;
                while Instant::now() < deadline {
                    reads.fetch_add(1, Ordering::Relaxed);
                    match mode {
                        Mode::CacheAside => {
                            if get(&mut conn, "hot", key).is_none() {
                                misses.fetch_add(1, Ordering::Relaxed);
                                let value = load(&loads, loader);
                                set(&mut conn, "hot", key, TTL, &value, None);
                            }
                        }
                        Mode::Leases => loop {
                            match fetch(&mut conn, "hot", key, LEASE_MS, Some(WINDOW_MS)) {
                                Fetch::Hit => break,
                                Fetch::Refresh(token) => {
                                    refreshes.fetch_add(1, Ordering::Relaxed);
                                    if let Some(done) = background.take() {
                                        done.join().expect("reloader");
                                    }
                                    let (loads, url) = (loads.clone(), url.clone());
                                    background = Some(thread::spawn(move || {
                                        let value = load(&loads, loader);
                                        let mut conn = redis::Client::open(url)
                                            .and_then(|c| c.get_connection())
                                            .expect("reloader connection");
                                        set(&mut conn, "hot", key, TTL, &value, Some(&token));
                                    }));
                                    break;
                                }
                                Fetch::Miss(token) => {
                                    misses.fetch_add(1, Ordering::Relaxed);
                                    let value = load(&loads, loader);
                                    set(&mut conn, "hot", key, TTL, &value, Some(&token));
                                    break;
                                }
                                Fetch::Wait(ms) => thread::sleep(Duration::from_millis(ms)),
                            }
                        },
                    }
                    // Constant load, not a busy loop: about 1,000 reads/s per reader.
                    thread::sleep(Duration::from_millis(1));
                }
                if let Some(done) = background.take() {
                    done.join().expect("reloader");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("reader");
    }
    Hot {
        reads: reads.load(Ordering::Relaxed),
        misses: misses.load(Ordering::Relaxed),
        refreshes: refreshes.load(Ordering::Relaxed),
        expiries: seconds as f64 / TTL as f64,
    }
}

fn main() {
    let readers = knob("LEASE_BENCH_READERS", 500) as usize;
    let loader = Duration::from_millis(knob("LEASE_BENCH_LOADER_MS", 50));
    let rounds = knob("LEASE_BENCH_ROUNDS", 3);
    let hot_readers = knob("LEASE_BENCH_HOT_READERS", 16) as usize;
    let hot_seconds = knob("LEASE_BENCH_HOT_SECONDS", 6);
    let server = RedisServer::start_with(&["--maxclients", "10000"]);

    println!("Stampede: {readers} readers of one cold key released at once, loader {} ms, {rounds} rounds (one key per round).", loader.as_millis());
    println!("Cache-aside is NSCACHE.GET, on a miss load + NSCACHE.SET; leases are NSCACHE.FETCH (lease 2000 ms), WAIT sleeps retry_ms and fetches again, MISS loads + SET ... LEASE.");
    println!();
    println!("| round | mode | loader calls | read latency p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    let mut lease_loads = Vec::new();
    for round in 1..=rounds {
        for mode in [Mode::CacheAside, Mode::Leases] {
            let (name, key) = match mode {
                Mode::CacheAside => ("cache-aside", format!("aside{round}")),
                Mode::Leases => ("FETCH leases", format!("leases{round}")),
            };
            let s = stampede(&server, mode, &key, readers, loader);
            if mode == Mode::Leases {
                lease_loads.push(s.loads);
            }
            println!(
                "| {round} | {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
                s.loads, s.p50_ms, s.p99_ms, s.max_ms
            );
        }
    }
    let goal = if lease_loads.iter().all(|&n| n == 1) {
        "met"
    } else {
        "**missed**"
    };
    println!();
    println!("Goal: exactly 1 loader call with FETCH in every round: {goal}.");
    println!();
    println!("Hot key: ttl 1 s, {hot_readers} readers reading it about every millisecond for {hot_seconds} s, loader {} ms. FETCH uses REFRESH 300 (lease 1000 ms) and reloads a REFRESH in the background.", loader.as_millis());
    println!();
    println!("| mode | reads | misses (a reader waited for the loader) | misses per expiry | early refreshes |");
    println!("|---|---|---|---|---|");
    let mut lease_misses = 0;
    for mode in [Mode::CacheAside, Mode::Leases] {
        let h = hot_key(&server, mode, hot_readers, hot_seconds, loader);
        let name = match mode {
            Mode::CacheAside => "cache-aside",
            Mode::Leases => "FETCH + REFRESH",
        };
        if mode == Mode::Leases {
            lease_misses = h.misses;
        }
        println!(
            "| {name} | {} | {} | {:.1} | {} |",
            h.reads,
            h.misses,
            h.misses as f64 / h.expiries,
            h.refreshes
        );
    }
    println!();
    let goal = if lease_misses == 0 {
        "met"
    } else {
        "**missed**"
    };
    println!("Goal: 0 misses per expiry with FETCH + REFRESH: {goal}.");
}
