//! NSCACHE.FETCH leases against a real server (SPEC 2.4): single flight under a
//! herd, stale-set protection under randomized interleavings, early refresh,
//! replication of lease writes, bad input, the lease bound, and the namespace
//! lifecycle with leases outstanding.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use cachetx_tests::nscache::{
    config_set, dbsize, get, key_range, pexpiretime, set, stats, used_memory,
};
use cachetx_tests::{wait_until, RedisCluster, RedisServer};
use redis::{Connection, Value};

/// A FETCH reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fetch {
    Hit(Vec<u8>),
    Miss(String),
    Wait(i64),
    Refresh(Vec<u8>, String),
}

fn text(v: &Value) -> String {
    match v {
        Value::SimpleString(s) => s.clone(),
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Okay => "OK".to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        other => panic!("not a bulk string: {other:?}"),
    }
}

fn parse_fetch(reply: Value) -> Fetch {
    let Value::Array(items) = reply else {
        panic!("FETCH reply is not an array: {reply:?}")
    };
    match (text(&items[0]).as_str(), items.len()) {
        ("HIT", 2) => Fetch::Hit(bytes(&items[1])),
        ("MISS", 2) => {
            let token = text(&items[1]);
            assert!(
                token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit()),
                "token {token:?}"
            );
            Fetch::Miss(token)
        }
        ("WAIT", 2) => match items[1] {
            Value::Int(ms) => {
                assert!((1..=50).contains(&ms), "retry_ms {ms}");
                Fetch::Wait(ms)
            }
            ref other => panic!("retry_ms is not an integer: {other:?}"),
        },
        ("REFRESH", 3) => Fetch::Refresh(bytes(&items[1]), text(&items[2])),
        _ => panic!("unexpected FETCH reply {items:?}"),
    }
}

fn fetch(conn: &mut Connection, prefix: &str, key: &str, lease_ms: u64) -> Fetch {
    parse_fetch(
        redis::cmd("NSCACHE.FETCH")
            .arg(prefix)
            .arg(key)
            .arg(lease_ms)
            .query(conn)
            .expect("NSCACHE.FETCH"),
    )
}

fn fetch_refresh(
    conn: &mut Connection,
    prefix: &str,
    key: &str,
    lease_ms: u64,
    window: u64,
) -> Fetch {
    parse_fetch(
        redis::cmd("NSCACHE.FETCH")
            .arg(prefix)
            .arg(key)
            .arg(lease_ms)
            .arg("REFRESH")
            .arg(window)
            .query(conn)
            .expect("NSCACHE.FETCH REFRESH"),
    )
}

/// `NSCACHE.SET prefix key ttl value LEASE token`: true for OK, false for nil.
fn set_lease(
    conn: &mut Connection,
    prefix: &str,
    key: &str,
    ttl: u64,
    value: &str,
    token: &str,
) -> bool {
    let reply: Value = redis::cmd("NSCACHE.SET")
        .arg(prefix)
        .arg(key)
        .arg(ttl)
        .arg(value)
        .arg("LEASE")
        .arg(token)
        .query(conn)
        .expect("NSCACHE.SET LEASE");
    match reply {
        Value::Okay => true,
        Value::Nil => false,
        other => panic!("SET LEASE replied {other:?}"),
    }
}

fn keyname(conn: &mut Connection, prefix: &str, key: &str) -> String {
    redis::cmd("NSCACHE.KEYNAME")
        .arg(prefix)
        .arg(key)
        .query(conn)
        .expect("NSCACHE.KEYNAME")
}

fn info_field(conn: &mut Connection, field: &str) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("nscache")
        .query(conn)
        .expect("INFO nscache");
    let wanted = format!("nscache_{field}:");
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&wanted))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .parse()
        .expect("a number")
}

