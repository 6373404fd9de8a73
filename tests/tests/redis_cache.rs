//! nscache's full contract against real servers: invalidation and its sweep,
//! persistence, replication, eviction, cluster routing, concurrency, stats.

use std::collections::HashMap;
use std::time::Duration;

use cachetx_shared::{CacheInvalidation, Envelope, InvalidationScope, StatsReport};
use cachetx_tests::nscache::{
    dbsize, digest, fill, get, key_range, pexpiretime, rewrite_aof, set, stats, sweep_idle,
};
use cachetx_tests::{wait_until, RedisCluster, RedisServer};
use redis::{Commands, Connection, Value};

/// Stored names of every entry of `prefix`, found with SCAN.
fn scan_entries(conn: &mut Connection, prefix: &str) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}:*"))
        .arg("TYPE")
        .arg("nscache-e")
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(conn)
        .expect("SCAN")
        .collect::<Result<_, _>>()
        .expect("SCAN item");
    keys
}

#[test]
fn invalidate_is_immediate_and_the_sweep_reclaims_memory() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    fill(&mut conn, "p", 100_000, 600, "value");
    fill(&mut conn, "q", 1_000, 600, "value");
    assert_eq!(stats(&mut conn, "p").entries, 100_000);

    let invalidated: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("p")
        .query(&mut conn)
        .expect("INVALIDATE");
    assert_eq!(invalidated, 100_000);
    for i in (0..100_000).step_by(997) {
        assert_eq!(
            get(&mut conn, "p", &format!("key{i}")),
            None,
            "key{i} of p must miss at once"
        );
    }
    for i in (0..1_000).step_by(7) {
        assert_eq!(
            get(&mut conn, "q", &format!("key{i}")).as_deref(),
            Some("value"),
            "q is untouched"
        );
    }
    // New writes after the invalidation are live.
    set(&mut conn, "p", "fresh", 600, "new");
    assert_eq!(get(&mut conn, "p", "fresh").as_deref(), Some("new"));

    wait_until(
        Duration::from_secs(60),
        "the sweep reclaims every invalidated entry of p",
        || stats(&mut conn, "p").entries == 1 && sweep_idle(&mut conn),
    );
    assert_eq!(dbsize(&mut conn), 1_001);
    let p = stats(&mut conn, "p");
    assert_eq!(p.invalidations, 1);
    assert_eq!(stats(&mut conn, "q").entries, 1_000);
    // An invalidation of an unused namespace has nothing to invalidate.
    let none: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("unused")
        .query(&mut conn)
        .expect("INVALIDATE");
    assert_eq!(none, 0);
}

#[test]
fn debug_reload_and_rdb_restart_keep_values_ttls_and_generations() {
    let mut server = RedisServer::start();
    let mut conn = server.conn();
    // A tiny sweep budget keeps invalidated entries on disk, so the saved
    // generation is what keeps them invalid after the restart.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("nscache.sweep-budget")
        .arg(10)
        .query(&mut conn)
        .expect("CONFIG SET");
    fill(&mut conn, "old", 20_000, 3600, "stale");
    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("old")
        .query(&mut conn)
        .expect("INVALIDATE");
    set(&mut conn, "old", "after", 3600, "live");
    set(&mut conn, "keep", "k", 1000, "kept");
    let keep_expiry = pexpiretime(&mut conn, "keep:{k}");

    let _: () = redis::cmd("DEBUG")
        .arg("RELOAD")
        .query(&mut conn)
        .expect("DEBUG RELOAD");
    assert_eq!(
        get(&mut conn, "old", "key5"),
        None,
        "invalidated stays invalidated"
    );
    assert_eq!(get(&mut conn, "old", "after").as_deref(), Some("live"));
    assert_eq!(get(&mut conn, "keep", "k").as_deref(), Some("kept"));
    assert_eq!(
        pexpiretime(&mut conn, "keep:{k}"),
        keep_expiry,
        "TTL not reset"
    );

    let _: () = redis::cmd("SAVE").query(&mut conn).expect("SAVE");
    server.restart();
    let mut conn = server.conn();
    assert!(dbsize(&mut conn) > 2, "stale entries were still on disk");
    assert_eq!(
        get(&mut conn, "old", "key7"),
        None,
        "generation survives a restart"
    );
    assert_eq!(get(&mut conn, "old", "after").as_deref(), Some("live"));
    assert_eq!(get(&mut conn, "keep", "k").as_deref(), Some("kept"));
    assert_eq!(
        pexpiretime(&mut conn, "keep:{k}"),
        keep_expiry,
        "TTL not reset"
    );
    let ttl: i64 = redis::cmd("NSCACHE.TTL")
        .arg("keep")
        .arg("k")
        .query(&mut conn)
        .expect("TTL");
    assert!((990..=1000).contains(&ttl), "TTL {ttl}");
    // The restarted server finishes the sweep it owes.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("nscache.sweep-budget")
        .arg(100_000)
        .query(&mut conn)
        .expect("CONFIG SET");
    wait_until(Duration::from_secs(30), "sweep after restart", || {
        dbsize(&mut conn) == 2
    });
}

