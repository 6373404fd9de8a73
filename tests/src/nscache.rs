//! Small helpers for tests that talk to nscache through a plain connection.

use std::time::Duration;

use cachetx_shared::NamespaceStats;
use redis::{Connection, Value};

use crate::{wait_until, RedisServer};

/// `NSCACHE.STATS prefix JSON`, parsed with the shared crate.
pub fn stats(conn: &mut Connection, prefix: &str) -> NamespaceStats {
    let json: String = redis::cmd("NSCACHE.STATS")
        .arg(prefix)
        .arg("JSON")
        .query(conn)
        .expect("NSCACHE.STATS JSON");
    NamespaceStats::parse(&json)
        .unwrap_or_else(|e| panic!("STATS JSON does not parse: {e}\n{json}"))
}

/// `NSCACHE.SET prefix key ttl value`, which must answer OK.
pub fn set(conn: &mut Connection, prefix: &str, key: &str, ttl: u64, value: &str) {
    let reply: Value = redis::cmd("NSCACHE.SET")
        .arg(prefix)
        .arg(key)
        .arg(ttl)
        .arg(value)
        .query(conn)
        .expect("NSCACHE.SET");
    assert_eq!(reply, Value::Okay);
}

/// `NSCACHE.GET prefix key`.
pub fn get(conn: &mut Connection, prefix: &str, key: &str) -> Option<String> {
    redis::cmd("NSCACHE.GET")
        .arg(prefix)
        .arg(key)
        .query(conn)
        .expect("NSCACHE.GET")
}

/// Loads `n` entries `key0..` into `prefix`, pipelined.
pub fn fill(conn: &mut Connection, prefix: &str, n: usize, ttl: u64, value: &str) {
    let indexes: Vec<usize> = (0..n).collect();
    for chunk in indexes.chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("NSCACHE.SET")
                .arg(prefix)
                .arg(format!("key{i}"))
                .arg(ttl)
                .arg(value)
                .ignore();
        }
        let _: () = pipe.query(conn).expect("pipelined NSCACHE.SET");
    }
}

/// `CONFIG SET name value`.
pub fn config_set(conn: &mut Connection, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(conn)
        .expect("CONFIG SET");
}

/// `DBSIZE` of the selected database.
pub fn dbsize(conn: &mut Connection) -> i64 {
    redis::cmd("DBSIZE").query(conn).expect("DBSIZE")
}

/// Starts BGREWRITEAOF and waits until the rewrite is done.
pub fn rewrite_aof(conn: &mut Connection) {
    let _: () = redis::cmd("BGREWRITEAOF")
        .query(conn)
        .expect("BGREWRITEAOF");
    wait_until(Duration::from_secs(20), "AOF rewrite", || {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(conn)
            .expect("INFO");
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    });
}

/// `DEBUG DIGEST` of the whole dataset.
pub fn digest(conn: &mut Connection) -> String {
    redis::cmd("DEBUG")
        .arg("DIGEST")
        .query(conn)
        .expect("DEBUG DIGEST")
}

/// `PEXPIRETIME stored`, for a stored name given as text or bytes.
pub fn pexpiretime(conn: &mut Connection, stored: impl AsRef<[u8]>) -> i64 {
    redis::cmd("PEXPIRETIME")
        .arg(stored.as_ref())
        .query(conn)
        .expect("PEXPIRETIME")
}

/// `field` of `INFO section`, trimmed, if present.
pub fn info_field(conn: &mut Connection, section: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO").arg(section).query(conn).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// A replication offset (`master_repl_offset`, `slave_repl_offset`) from
/// `INFO replication`, -1 if absent.
pub fn repl_offset(conn: &mut Connection, field: &str) -> i64 {
    info_field(conn, "replication", field)
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// Whether no namespace waits for the sweep (`nscache_sweep_pending:0`).
pub fn sweep_idle(conn: &mut Connection) -> bool {
    info_field(conn, "nscache", "nscache_sweep_pending").as_deref() == Some("0")
}

/// `namespaces` from `INFO nscache`.
pub fn namespaces(conn: &mut Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("nscache").query(conn).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("nscache_namespaces:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no namespaces line in INFO nscache:\n{info}"))
}

/// `used_memory` from `INFO memory`.
pub fn used_memory(conn: &mut Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query(conn).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("used_memory")
}

/// The server still answers PING on a new connection.
pub fn alive(server: &RedisServer) {
    let pong: String = redis::cmd("PING")
        .query(&mut server.conn())
        .expect("server still answers");
    assert_eq!(pong, "PONG");
}

/// CRC-64/Jones as Redis appends it to DUMP payloads.
pub fn crc64(data: &[u8]) -> u64 {
    let mut crc = 0u64;
    for &byte in data {
        crc ^= u64::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x95AC_9329_AC4B_C9B5
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Waits up to `timeout` until the lazy-free thread has freed everything
/// (`lazyfree_pending_objects:0` in `INFO memory`), e.g. after FLUSHALL ASYNC.
pub fn wait_lazy_free(conn: &mut Connection, timeout: Duration) {
    wait_until(timeout, "lazy free done", || {
        let memory: String = redis::cmd("INFO").arg("memory").query(conn).expect("INFO");
        memory.contains("lazyfree_pending_objects:0")
    });
}

/// The (first, last, step) key positions `COMMAND INFO command` declares:
/// what cluster clients route on.
pub fn key_range(conn: &mut Connection, command: &str) -> (i64, i64, i64) {
    let info = command_info(conn, command);
    let int = |v: &Value| match v {
        Value::Int(n) => *n,
        other => panic!("{command}: not an integer in COMMAND INFO: {other:?}"),
    };
    (int(&info[3]), int(&info[4]), int(&info[5]))
}

/// The flags of the first key spec of `command` (`COMMAND INFO`, field 9).
pub fn key_spec_flags(conn: &mut Connection, command: &str) -> Vec<String> {
    let info = command_info(conn, command);
    let Some(Value::Array(specs)) = info.get(8) else {
        panic!("{command}: no key specs in COMMAND INFO: {info:?}")
    };
    let Some(Value::Array(spec)) = specs.first() else {
        panic!("{command}: no key spec: {specs:?}")
    };
    let flags = spec
        .chunks(2)
        .find(|pair| matches!(&pair[0], Value::BulkString(b) if b.as_slice() == b"flags"))
        .map(|pair| pair[1].clone());
    let Some(Value::Array(flags)) = flags else {
        panic!("{command}: key spec without flags: {spec:?}")
    };
    flags
        .iter()
        .map(|f| match f {
            Value::SimpleString(s) => s.clone(),
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("{command}: flag {other:?}"),
        })
        .collect()
}

fn command_info(conn: &mut Connection, command: &str) -> Vec<Value> {
    let info: Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg(command)
        .query(conn)
        .expect("COMMAND INFO");
    match info {
        Value::Array(mut commands) if commands.len() == 1 => match commands.remove(0) {
            Value::Array(fields) => fields,
            other => panic!("{command}: unknown command? {other:?}"),
        },
        other => panic!("{command}: COMMAND INFO replied {other:?}"),
    }
}
