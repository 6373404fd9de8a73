//! `cachetx relay --streams` on a group that already exists with the plain relay's
//! filter (`cache.invalidate` only): the group keeps its filter, so the relay would
//! mirror nothing but invalidations, silently. It must refuse to start and say why.

use std::process::{Command, Stdio};
use std::time::Duration;

use cachetx_tests::cli::{cachetx_bin, server_env};
use cachetx_tests::{pg, wait_until, RedisServer};

const WAIT: Duration = Duration::from_secs(60);

/// Kills the relay if the test fails while it still runs.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn streams_on_an_invalidations_only_group_is_refused_with_a_reason() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_relay_streams_group");
    db.connect()
        .batch_execute("SELECT txevents.create_consumer('relay', ARRAY['cache.invalidate'])")
        .expect("the plain relay's group");
    let dir = std::env::temp_dir().join(format!("cli_relay_streams_group_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("log dir");
    let log_path = dir.join("relay.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut cmd = Command::new(cachetx_bin());
    cmd.args(["relay", "--streams", "--max-backoff-ms", "300"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("REDIS_") || name.starts_with("PG") || name == "DATABASE_URL" {
            cmd.env_remove(name);
        }
    }
    for (name, value) in server_env(server.port(), &db) {
        cmd.env(name, value);
    }
    let mut child = Reaper(cmd.spawn().expect("start cachetx relay"));
    let mut status = None;
    wait_until(WAIT, "the relay refuses the group and exits", || {
        status = child.0.try_wait().expect("try_wait");
        status.is_some()
    });
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let status = status.expect("exited");
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("only receives cache.invalidate") && text.contains("--streams"),
        "{text}"
    );
}