#[test]
fn aof_replay_and_rewrite_keep_values_ttls_and_invalidations() {
    let mut server =
        RedisServer::start_with(&["--appendonly", "yes", "--aof-use-rdb-preamble", "no"]);
    let mut conn = server.conn();
    set(&mut conn, "a", "gone", 3600, "old");
    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("a")
        .query(&mut conn)
        .expect("INVALIDATE");
    set(&mut conn, "a", "live", 3600, "new");
    set(&mut conn, "b", "x\0y", 500, "bin\r\nvalue");
    let expiry = pexpiretime(&mut conn, "a:{live}");
    wait_until(Duration::from_secs(10), "sweep", || sweep_idle(&mut conn));
    let before = digest(&mut conn);

    server.restart();
    let mut conn = server.conn();
    assert_eq!(get(&mut conn, "a", "gone"), None);
    assert_eq!(get(&mut conn, "a", "live").as_deref(), Some("new"));
    assert_eq!(get(&mut conn, "b", "x\0y").as_deref(), Some("bin\r\nvalue"));
    assert_eq!(pexpiretime(&mut conn, "a:{live}"), expiry);

    rewrite_aof(&mut conn);
    server.restart();
    let mut conn = server.conn();
    assert_eq!(get(&mut conn, "a", "gone"), None);
    assert_eq!(get(&mut conn, "a", "live").as_deref(), Some("new"));
    assert_eq!(get(&mut conn, "b", "x\0y").as_deref(), Some("bin\r\nvalue"));
    assert_eq!(
        pexpiretime(&mut conn, "a:{live}"),
        expiry,
        "rewrite keeps the absolute expiry"
    );
    wait_until(Duration::from_secs(10), "sweep", || sweep_idle(&mut conn));
    assert_eq!(
        digest(&mut conn),
        before,
        "same keys, values and expiries after replay"
    );
}

#[test]
fn a_replica_matches_its_primary() {
    let primary = RedisServer::start();
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let mut p = primary.conn();
    let mut r = replica.conn();
    wait_until(Duration::from_secs(20), "replica link up", || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut r)
            .expect("INFO");
        info.contains("master_link_status:up")
    });
    fill(&mut p, "cand", 500, 600, "profile");
    set(&mut p, "cand", "short", 1, "soon gone");
    set(&mut p, "other", "k", 600, "v");
    let _: i64 = redis::cmd("NSCACHE.DEL")
        .arg("cand")
        .arg("key1")
        .arg("key2")
        .query(&mut p)
        .expect("DEL");
    fill(&mut p, "inv", 300, 600, "x");
    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("inv")
        .query(&mut p)
        .expect("INVALIDATE");
    set(&mut p, "inv", "after", 600, "y");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(get(&mut p, "cand", "short"), None, "expired on the primary");

    wait_until(Duration::from_secs(20), "replica converges", || {
        let _: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(1000)
            .query(&mut p)
            .expect("WAIT");
        sweep_idle(&mut p) && digest(&mut p) == digest(&mut r)
    });
    for key in ["key0", "key1", "key3", "key499"] {
        assert_eq!(get(&mut r, "cand", key), get(&mut p, "cand", key), "{key}");
    }
    assert_eq!(get(&mut r, "inv", "key5"), None);
    assert_eq!(get(&mut r, "inv", "after").as_deref(), Some("y"));
    assert_eq!(dbsize(&mut r), dbsize(&mut p));
    // The replica refuses writes of its own.
    let err = redis::cmd("NSCACHE.SET")
        .arg(&["cand", "k", "60", "v"])
        .query::<Value>(&mut r)
        .expect_err("readonly");
    assert!(
        err.to_string().to_lowercase().contains("read only") || err.code() == Some("READONLY"),
        "{err}"
    );
}

