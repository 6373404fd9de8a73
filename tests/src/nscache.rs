//! Small helpers for tests that talk to nscache through a plain connection.

use std::time::Duration;

use cachetx_shared::NamespaceStats;
use redis::{Connection, Value};

use crate::wait_until;

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