fn plain(conn: &mut Connection, argv: &[&str]) -> Value {
    redis::cmd(argv[0])
        .arg(&argv[1..])
        .query(conn)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

/// `n` clients FETCH `key` at once (released by one barrier); their replies.
fn herd(server: &RedisServer, n: usize, key: &str, lease_ms: u64) -> Vec<Fetch> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let mut conn = server.conn();
            let barrier = Arc::clone(&barrier);
            let key = key.to_string();
            thread::spawn(move || {
                barrier.wait();
                fetch(&mut conn, "herd", &key, lease_ms)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}

fn misses_and_waits(replies: &[Fetch]) -> (Vec<String>, usize) {
    let misses: Vec<String> = replies
        .iter()
        .filter_map(|r| match r {
            Fetch::Miss(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let waits = replies
        .iter()
        .filter(|r| matches!(r, Fetch::Wait(_)))
        .count();
    (misses, waits)
}

#[test]
fn a_herd_of_200_gets_one_miss_and_199_waits() {
    let server = RedisServer::start();
    let mut conn = server.conn();

    // The holder writes back: every waiter then hits.
    let replies = herd(&server, 200, "cold", 10_000);
    let (misses, waits) = misses_and_waits(&replies);
    assert_eq!((misses.len(), waits), (1, 199), "{replies:?}");
    assert!(set_lease(
        &mut conn, "herd", "cold", 60, "computed", &misses[0]
    ));
    for reply in herd(&server, 199, "cold", 10_000) {
        assert_eq!(reply, Fetch::Hit(b"computed".to_vec()));
    }
    let s = stats(&mut conn, "herd");
    assert_eq!((s.misses, s.leases, s.lease_waits), (1, 1, 199));
    assert_eq!((s.hits, s.sets, s.stale_sets_rejected), (199, 1, 0));

    // The holder never writes: after lease_ms exactly one new MISS.
    let lease_ms = 400;
    let replies = herd(&server, 200, "abandoned", lease_ms);
    let (misses, waits) = misses_and_waits(&replies);
    assert_eq!((misses.len(), waits), (1, 199));
    let granted = Instant::now();
    // Still within the lease (a loaded machine may take a while to get here).
    if granted.elapsed() < Duration::from_millis(lease_ms / 2) {
        assert!(matches!(
            fetch(&mut conn, "herd", "abandoned", lease_ms),
            Fetch::Wait(_)
        ));
    }
    thread::sleep(Duration::from_millis(lease_ms + 50));
    let replies = herd(&server, 200, "abandoned", 60_000);
    let (again, waits) = misses_and_waits(&replies);
    assert_eq!((again.len(), waits), (1, 199), "one new lease after expiry");
    assert_ne!(again[0], misses[0], "a new token");
    assert!(
        !set_lease(&mut conn, "herd", "abandoned", 60, "late", &misses[0]),
        "the expired lease's token is refused"
    );
    assert!(set_lease(
        &mut conn,
        "herd",
        "abandoned",
        60,
        "fresh",
        &again[0]
    ));
    assert_eq!(
        get(&mut conn, "herd", "abandoned").as_deref(),
        Some("fresh")
    );
}

#[test]
fn replies_have_the_same_shape_in_resp2_and_resp3() {
    let server = RedisServer::start();
    for (i, mut conn) in [server.conn(), server.conn_resp3()].into_iter().enumerate() {
        let key = format!("k{i}");
        let Fetch::Miss(token) = fetch(&mut conn, "shape", &key, 5_000) else {
            panic!("cold key")
        };
        assert!(matches!(
            fetch(&mut conn, "shape", &key, 5_000),
            Fetch::Wait(_)
        ));
        assert!(set_lease(&mut conn, "shape", &key, 60, "v", &token));
        assert_eq!(
            fetch(&mut conn, "shape", &key, 5_000),
            Fetch::Hit(b"v".to_vec())
        );
        let Fetch::Refresh(value, token) = fetch_refresh(&mut conn, "shape", &key, 5_000, 120_000)
        else {
            panic!("inside the window")
        };
        assert_eq!(value, b"v");
        assert_eq!(
            fetch_refresh(&mut conn, "shape", &key, 5_000, 120_000),
            Fetch::Hit(b"v".to_vec()),
            "one refresher per lease; the others hit"
        );
        assert!(set_lease(&mut conn, "shape", &key, 60, "v2", &token));
        assert_eq!(get(&mut conn, "shape", &key).as_deref(), Some("v2"));
    }
}

/// A small deterministic generator (seeded trials are reproducible).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes of the key that may land between a reader's MISS and its write-back.
#[derive(Clone, Copy, Debug)]
enum Interference {
    /// The source changed and the relay ran NSCACHE.DEL.
    NscacheDel,
    /// The source changed and the relay ran NSCACHE.INVALIDATE.
    Invalidate,
    /// The source changed and a writer stored the new value (write-through).
    WriteThrough,
    /// Write-through, then a plain DEL / UNLINK of the stored name.
    PlainDel,
    /// Write-through, then the entry expires (PEXPIRE on the stored name).
    Expiry,
    /// A plain string written at the stored name, then deleted.
    PlainSetThenDel,
    /// Write-through to another key, RENAMEd onto this one.
    RenameOnto,
    /// FLUSHALL.
    Flushall,
}

const WRITES: [Interference; 8] = [
    Interference::NscacheDel,
    Interference::Invalidate,
    Interference::WriteThrough,
    Interference::PlainDel,
    Interference::Expiry,
    Interference::PlainSetThenDel,
    Interference::RenameOnto,
    Interference::Flushall,
];

#[test]
fn no_stale_set_in_10000_randomized_interleavings() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let mut rng = XorShift(0x5eed_1ea5e);
    let mut truth = 0u64; // version of the source of truth
    let mut rejected = 0u64;
    let mut accepted = 0u64;
    let stored = keyname(&mut conn, "ss", "k");
    let tmp_stored = keyname(&mut conn, "ss", "tmp");
    for trial in 0..10_000 {
        // Start cold, with no lease: NSCACHE.DEL voids any.
        let _: i64 = redis::cmd("NSCACHE.DEL")
            .arg("ss")
            .arg("k")
            .query(&mut conn)
            .expect("DEL");
        let Fetch::Miss(token) = fetch(&mut conn, "ss", "k", 60_000) else {
            panic!("trial {trial}: a cold key without a lease misses")
        };
        let read = truth; // what the reader loaded from the source
        let n_writes = match rng.below(4) {
            0 => 0,
            1 | 2 => 1,
            _ => 2,
        };
        let mut written = false;
        for _ in 0..n_writes {
            let write = WRITES[rng.below(WRITES.len() as u64) as usize];
            written = true;
            match write {
                Interference::NscacheDel => {
                    truth += 1;
                    let _: i64 = redis::cmd("NSCACHE.DEL")
                        .arg("ss")
                        .arg("k")
                        .query(&mut conn)
                        .expect("DEL");
                }
                Interference::Invalidate => {
                    truth += 1;
                    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
                        .arg("ss")
                        .query(&mut conn)
                        .expect("INVALIDATE");
                }
                Interference::WriteThrough => {
                    truth += 1;
                    set(&mut conn, "ss", "k", 60, &format!("v{truth}"));
                }
                Interference::PlainDel => {
                    truth += 1;
                    set(&mut conn, "ss", "k", 60, &format!("v{truth}"));
                    let cmd = if rng.below(2) == 0 { "DEL" } else { "UNLINK" };
                    plain(&mut conn, &[cmd, &stored]);
                }
                Interference::Expiry => {
                    truth += 1;
                    set(&mut conn, "ss", "k", 60, &format!("v{truth}"));
                    plain(&mut conn, &["PEXPIRE", &stored, "1"]);
                    thread::sleep(Duration::from_millis(2));
                    if rng.below(2) == 0 {
                        // Expired on access rather than at the write-back.
                        assert_eq!(get(&mut conn, "ss", "k"), None);
                    }
                }
                Interference::PlainSetThenDel => {
                    truth += 1;
                    plain(&mut conn, &["SET", &stored, "plain"]);
                    plain(&mut conn, &["DEL", &stored]);
                }
                Interference::RenameOnto => {
                    truth += 1;
                    set(&mut conn, "ss", "tmp", 60, &format!("v{truth}"));
                    plain(&mut conn, &["RENAME", &tmp_stored, &stored]);
                }
                Interference::Flushall => {
                    truth += 1;
                    plain(&mut conn, &["FLUSHALL"]);
                }
            }
        }
        // Sometimes a forged token comes first: refused, counted, and the
        // holder's lease stays.
        if rng.below(8) == 0 {
            let forged = format!("{:016x}", rng.next() | 1);
            if forged != token {
                assert!(!set_lease(&mut conn, "ss", "k", 60, "forged", &forged));
                rejected += 1;
            }
        }
        let ok = set_lease(&mut conn, "ss", "k", 60, &format!("v{read}"), &token);
        assert_eq!(
            ok, !written,
            "trial {trial}: lease held iff nothing wrote the key"
        );
        if ok {
            accepted += 1;
            // A used token is refused.
            assert!(!set_lease(&mut conn, "ss", "k", 60, "again", &token));
            rejected += 1;
        } else {
            rejected += 1;
        }
        // Whatever is readable now is the current truth (or nothing).
        let now: Option<String> = get(&mut conn, "ss", "k");
        assert!(
            now.is_none() || now == Some(format!("v{truth}")),
            "trial {trial}: stale value {now:?} readable, truth is v{truth}"
        );
    }
    let s = stats(&mut conn, "ss");
    assert_eq!(
        s.stale_sets_rejected, rejected,
        "every refused write is counted"
    );
    assert!(
        accepted > 2_000 && rejected > 4_000,
        "{accepted} accepted, {rejected} rejected"
    );
    assert_eq!(info_field(&mut conn, "leases_outstanding"), 0);
}

#[test]
fn plain_commands_on_the_stored_name_void_a_refresh_lease() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let stored = keyname(&mut conn, "pl", "k");
    let other = keyname(&mut conn, "pl", "other");
    let cases: Vec<(&str, Vec<Vec<String>>)> = vec![
        ("DEL", vec![vec!["DEL".into(), stored.clone()]]),
        ("UNLINK", vec![vec!["UNLINK".into(), stored.clone()]]),
        (
            "EXPIRE",
            vec![vec!["EXPIRE".into(), stored.clone(), "500".into()]],
        ),
        ("PERSIST", vec![vec!["PERSIST".into(), stored.clone()]]),
        ("SET", vec![vec!["SET".into(), stored.clone(), "x".into()]]),
        (
            "RENAME away",
            vec![vec!["RENAME".into(), stored.clone(), other.clone()]],
        ),
        (
            "MOVE",
            vec![vec!["MOVE".into(), stored.clone(), "1".into()]],
        ),
        ("FLUSHDB", vec![vec!["FLUSHDB".into()]]),
        (
            "FLUSHALL ASYNC",
            vec![vec!["FLUSHALL".into(), "ASYNC".into()]],
        ),
        (
            "SWAPDB",
            vec![
                vec!["SWAPDB".into(), "0".into(), "1".into()],
                vec!["SWAPDB".into(), "0".into(), "1".into()],
            ],
        ),
    ];
    for (name, commands) in cases {
        plain(&mut conn, &["FLUSHALL"]);
        set(&mut conn, "pl", "k", 600, "v");
        let Fetch::Refresh(_, token) = fetch_refresh(&mut conn, "pl", "k", 60_000, 700_000) else {
            panic!("{name}: inside the window")
        };
        for argv in &commands {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            plain(&mut conn, &argv);
        }
        let reply: Value = redis::cmd("NSCACHE.SET")
            .arg("pl")
            .arg("k")
            .arg(60)
            .arg("late")
            .arg("LEASE")
            .arg(&token)
            .query(&mut conn)
            .expect("SET LEASE");
        assert_eq!(reply, Value::Nil, "{name} voids the lease");
        // Nothing was written by the refused write.
        let kind: String = redis::cmd("TYPE")
            .arg(&stored)
            .query(&mut conn)
            .expect("TYPE");
        if kind == "nscache-e" {
            assert_eq!(get(&mut conn, "pl", "k").as_deref(), Some("v"), "{name}");
        }
    }

    // A key that expires on its own voids its refresh lease too.
    plain(&mut conn, &["FLUSHALL"]);
    set(&mut conn, "pl", "k", 600, "v");
    let Fetch::Refresh(_, token) = fetch_refresh(&mut conn, "pl", "k", 60_000, 700_000) else {
        panic!("inside the window")
    };
    plain(&mut conn, &["PEXPIRE", &stored, "1"]);
    wait_until(Duration::from_secs(5), "active expiry", || {
        plain(&mut conn, &["DBSIZE"]) == Value::Int(0)
    });
    assert!(!set_lease(&mut conn, "pl", "k", 60, "late", &token));
    // And the next FETCH after the void gets a new lease at once.
    assert!(matches!(
        fetch(&mut conn, "pl", "k", 60_000),
        Fetch::Miss(_)
    ));

    // Leases are per database.
    let mut db1 = server.conn();
    plain(&mut db1, &["SELECT", "1"]);
    assert!(matches!(fetch(&mut db1, "pl", "k", 60_000), Fetch::Miss(_)));
}

#[test]
fn eviction_voids_a_refresh_lease() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let mut conn = server.conn();
    set(&mut conn, "ev", "k", 600, "v");
    let Fetch::Refresh(_, token) = fetch_refresh(&mut conn, "ev", "k", 60_000, 700_000) else {
        panic!("inside the window")
    };
    let used = used_memory(&mut conn);
    config_set(&mut conn, "maxmemory", &(used + 2_000_000).to_string());
    let stored = keyname(&mut conn, "ev", "k");
    let mut i = 0;
    while plain(&mut conn, &["EXISTS", &stored]) == Value::Int(1) {
        let _: () = redis::cmd("SET")
            .arg(format!("filler{i}"))
            .arg("x".repeat(1000))
            .query(&mut conn)
            .expect("SET");
        i += 1;
        assert!(i < 200_000, "the entry was never evicted");
    }
    config_set(&mut conn, "maxmemory", "0");
    assert!(stats(&mut conn, "ev").evicted >= 1);
    assert!(
        !set_lease(&mut conn, "ev", "k", 60, "late", &token),
        "eviction voids the lease"
    );
}

#[test]
fn early_refresh_gives_one_refresher_per_lease_period() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "er", "hot", 600, "v");
    // Outside the window: plain hits, no lease.
    for _ in 0..10 {
        assert_eq!(
            fetch_refresh(&mut conn, "er", "hot", 300, 1_000),
            Fetch::Hit(b"v".to_vec())
        );
    }
    // Inside the window (always: it is wider than the ttl): exactly one
    // REFRESH per lease period, everyone else hits.
    let lease_ms = 300;
    for period in 0..3 {
        let started = Instant::now();
        let mut refreshes = 0;
        let mut hits = 0;
        while started.elapsed() < Duration::from_millis(lease_ms - 100) {
            match fetch_refresh(&mut conn, "er", "hot", lease_ms, 700_000) {
                Fetch::Refresh(v, _) => {
                    assert_eq!(v, b"v");
                    refreshes += 1;
                }
                Fetch::Hit(v) => {
                    assert_eq!(v, b"v");
                    hits += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(refreshes, 1, "period {period}");
        assert!(hits > 0);
        // Let the unused lease run out.
        thread::sleep(Duration::from_millis(lease_ms + 20).saturating_sub(started.elapsed()));
    }
    let s = stats(&mut conn, "er");
    assert_eq!((s.refreshes, s.misses, s.leases), (3, 0, 0));
}

#[test]
fn a_hot_key_with_a_short_ttl_never_misses_under_fetch_refresh() {
    let server = RedisServer::start();
    let mut seed = server.conn();
    set(&mut seed, "hot", "k", 1, "v0");
    let deadline = Instant::now() + Duration::from_millis(4_500);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let mut conn = server.conn();
            thread::spawn(move || {
                let (mut misses, mut refreshed, mut reads) = (0u64, 0u64, 0u64);
                while Instant::now() < deadline {
                    reads += 1;
                    match fetch_refresh(&mut conn, "hot", "k", 300, 800) {
                        Fetch::Hit(_) => {}
                        Fetch::Refresh(_, token) => {
                            // The refresher recomputes and writes back at once.
                            if set_lease(&mut conn, "hot", "k", 1, &format!("v{reads}"), &token) {
                                refreshed += 1;
                            }
                        }
                        Fetch::Miss(token) => {
                            misses += 1;
                            set_lease(&mut conn, "hot", "k", 1, "recovered", &token);
                        }
                        Fetch::Wait(ms) => thread::sleep(Duration::from_millis(ms as u64)),
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                (misses, refreshed, reads)
            })
        })
        .collect();
    let (mut misses, mut refreshed, mut reads) = (0, 0, 0);
    for h in handles {
        let (m, r, n) = h.join().expect("reader");
        misses += m;
        refreshed += r;
        reads += n;
    }
    assert_eq!(misses, 0, "{reads} reads, {refreshed} refreshes");
    assert!(
        refreshed >= 4,
        "several expiries were refreshed ahead: {refreshed}"
    );
    let s = stats(&mut seed, "hot");
    assert_eq!((s.misses, s.expired), (0, 0));
}

#[test]
fn a_lease_write_replicates_as_a_plain_set_with_the_same_expiry() {
    let primary = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let replica = RedisServer::start_replica_of(&primary, &[]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    let Fetch::Miss(token) = fetch(&mut p, "rep", "k", 10_000) else {
        panic!("cold")
    };
    assert_eq!(
        info_field(&mut r, "leases_outstanding"),
        0,
        "leases are not replicated"
    );
    assert!(set_lease(&mut p, "rep", "k", 100, "computed", &token));
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query(&mut p)
        .expect("WAIT");
    assert_eq!(acked, 1);
    assert_eq!(get(&mut r, "rep", "k").as_deref(), Some("computed"));
    let stored = keyname(&mut p, "rep", "k");
    let at = pexpiretime(&mut p, &stored);
    assert!(at > 0);
    assert_eq!(pexpiretime(&mut r, &stored), at, "the same absolute expiry");
    // Nothing of the lease reached the replication stream or the AOF.
    let mut aof = Vec::new();
    for entry in std::fs::read_dir(primary.dir().join("appendonlydir")).expect("appendonlydir") {
        aof.extend(std::fs::read(entry.expect("entry").path()).expect("read AOF"));
    }
    let aof = String::from_utf8_lossy(&aof);
    assert!(
        aof.contains("NSCACHE.SET") && aof.contains("computed"),
        "{aof}"
    );
    assert!(!aof.contains("LEASE") && !aof.contains(&token), "{aof}");
    // The replica grants its own leases; the primary's token means nothing there.
    let Fetch::Miss(_) = fetch(&mut r, "rep", "cold", 10_000) else {
        panic!("a replica's cold key")
    };
    assert_eq!(
        info_field(&mut p, "leases_outstanding"),
        0,
        "the primary's lease ended with its write"
    );
}

#[test]
fn bad_input_gets_clear_errors_and_writes_nothing() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["NSCACHE.FETCH", "p", "k"], "wrong number of arguments"),
        (vec!["NSCACHE.FETCH", "p", "k", "0"], "invalid lease_ms"),
        (vec!["NSCACHE.FETCH", "p", "k", "-1"], "invalid lease_ms"),
        (
            vec!["NSCACHE.FETCH", "p", "k", "3600001"],
            "invalid lease_ms",
        ),
        (
            vec!["NSCACHE.FETCH", "p", "k", "99999999999999999999999"],
            "invalid lease_ms",
        ),
        (vec!["NSCACHE.FETCH", "p", "k", "abc"], "invalid lease_ms"),
        (vec!["NSCACHE.FETCH", "p", "k", "1.5"], "invalid lease_ms"),
        (
            vec!["NSCACHE.FETCH", "p", "k", "100", "REFRESH"],
            "REFRESH needs a window_ms",
        ),
        (
            vec!["NSCACHE.FETCH", "p", "k", "100", "REFRESH", "0"],
            "invalid window_ms",
        ),
        (
            vec!["NSCACHE.FETCH", "p", "k", "100", "REFRESH", "-5"],
            "invalid window_ms",
        ),
        (
            vec![
                "NSCACHE.FETCH",
                "p",
                "k",
                "100",
                "REFRESH",
                "9223372036854775807",
            ],
            "invalid window_ms",
        ),
        (
            vec!["NSCACHE.FETCH", "p", "k", "100", "REFRESH", "x"],
            "invalid window_ms",
        ),
        (
            vec!["NSCACHE.FETCH", "p", "k", "100", "SOON", "5"],
            "unknown option 'SOON'",
        ),
        (
            vec!["NSCACHE.FETCH", "p", "k", "100", "REFRESH", "5", "x"],
            "wrong number of arguments",
        ),
        (
            vec!["NSCACHE.FETCH", "bad prefix", "k", "100"],
            "invalid prefix",
        ),
        (vec!["NSCACHE.FETCH", "p", "a}b", "100"], "invalid key"),
        (
            vec!["NSCACHE.SET", "p", "k", "60", "v", "LEASE"],
            "LEASE needs a token",
        ),
        (
            vec!["NSCACHE.SET", "p", "k", "60", "v", "LEASE", "garbage"],
            "invalid lease token",
        ),
        (
            vec![
                "NSCACHE.SET",
                "p",
                "k",
                "60",
                "v",
                "LEASE",
                "0000000000000000",
            ],
            "invalid lease token",
        ),
        (
            vec![
                "NSCACHE.SET",
                "p",
                "k",
                "60",
                "v",
                "LEASE",
                "00000000000000zz",
            ],
            "invalid lease token",
        ),
        (
            vec![
                "NSCACHE.SET",
                "p",
                "k",
                "60",
                "v",
                "LEASE",
                "1234567890abcdef0",
            ],
            "invalid lease token",
        ),
        (
            vec![
                "NSCACHE.SET",
                "p",
                "k",
                "60",
                "v",
                "NX",
                "LEASE",
                "1234567890abcdef",
            ],
            "LEASE and NX",
        ),
        (
            vec![
                "NSCACHE.SET",
                "p",
                "k",
                "60",
                "v",
                "LEASE",
                "1234567890abcdef",
                "XX",
            ],
            "LEASE and XX",
        ),
        (
            vec![
                "NSCACHE.SET",
                "p",
                "k",
                "60",
                "v",
                "LEASE",
                "1234567890abcdef",
                "LEASE",
                "1234567890abcdef",
            ],
            "LEASE given more than once",
        ),
        (
            vec![
                "NSCACHE.SET",
                "p",
                "k",
                "60",
                "v",
                "LEASE",
                "1234567890abcdef",
                "KEEPTTL",
            ],
            "unknown option 'KEEPTTL'",
        ),
        (
            vec![
                "NSCACHE.SET",
                "p",
                "k",
                "0",
                "v",
                "LEASE",
                "1234567890abcdef",
            ],
            "invalid ttl",
        ),
    ];
    for (argv, expected) in &cases {
        let err = redis::cmd(argv[0])
            .arg(&argv[1..])
            .query::<Value>(&mut conn)
            .expect_err(&format!("{argv:?} must fail"));
        assert_eq!(err.code(), Some("ERR"), "{argv:?}: {err}");
        let detail = err.detail().unwrap_or_default();
        assert!(detail.contains(expected), "{argv:?}: {detail}");
    }
    assert_eq!(dbsize(&mut conn), 0, "no bad command wrote a key");
    assert_eq!(
        info_field(&mut conn, "leases_outstanding"),
        0,
        "no bad FETCH took a lease"
    );
    let s = stats(&mut conn, "p");
    assert_eq!(
        (s.sets, s.leases, s.stale_sets_rejected, s.hits, s.misses),
        (0, 0, 0, 0, 0)
    );
    // A well-formed token that no FETCH issued is refused with nil, and counted.
    assert!(!set_lease(&mut conn, "p", "k", 60, "v", "1234567890abcdef"));
    assert_eq!(stats(&mut conn, "p").stale_sets_rejected, 1);
    assert_eq!(dbsize(&mut conn), 0);
    // A FETCH on a key of another type: WRONGTYPE, no lease.
    plain(&mut conn, &["SET", "p:{plain}", "x"]);
    let err = redis::cmd("NSCACHE.FETCH")
        .arg("p")
        .arg("plain")
        .arg(100)
        .query::<Value>(&mut conn)
        .expect_err("WRONGTYPE");
    assert_eq!(err.code(), Some("WRONGTYPE"));
    assert_eq!(info_field(&mut conn, "leases_outstanding"), 0);
}

#[test]
fn a_flood_of_cold_keys_keeps_leases_bounded() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    config_set(&mut conn, "nscache.max-leases", "1000");
    let mut first_token = None;
    let mut last_token = None;
    let mut after_first_chunk = 0;
    for chunk in 0..20 {
        let mut pipe = redis::pipe();
        for i in 0..1000 {
            pipe.cmd("NSCACHE.FETCH")
                .arg("flood")
                .arg(format!("k{}", chunk * 1000 + i))
                .arg(600_000);
        }
        let replies: Vec<Value> = pipe.query(&mut conn).expect("pipelined FETCH");
        for (i, reply) in replies.into_iter().enumerate() {
            let Fetch::Miss(token) = parse_fetch(reply) else {
                panic!("every cold key gets a lease, also at the bound")
            };
            if chunk == 0 && i == 0 {
                first_token = Some(token.clone());
            }
            last_token = Some(token);
        }
        assert!(info_field(&mut conn, "leases_outstanding") <= 1000);
        if chunk == 0 {
            after_first_chunk = used_memory(&mut conn);
        }
    }
    assert_eq!(info_field(&mut conn, "leases_outstanding"), 1000);
    assert_eq!(info_field(&mut conn, "leases_evicted"), 19_000);
    assert!(info_field(&mut conn, "leases_bytes") <= 1000 * 256);
    let flooded = used_memory(&mut conn);
    assert!(
        flooded - after_first_chunk < 1_000_000,
        "20x the cold keys, not 20x the memory: {after_first_chunk} -> {flooded} bytes"
    );
    assert!(
        !set_lease(
            &mut conn,
            "flood",
            "k0",
            60,
            "v",
            &first_token.expect("first")
        ),
        "the lease dropped at the bound is refused"
    );
    assert!(set_lease(
        &mut conn,
        "flood",
        "k19999",
        60,
        "v",
        &last_token.expect("last")
    ));
    assert_eq!(stats(&mut conn, "flood").leases, 20_000);
}

