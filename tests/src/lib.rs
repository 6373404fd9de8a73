//! Test harness for the cachetx integration tests: real `redis-server` processes with the
//! nscache module (one per test, or a small Redis Cluster), a private PostgreSQL cluster
//! per test process with one database per test, free ports and polling helpers.
//!
//! Cleanup: a [`RedisServer`] stops its process and removes its directory on drop (also
//! when the test panics); the Postgres cluster is stopped by an `atexit` handler when the
//! test process exits, and each [`TestDb`] drops its database on drop. Directories and
//! servers left behind by a test process that was killed are reaped by the next one.

pub mod acl;
pub mod cli;
pub mod nscache;
pub mod pg_cluster;
pub mod ports;
pub mod prometheus;
pub mod redis_server;
pub mod tempdir;

use std::thread;
use std::time::{Duration, Instant};

pub use pg_cluster::{pg, sqlstate, PgCluster, TestDb};
pub use ports::free_port;
pub use redis_server::{nscache_module, RedisCluster, RedisServer};
pub use tempdir::TempDir;

/// Calls `f` until it returns true, sleeping a little longer each time (5 ms up to
/// 100 ms); panics naming `what` if that takes longer than `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