#[test]
fn counts_and_bytes_stay_exact_through_an_eviction_storm() {
    let server =
        RedisServer::start_with(&["--maxmemory", "12mb", "--maxmemory-policy", "allkeys-lru"]);
    let mut conn = server.conn();
    let value = "v".repeat(200);
    for round in 0..3 {
        for prefix in ["alpha", "beta", "gamma"] {
            let mut pipe = redis::pipe();
            for i in 0..20_000 {
                pipe.cmd("NSCACHE.SET")
                    .arg(prefix)
                    .arg(format!("r{round}-{i}"))
                    .arg(600)
                    .arg(&value)
                    .ignore();
            }
            let _: () = pipe.query(&mut conn).expect("writes under maxmemory");
        }
    }
    // Every new allocation (even this test's SCAN replies) evicts more while
    // memory sits at the limit: lift the limit, then count the state the storm left.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut conn)
        .expect("CONFIG SET");
    let mut total_evicted = 0;
    for prefix in ["alpha", "beta", "gamma"] {
        let s = stats(&mut conn, prefix);
        let keys = scan_entries(&mut conn, prefix);
        assert_eq!(
            s.entries,
            keys.len() as u64,
            "{prefix}: entries equals keys found by SCAN"
        );
        let mut usage = 0u64;
        for key in &keys {
            let u: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .query(&mut conn)
                .expect("MEMORY USAGE");
            usage += u;
        }
        // bytes is charged as MEMORY USAGE computes it (README): equal, not close.
        assert_eq!(
            s.bytes, usage,
            "{prefix}: bytes equals the MEMORY USAGE sum of the namespace's keys"
        );
        assert_eq!(s.sets, 60_000);
        total_evicted += s.evicted;
        assert_eq!(
            s.evicted + s.entries,
            s.sets,
            "{prefix}: every write is either present or evicted"
        );
    }
    assert!(total_evicted > 0, "the storm evicted something");
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut conn)
        .expect("INFO");
    let evicted_keys: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("evicted_keys");
    assert_eq!(
        total_evicted, evicted_keys,
        "every Redis eviction was one of our entries"
    );
}