#[test]
fn forgetting_a_namespace_voids_its_leases() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let Fetch::Miss(token) = fetch(&mut conn, "gone", "k", 60_000) else {
        panic!("cold")
    };
    // Leases do not pin the namespace: it holds no entries.
    let _: () = redis::cmd("NSCACHE.FORGET")
        .arg("gone")
        .query(&mut conn)
        .expect("FORGET");
    // The next FETCH gets a new lease at once; the old token is refused.
    let Fetch::Miss(token2) = fetch(&mut conn, "gone", "k", 60_000) else {
        panic!("a forgotten namespace's lease is void")
    };
    assert!(!set_lease(&mut conn, "gone", "k", 60, "old", &token));
    assert!(
        set_lease(&mut conn, "gone", "k", 60, "new", &token2),
        "a refused token leaves the holder's lease alone"
    );

    // At the namespace cap, reads of new prefixes recycle empty namespaces
    // with leases outstanding; those leases die with them.
    let server = RedisServer::start_with_module_args(&["max-namespaces", "2"]);
    let mut conn = server.conn();
    let Fetch::Miss(a) = fetch(&mut conn, "a", "k", 60_000) else {
        panic!("cold")
    };
    let Fetch::Miss(_) = fetch(&mut conn, "b", "k", 60_000) else {
        panic!("cold")
    };
    let Fetch::Miss(_) = fetch(&mut conn, "c", "k", 60_000) else {
        panic!("cold")
    };
    assert!(!set_lease(&mut conn, "a", "k", 60, "late", &a));
    assert_eq!(
        stats(&mut conn, "a").stale_sets_rejected,
        1,
        "counted in the new namespace"
    );

    // When every namespace holds entries, FETCH of a new one is refused like a write.
    set(&mut conn, "a", "e", 60, "v");
    set(&mut conn, "c", "e", 60, "v");
    let err = redis::cmd("NSCACHE.FETCH")
        .arg("d")
        .arg("k")
        .arg(100)
        .query::<Value>(&mut conn)
        .expect_err("cap");
    assert!(
        err.detail()
            .unwrap_or_default()
            .contains("too many namespaces"),
        "{err}"
    );
}

