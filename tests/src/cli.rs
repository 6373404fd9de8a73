//! The `cachetx` binary for the CLI tests: found (or built once) and run as a child
//! process with its own log file; a [`CliProcess`] stops its process on drop, also when
//! the test panics.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::tempdir::TempDir;

/// How long a stopped CLI process may take to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Path of the `cachetx` binary: `$CACHETX_BIN` if set and non-empty, otherwise
/// `<target dir>/debug/cachetx`, which is built (`cargo build -p cachetx-cli`) once
/// per test process so that it matches the checkout.
pub fn cachetx_bin() -> PathBuf {
    match BINARY.get_or_init(locate_or_build) {
        Ok(path) => path.clone(),
        Err(why) => panic!("{why}"),
    }
}

fn locate_or_build() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("CACHETX_BIN").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("the tests crate lives inside the workspace root")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|p| !p.is_empty())
        .map_or_else(|| root.join("target"), |t| root.join(t));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", "cachetx-cli", "--bin", "cachetx"])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run cargo build -p cachetx-cli: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build -p cachetx-cli failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target.join("debug").join("cachetx"))
}

/// A running `cachetx` subcommand.
#[derive(Debug)]
pub struct CliProcess {
    child: Option<Child>,
    dir: TempDir,
}

impl CliProcess {
    /// Starts `cachetx <args>` with `env` added to the environment (the `REDIS_*`,
    /// `DATABASE_URL` and `PG*` variables of the test process are removed first, so
    /// only what the test passes counts). Output goes to a log file.
    pub fn start(args: &[&str], env: &[(&str, String)]) -> CliProcess {
        let dir = TempDir::new("cli");
        let log = File::create(dir.path().join("cli.log")).expect("create the CLI log");
        let err = log.try_clone().expect("clone the log handle");
        let mut cmd = Command::new(cachetx_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .env("RUST_LOG", "info");
        configure_env(&mut cmd, env);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start cachetx {args:?}: {e}"));
        CliProcess {
            child: Some(child),
            dir,
        }
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        fs::read(self.dir.path().join("cli.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` and waits for the exit (SIGKILL after 10 s).
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("the process is running");
        send(&child, signal);
        wait_or_kill(&mut child)
    }

    /// SIGKILL, as a crash would; returns once the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            send(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Removes the test process's `REDIS_*`, `PG*` and `DATABASE_URL` variables and adds `env`.
fn configure_env(cmd: &mut Command, env: &[(&str, String)]) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("REDIS_") || name.starts_with("PG") || name == "DATABASE_URL" {
            cmd.env_remove(name);
        }
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
}

fn send(child: &Child, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

fn wait_or_kill(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                send(child, libc::SIGKILL);
                return child.wait().expect("wait for the killed process");
            }
        }
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- cachetx log ---\n{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            send(&child, libc::SIGTERM);
            wait_or_kill(&mut child);
        }
    }
}

/// Runs `cachetx <args>` to completion with `env` (as [`CliProcess::start`]) and
/// returns (status, stdout, stderr).
pub fn run(args: &[&str], env: &[(&str, String)]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(cachetx_bin());
    cmd.args(args).stdin(Stdio::null());
    configure_env(&mut cmd, env);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run cachetx {args:?}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The environment that points a `cachetx` process at a test's servers: Redis on
/// 127.0.0.1:`redis_port` and the test database.
pub fn server_env(redis_port: u16, db: &crate::TestDb) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_HOST", "127.0.0.1".to_string()),
        ("REDIS_PORT", redis_port.to_string()),
        ("DATABASE_URL", db.url()),
    ]
}

/// Waits until consumer group `group` exists in `db` (a relay creates it at start; it
/// receives the events committed after that).
pub fn wait_for_group(db: &crate::TestDb, group: &str) {
    let mut client = db.connect();
    crate::wait_until(
        Duration::from_secs(60),
        "the relay's consumer group",
        || {
            client
                .query_opt(
                    "SELECT 1 FROM txevents.consumers WHERE name = $1",
                    &[&group],
                )
                .expect("read txevents.consumers")
                .is_some()
        },
    );
}

/// Starts `cachetx relay` with `env`, polling every 200 ms and backing off at most
/// 300 ms (so a test sees retries within seconds), and waits until its consumer
/// group `relay` exists in `db`.
pub fn start_fast_relay(env: &[(&str, String)], db: &crate::TestDb) -> CliProcess {
    let relay = CliProcess::start(
        &[
            "relay",
            "--poll-interval-ms",
            "200",
            "--max-backoff-ms",
            "300",
        ],
        env,
    );
    wait_for_group(db, "relay");
    relay
}