#[test]
fn counts_follow_flushall_swapdb_rename_and_plain_keys() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    fill(&mut conn, "f", 1000, 600, "v");
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).expect("FLUSHALL");
    assert_eq!(
        (stats(&mut conn, "f").entries, stats(&mut conn, "f").bytes),
        (0, 0)
    );

    fill(&mut conn, "f", 5000, 600, "v");
    let _: () = redis::cmd("FLUSHALL")
        .arg("ASYNC")
        .query(&mut conn)
        .expect("FLUSHALL ASYNC");
    wait_until(
        Duration::from_secs(10),
        "lazy free of FLUSHALL ASYNC",
        || {
            let s = stats(&mut conn, "f");
            s.entries == 0 && s.bytes == 0
        },
    );

    fill(&mut conn, "f", 10, 600, "v");
    let bytes = stats(&mut conn, "f").bytes;
    let _: () = redis::cmd("SWAPDB")
        .arg(0)
        .arg(1)
        .query(&mut conn)
        .expect("SWAPDB");
    assert_eq!(
        (stats(&mut conn, "f").entries, stats(&mut conn, "f").bytes),
        (10, bytes),
        "SWAPDB moves, frees nothing"
    );
    let _: () = redis::cmd("SELECT")
        .arg(1)
        .query(&mut conn)
        .expect("SELECT");
    assert_eq!(get(&mut conn, "f", "key3").as_deref(), Some("v"));
    let _: () = redis::cmd("RENAME")
        .arg("f:{key3}")
        .arg("f:{moved}")
        .query(&mut conn)
        .expect("RENAME");
    assert_eq!(stats(&mut conn, "f").entries, 10);
    assert_eq!(
        get(&mut conn, "f", "moved").as_deref(),
        Some("v"),
        "a renamed entry answers under its new name"
    );
    let copied: i64 = redis::cmd("COPY")
        .arg("f:{key4}")
        .arg("f:{copy}")
        .query(&mut conn)
        .expect("COPY");
    assert_eq!(copied, 1);
    assert_eq!(get(&mut conn, "f", "copy").as_deref(), Some("v"));
    let s = stats(&mut conn, "f");
    let usage: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("f:{copy}")
        .query(&mut conn)
        .expect("MEMORY USAGE");
    assert_eq!(
        (s.entries, s.bytes),
        (11, bytes + usage as u64),
        "COPY charges the copy"
    );
    // Inside a script a stale read is a miss and leaves reclaiming to the sweep.
    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("f")
        .query(&mut conn)
        .expect("INVALIDATE");
    let scripted: Option<String> = redis::cmd("EVAL")
        .arg("return redis.call('NSCACHE.GET', 'f', 'key5')")
        .arg(0)
        .query(&mut conn)
        .expect("EVAL");
    assert_eq!(scripted, None);
    wait_until(Duration::from_secs(10), "sweep after INVALIDATE", || {
        stats(&mut conn, "f").entries == 0
    });
    let _: () = redis::cmd("FLUSHDB").query(&mut conn).expect("FLUSHDB");
    assert_eq!(
        (stats(&mut conn, "f").entries, stats(&mut conn, "f").bytes),
        (0, 0)
    );

    // A plain key that looks like a stored name neither counts nor confuses.
    let _: () = redis::cmd("SET")
        .arg("f:{plain}")
        .arg("x")
        .arg("PX")
        .arg(50)
        .query(&mut conn)
        .expect("SET");
    set(&mut conn, "f", "short", 1, "v");
    std::thread::sleep(Duration::from_millis(1300));
    wait_until(Duration::from_secs(5), "both keys expire", || {
        let _: Option<String> = conn.get("f:{plain}").expect("GET");
        dbsize(&mut conn) == 0
    });
    let s = stats(&mut conn, "f");
    assert_eq!(
        (s.expired, s.entries),
        (1, 0),
        "only our entry counts as expired"
    );
}

#[test]
fn topkeys_stats_json_info_and_configs() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    set(&mut conn, "hot", "a", 600, "1");
    set(&mut conn, "hot", "b", 600, "2");
    for (key, times) in [("a", 30), ("b", 20), ("c", 10)] {
        for _ in 0..times {
            let _ = get(&mut conn, "hot", key);
        }
    }
    let top: Vec<Value> = redis::cmd("NSCACHE.TOPKEYS")
        .arg("hot")
        .arg(2)
        .query(&mut conn)
        .expect("TOPKEYS");
    assert_eq!(
        top,
        vec![
            Value::BulkString(b"a".to_vec()),
            Value::Int(30),
            Value::BulkString(b"b".to_vec()),
            Value::Int(20)
        ]
    );
    let err = redis::cmd("NSCACHE.TOPKEYS")
        .arg("hot")
        .arg(0)
        .query::<Value>(&mut conn)
        .expect_err("count 0");
    assert!(err.to_string().contains("invalid count"), "{err}");

    let s = stats(&mut conn, "hot");
    assert_eq!((s.hits, s.misses, s.sets), (50, 10, 2));
    assert!(s.read_latency_us.p50 >= 1 && s.read_latency_us.max >= s.read_latency_us.p99);
    assert!(s.write_latency_us.max >= 1);

    let all: String = redis::cmd("NSCACHE.STATS")
        .arg("JSON")
        .query(&mut conn)
        .expect("STATS JSON");
    let report = StatsReport::parse(&all).expect("report parses");
    assert_eq!(
        report
            .namespaces
            .iter()
            .map(|n| n.prefix.as_str())
            .collect::<Vec<_>>(),
        ["hot"]
    );

    let info: String = redis::cmd("INFO")
        .arg("nscache")
        .query(&mut conn)
        .expect("INFO nscache");
    let line = info
        .lines()
        .find(|l| l.starts_with("nscache_ns_hot:"))
        .expect("one line per namespace");
    for field in [
        "hits=50",
        "misses=10",
        "sets=2",
        "entries=2",
        "read_latency_us_p99=",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }

    let _: () = redis::cmd("NSCACHE.RESETSTATS")
        .arg("hot")
        .query(&mut conn)
        .expect("RESETSTATS");
    let s = stats(&mut conn, "hot");
    assert_eq!((s.hits, s.misses, s.entries), (0, 0, 2));

    // Namespace cap: past it, a clear error and nothing written.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("nscache.max-namespaces")
        .arg(2)
        .query(&mut conn)
        .expect("CONFIG SET");
    set(&mut conn, "second", "k", 60, "v");
    let err = redis::cmd("NSCACHE.SET")
        .arg(&["third", "k", "60", "v"])
        .query::<Value>(&mut conn)
        .expect_err("cap");
    assert!(err.to_string().contains("too many namespaces"), "{err}");
    assert_eq!(dbsize(&mut conn), 3);
    let err = redis::cmd("CONFIG")
        .arg("SET")
        .arg("nscache.topk")
        .arg(0)
        .query::<Value>(&mut conn)
        .expect_err("range");
    assert!(err.to_string().contains("nscache.topk"), "{err}");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("nscache.topk")
        .arg(1)
        .query(&mut conn)
        .expect("CONFIG SET");
    // RESETSTATS above emptied the tracker: read again, then only the hottest stays.
    for (key, times) in [("b", 3), ("a", 1)] {
        for _ in 0..times {
            let _ = get(&mut conn, "hot", key);
        }
    }
    let top: Vec<Value> = redis::cmd("NSCACHE.TOPKEYS")
        .arg("hot")
        .query(&mut conn)
        .expect("TOPKEYS");
    assert_eq!(
        top,
        vec![Value::BulkString(b"b".to_vec()), Value::Int(3)],
        "with nscache.topk 1 only the hottest key is kept"
    );
}