#[test]
fn invalidate_voids_outstanding_leases_at_once() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let Fetch::Miss(token) = fetch(&mut conn, "inv", "k", 60_000) else {
        panic!("cold")
    };
    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("inv")
        .query(&mut conn)
        .expect("INVALIDATE");
    let Fetch::Miss(token2) = fetch(&mut conn, "inv", "k", 60_000) else {
        panic!("the next FETCH gets a new MISS")
    };
    assert!(!set_lease(&mut conn, "inv", "k", 60, "stale", &token));
    assert!(set_lease(&mut conn, "inv", "k", 60, "fresh", &token2));
    // DEL voids too, also of a key that holds no entry.
    let Fetch::Miss(token3) = fetch(&mut conn, "inv", "cold", 60_000) else {
        panic!("cold")
    };
    let deleted: i64 = redis::cmd("NSCACHE.DEL")
        .arg("inv")
        .arg("cold")
        .query(&mut conn)
        .expect("DEL");
    assert_eq!(deleted, 0);
    assert!(!set_lease(&mut conn, "inv", "cold", 60, "stale", &token3));
    assert_eq!(get(&mut conn, "inv", "cold"), None);
}

#[test]
fn leases_live_in_memory_only() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes"]);
    let mut conn = server.conn();
    set(&mut conn, "mem", "kept", 600, "v");
    let Fetch::Miss(token) = fetch(&mut conn, "mem", "k", 60_000) else {
        panic!("cold")
    };
    // DEBUG RELOAD empties the keyspace and loads it again: leases go.
    plain(&mut conn, &["DEBUG", "RELOAD"]);
    assert_eq!(info_field(&mut conn, "leases_outstanding"), 0);
    assert!(!set_lease(&mut conn, "mem", "k", 60, "v", &token));
    let Fetch::Miss(token) = fetch(&mut conn, "mem", "k", 60_000) else {
        panic!("a new lease after the reload")
    };
    // A restart (from the AOF) keeps entries, not leases.
    server.restart();
    let mut conn = server.conn();
    assert_eq!(get(&mut conn, "mem", "kept").as_deref(), Some("v"));
    assert_eq!(info_field(&mut conn, "leases_outstanding"), 0);
    assert!(!set_lease(&mut conn, "mem", "k", 60, "v", &token));
    assert!(matches!(
        fetch(&mut conn, "mem", "k", 60_000),
        Fetch::Miss(_)
    ));
}