#[test]
fn module_configs_are_accepted_as_load_arguments() {
    let server =
        RedisServer::start_with_module_args(&["topk", "3", "publish-invalidations", "yes"]);
    let mut conn = server.conn();
    let cfg: HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("nscache.*")
        .query(&mut conn)
        .expect("CONFIG GET");
    assert_eq!(cfg["nscache.topk"], "3");
    assert_eq!(cfg["nscache.publish-invalidations"], "yes");
}

#[test]
fn invalidations_are_published_when_enabled() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let mut sub = server.conn();
    sub.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe("nscache:events").expect("SUBSCRIBE");

    set(&mut conn, "cand", "1", 60, "v");
    let _: i64 = redis::cmd("NSCACHE.DEL")
        .arg("cand")
        .arg("1")
        .query(&mut conn)
        .expect("DEL (publishing off)");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("nscache.publish-invalidations")
        .arg("yes")
        .query(&mut conn)
        .expect("CONFIG SET");
    let _: i64 = redis::cmd("NSCACHE.DEL")
        .arg("cand")
        .arg("1")
        .arg("2")
        .query(&mut conn)
        .expect("DEL");
    let _: i64 = redis::cmd("NSCACHE.INVALIDATE")
        .arg("cand")
        .query(&mut conn)
        .expect("INVALIDATE");

    let mut received = Vec::new();
    for _ in 0..2 {
        let msg = pubsub.get_message().expect("a published invalidation");
        let text: String = msg.get_payload().expect("payload");
        let envelope = Envelope::parse(&text).unwrap_or_else(|e| panic!("envelope: {e}\n{text}"));
        assert_eq!(envelope.event_type, "cache.invalidated");
        assert!(envelope.txid.is_none());
        received.push(
            CacheInvalidation::from_payload(&envelope.payload).expect("invalidation payload"),
        );
    }
    assert_eq!(received[0].prefix, "cand");
    assert_eq!(
        received[0].scope,
        InvalidationScope::Keys(vec!["1".into(), "2".into()])
    );
    assert_eq!(received[1].scope, InvalidationScope::Namespace);
}

#[test]
fn a_three_node_cluster_routes_every_keyed_command() {
    let cluster = RedisCluster::start(3);
    let client = cluster.client();
    let mut conn = client.get_connection().expect("cluster connection");
    let prefixes = ["cand", "proc", "analysis"];
    for i in 0..1000 {
        let prefix = prefixes[i % 3];
        let key = if i % 10 == 0 {
            format!("user:{{{i}}}:p")
        } else {
            format!("k{i}")
        };
        let reply: Value = redis::cmd("NSCACHE.SET")
            .arg(prefix)
            .arg(&key)
            .arg(600)
            .arg(i)
            .query(&mut conn)
            .expect("SET via cluster");
        assert_eq!(reply, Value::Okay);
    }
    for i in 0..1000 {
        let prefix = prefixes[i % 3];
        let key = if i % 10 == 0 {
            format!("user:{{{i}}}:p")
        } else {
            format!("k{i}")
        };
        let value: Option<String> = redis::cmd("NSCACHE.GET")
            .arg(prefix)
            .arg(&key)
            .query(&mut conn)
            .expect("GET via cluster");
        assert_eq!(value, Some(i.to_string()));
        // The entry lives on the node that owns the key's slot.
        let owner = cluster.node_for_key(&key);
        let stored: String = redis::cmd("NSCACHE.KEYNAME")
            .arg(prefix)
            .arg(&key)
            .query(&mut owner.conn())
            .expect("KEYNAME");
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&stored)
            .query(&mut owner.conn())
            .expect("EXISTS");
        assert_eq!(
            exists,
            1,
            "{stored} on the owner of slot {}",
            cluster.key_slot(&key)
        );
    }
    for i in (0..1000).step_by(2) {
        let prefix = prefixes[i % 3];
        let key = if i % 10 == 0 {
            format!("user:{{{i}}}:p")
        } else {
            format!("k{i}")
        };
        let n: i64 = redis::cmd("NSCACHE.DEL")
            .arg(prefix)
            .arg(&key)
            .query(&mut conn)
            .expect("DEL via cluster");
        assert_eq!(n, 1);
    }
    let total: i64 = cluster.nodes.iter().map(|n| dbsize(&mut n.conn())).sum();
    assert_eq!(total, 500);
}

#[test]
fn fifty_concurrent_clients_keep_counts_exact() {
    let server = RedisServer::start();
    let mut threads = Vec::new();
    for t in 0..50 {
        let client = server.client();
        threads.push(std::thread::spawn(move || {
            let mut conn = client.get_connection().expect("connection");
            let mut gets = 0u64;
            let mut sets = 0u64;
            for i in 0..2000u64 {
                let key = format!("k{}", (i * 7 + t) % 500);
                if i % 3 == 0 {
                    let _: Value = redis::cmd("NSCACHE.SET")
                        .arg("conc")
                        .arg(&key)
                        .arg(600)
                        .arg(i)
                        .query(&mut conn)
                        .expect("SET");
                    sets += 1;
                } else {
                    let _: Option<String> = redis::cmd("NSCACHE.GET")
                        .arg("conc")
                        .arg(&key)
                        .query(&mut conn)
                        .expect("GET");
                    gets += 1;
                }
            }
            (gets, sets)
        }));
    }
    let (gets, sets) = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .fold((0, 0), |(g, s), (g2, s2)| (g + g2, s + s2));
    let mut conn = server.conn();
    let s = stats(&mut conn, "conc");
    assert_eq!(s.hits + s.misses, gets, "every GET counted once");
    assert_eq!(s.sets, sets);
    assert_eq!(s.entries, dbsize(&mut conn) as u64);
}

#[test]
fn every_keyed_command_declares_the_user_key() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    // Cluster clients route on COMMAND INFO's (first, last, step): `key` from
    // argument 2. Since issue 14 the key specs are NOT_KEY (routed, not
    // ACL-checked by Redis), which Redis 7.0's COMMAND GETKEYS leaves out
    // (see redis_acl.rs).
    let cases = [
        ("nscache.get", (2, 2, 1)),
        ("nscache.mget", (2, -1, 1)),
        ("nscache.del", (2, -1, 1)),
        ("nscache.ttl", (2, 2, 1)),
        ("nscache.set", (2, 2, 1)),
    ];
    for (command, range) in cases {
        assert_eq!(key_range(&mut conn, command), range, "{command}");
    }
}