#[test]
fn fetch_is_declared_like_get() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    // The key argument routes FETCH in a cluster, as it does GET and SET
    // (COMMAND INFO's first, last, step: what cluster clients route on).
    assert_eq!(key_range(&mut conn, "nscache.fetch"), (2, 2, 1));
    assert_eq!(
        key_range(&mut conn, "nscache.fetch"),
        key_range(&mut conn, "nscache.get")
    );
    // The same flags as NSCACHE.GET (readonly, fast; may-replicate is not
    // shown for module commands by Redis 7.0's COMMAND INFO).
    let flags = |conn: &mut Connection, name: &str| -> Vec<String> {
        let info: Value = redis::cmd("COMMAND")
            .arg("INFO")
            .arg(name)
            .query(conn)
            .expect("COMMAND INFO");
        let Value::Array(commands) = info else {
            panic!("{info:?}")
        };
        let Value::Array(fields) = &commands[0] else {
            panic!("{commands:?}")
        };
        let Value::Array(flags) = &fields[2] else {
            panic!("{fields:?}")
        };
        flags.iter().map(text).collect()
    };
    let fetch_flags = flags(&mut conn, "nscache.fetch");
    assert_eq!(fetch_flags, flags(&mut conn, "nscache.get"));
    assert!(
        fetch_flags.iter().any(|f| f == "readonly"),
        "{fetch_flags:?}"
    );
    assert!(!fetch_flags.iter().any(|f| f == "write"), "{fetch_flags:?}");
    // may-replicate, like GET: refused in read-only scripts.
    for name in ["NSCACHE.GET", "NSCACHE.FETCH"] {
        let err = redis::cmd("EVAL_RO")
            .arg(format!("return redis.call('{name}', 'p', 'ro', '1000')"))
            .arg(0)
            .query::<Value>(&mut conn)
            .expect_err("EVAL_RO refuses a command that may replicate");
        assert!(
            err.to_string().contains("Write commands are not allowed"),
            "{name}: {err}"
        );
    }
    // Inside MULTI and scripts (EVAL, not EVAL_RO: it may replicate, like GET).
    let reply: Value = redis::cmd("EVAL")
        .arg("return redis.call('NSCACHE.FETCH', 'p', 'lua', '1000')")
        .arg(0)
        .query(&mut conn)
        .expect("EVAL");
    assert!(matches!(parse_fetch(reply), Fetch::Miss(_)));
    let replies: Vec<Value> = redis::pipe()
        .atomic()
        .cmd("NSCACHE.FETCH")
        .arg("p")
        .arg("multi")
        .arg(1000)
        .cmd("NSCACHE.FETCH")
        .arg("p")
        .arg("multi")
        .arg(1000)
        .query(&mut conn)
        .expect("MULTI");
    let replies: Vec<Fetch> = replies.into_iter().map(parse_fetch).collect();
    assert!(
        matches!(replies[..], [Fetch::Miss(_), Fetch::Wait(_)]),
        "{replies:?}"
    );
}

#[test]
fn fetch_and_lease_writes_route_by_key_in_a_cluster() {
    let cluster = RedisCluster::start(3);
    let client = cluster.client();
    let mut conn = client.get_connection().expect("cluster connection");
    for i in 0..200 {
        let key = if i % 10 == 0 {
            format!("user:{{{i}}}:p")
        } else {
            format!("k{i}")
        };
        let reply: Value = redis::cmd("NSCACHE.FETCH")
            .arg("cl")
            .arg(&key)
            .arg(60_000)
            .query(&mut conn)
            .expect("FETCH via cluster");
        let Fetch::Miss(token) = parse_fetch(reply) else {
            panic!("{key}: cold")
        };
        // The write-back reaches the node that granted the lease.
        let reply: Value = redis::cmd("NSCACHE.SET")
            .arg("cl")
            .arg(&key)
            .arg(600)
            .arg(format!("v{i}"))
            .arg("LEASE")
            .arg(&token)
            .query(&mut conn)
            .expect("SET LEASE via cluster");
        assert_eq!(reply, Value::Okay, "{key}");
        let reply: Value = redis::cmd("NSCACHE.FETCH")
            .arg("cl")
            .arg(&key)
            .arg(60_000)
            .query(&mut conn)
            .expect("FETCH via cluster");
        assert_eq!(parse_fetch(reply), Fetch::Hit(format!("v{i}").into_bytes()));
        let node = cluster.node_for_key(&key);
        assert_eq!(get(&mut node.conn(), "cl", &key), Some(format!("v{i}")));
    }
}
