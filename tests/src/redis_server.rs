//! redis-server processes with the nscache module loaded, one per test, and small
//! Redis Clusters built from them.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use crate::ports::free_port;
use crate::tempdir::{self, TempDir};

/// How long a starting server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping server may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts with a fresh port when the port turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// Server log lines printed when a test panics while its server runs.
const LOG_TAIL_LINES: usize = 50;
const LOG_FILE: &str = "redis.log";
const PID_FILE: &str = "server.pid";

/// Path of the nscache module: `$NSCACHE_MODULE` if set and non-empty, otherwise
/// `<target dir>/release/libnscache.so`, where the target dir is `$CARGO_TARGET_DIR`
/// (relative to the workspace root) or `<workspace root>/target`.
///
/// The path may not exist; [`RedisServer::start`] panics with instructions if it doesn't.
pub fn nscache_module() -> PathBuf {
    if let Some(path) = std::env::var_os("NSCACHE_MODULE").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace root");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|p| !p.is_empty())
        .map_or_else(|| root.join("target"), |t| root.join(t));
    target.join("release").join("libnscache.so")
}

fn module_or_panic() -> PathBuf {
    let module = nscache_module();
    if !module.is_file() {
        panic!(
            "nscache module not found at {}: build it first with `make build` \
             (or `cargo build --release -p nscache`), or set NSCACHE_MODULE to the path \
             of libnscache.so",
            module.display()
        );
    }
    module
}

enum StartError {
    /// The port (or the cluster bus port) was taken: try again with new ports.
    PortClash(String),
    /// Anything else: give up and show this.
    Failed(String),
}

/// One redis-server process with the nscache module loaded, listening on 127.0.0.1,
/// with its own data directory. Dropping it stops the process (SIGTERM, then SIGKILL
/// after 5 s) and removes the directory.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// Arguments after ours; for cluster nodes this includes `--cluster-port`.
    extra_args: Vec<String>,
    /// Arguments passed to the module itself (after its path in `--loadmodule`).
    module_args: Vec<String>,
    module: PathBuf,
    child: Option<Child>,
    // Declared last: dropped (removed) after the process has been stopped in `drop`.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with the default arguments.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments appended to the defaults
    /// (later arguments win), e.g. `&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]`.
    pub fn start_with(args: &[&str]) -> RedisServer {
        Self::launch(args, &[], false)
    }

    /// Starts a server whose module gets `module_args` (e.g. `&["topk", "8"]`).
    pub fn start_with_module_args(module_args: &[&str]) -> RedisServer {
        Self::launch(&[], module_args, false)
    }

    /// Starts a server that loads `module` (another build of nscache, e.g. one
    /// with test-only features) instead of [`nscache_module`].
    pub fn start_with_module(module: &Path, args: &[&str]) -> RedisServer {
        assert!(module.is_file(), "no module at {}", module.display());
        Self::launch_module(module.to_path_buf(), args, &[], false)
    }

    /// Starts a server with `args` and module arguments `module_args`.
    pub fn start_with_args(args: &[&str], module_args: &[&str]) -> RedisServer {
        Self::launch(args, module_args, false)
    }

    /// Starts a server that replicates `primary` (`--replicaof`), with extra
    /// `args`, and waits until its replication link is up.
    pub fn start_replica_of(primary: &RedisServer, args: &[&str]) -> RedisServer {
        let port = primary.port().to_string();
        let mut all = vec!["--replicaof", "127.0.0.1", port.as_str()];
        all.extend_from_slice(args);
        let replica = Self::launch(&all, &[], false);
        replica.wait_for_link();
        replica
    }

    /// Waits until this replica reports `master_link_status:up`.
    pub fn wait_for_link(&self) {
        let mut conn = self.conn();
        crate::wait_until(Duration::from_secs(20), "replication link up", || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut conn)
                .expect("INFO replication");
            info.contains("master_link_status:up")
        });
    }

    /// Starts a server, retrying with new ports when the chosen one is taken. With
    /// `cluster_bus`, each attempt also gets a fresh `--cluster-port`.
    fn launch(args: &[&str], module_args: &[&str], cluster_bus: bool) -> RedisServer {
        Self::launch_module(module_or_panic(), args, module_args, cluster_bus)
    }

    fn launch_module(
        module: PathBuf,
        args: &[&str],
        module_args: &[&str],
        cluster_bus: bool,
    ) -> RedisServer {
        reap_stale_servers();
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let mut extra_args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            if cluster_bus {
                extra_args.push("--cluster-port".to_owned());
                extra_args.push(free_port().to_string());
            }
            let mut server = RedisServer {
                port: free_port(),
                extra_args,
                module_args: module_args.iter().map(|a| (*a).to_owned()).collect(),
                module: module.clone(),
                child: None,
                dir: TempDir::new("rd"),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(StartError::PortClash(log)) => {
                    server.stop();
                    last_log = log;
                }
                Err(StartError::Failed(why)) => {
                    server.stop();
                    panic!(
                        "redis-server failed to start: {why}\n--- {} ---\n{}",
                        server.dir.path().join(LOG_FILE).display(),
                        server.log()
                    );
                }
            }
        }
        panic!(
            "redis-server: port already in use {PORT_ATTEMPTS} times in a row; last log:\n{last_log}"
        )
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            // Tests use DEBUG DIGEST / DEBUG RELOAD; 7.0 disables DEBUG by default.
            .arg("--enable-debug-command")
            .arg("yes")
            .arg("--loadmodule")
            .arg(&self.module)
            .args(&self.module_args)
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            // A module panic with RUST_BACKTRACE set captures a backtrace inside the
            // server, which shows up in used_memory; keep servers deterministic.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null());
        cmd
    }

    /// Spawns the process (appending to the log file) and waits until it answers PING.
    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log_path = self.dir.path().join(LOG_FILE);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open redis-server log file");
        let log_err = log.try_clone().expect("clone log file handle");
        let child = self
            .command()
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                StartError::Failed(format!("spawn redis-server: {e} (is it installed?)"))
            })?;
        let pid = child.id();
        fs::write(self.dir.path().join(PID_FILE), pid.to_string()).expect("write server.pid");
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().expect("waitpid on redis-server") {
                    self.child = None;
                    let log = self.log();
                    return Err(if log.contains("Address already in use") {
                        StartError::PortClash(log)
                    } else {
                        StartError::Failed(format!("redis-server exited during startup: {status}"))
                    });
                }
            }
            let last_error = match self.server_pid() {
                Ok(answered) if answered == pid => return Ok(()),
                // Another process answering on "our" port: ours will fail to bind and
                // exit, which the check above turns into a retry.
                Ok(other) => format!("port answered by another redis (pid {other})"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(StartError::Failed(format!(
                    "no answer within {START_TIMEOUT:?} on port {} (last error: {last_error})",
                    self.port
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `process_id` from `INFO server` of whatever answers on our port, once it
    /// has finished loading its dataset (it answers INFO while still loading).
    fn server_pid(&self) -> redis::RedisResult<u32> {
        let mut conn = self
            .client()
            .get_connection_with_timeout(Duration::from_millis(500))?;
        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .arg("persistence")
            .query(&mut conn)?;
        if info.lines().any(|l| l.trim() == "loading:1") {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "still loading",
            )));
        }
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Parse, "INFO server without process_id"))
            })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's `--dir` (RDB, AOF, nodes.conf, and the log file `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis client for a valid URL")
    }

    /// A new RESP2 connection.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection()
            .unwrap_or_else(|e| panic!("connect to redis-server on port {}: {e}", self.port))
    }

    /// A new connection that negotiated RESP3 (`HELLO 3`) on connect.
    pub fn conn_resp3(&self) -> redis::Connection {
        let url = format!("{}?protocol=resp3", self.url());
        redis::Client::open(url)
            .expect("redis client for a valid URL")
            .get_connection()
            .unwrap_or_else(|e| panic!("RESP3 connect to redis-server on port {}: {e}", self.port))
    }

    /// Everything the server wrote to stdout/stderr so far (across restarts).
    pub fn log(&self) -> String {
        match fs::read(self.dir.path().join(LOG_FILE)) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(no log: {e})"),
        }
    }

    /// Whether the process is running (started and not stopped by us).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the process (SIGTERM, as a supervisor would; no SHUTDOWN command) and starts
    /// it again with the same port, directory and arguments, so it reloads its RDB/AOF.
    pub fn restart(&mut self) {
        self.stop();
        match self.spawn_and_wait() {
            Ok(()) => {}
            Err(StartError::PortClash(why) | StartError::Failed(why)) => {
                self.stop();
                panic!(
                    "redis-server on port {} failed to restart: {why}\n--- log ---\n{}",
                    self.port,
                    self.log()
                );
            }
        }
    }

    /// Stops the process: SIGTERM, up to 5 s for it to exit, then SIGKILL. A no-op if
    /// it is not running. The directory is kept until drop.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child, STOP_TIMEOUT);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() && thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "--- last {} lines of redis-server log (port {}) ---\n{}\n--- end of log ---",
                tail.len(),
                self.port,
                tail.join("\n")
            );
        }
        self.stop();
    }
}

/// SIGTERM, wait up to `timeout`, then SIGKILL; always reaps the child.
fn terminate(mut child: Child, timeout: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                eprintln!("cachetx-tests: waitpid({}): {e}", child.id());
                break;
            }
        }
    }
    if let Err(e) = child.kill() {
        eprintln!("cachetx-tests: SIGKILL {}: {e}", child.id());
    }
    if let Err(e) = child.wait() {
        eprintln!("cachetx-tests: waitpid({}): {e}", child.id());
    }
}

/// Once per process: kills redis-servers (and removes directories) left behind by test
/// processes that died without running their cleanup.
fn reap_stale_servers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for dir in tempdir::stale_dirs("rd") {
            let pid = fs::read_to_string(dir.join(PID_FILE))
                .ok()
                .and_then(|p| p.trim().parse::<libc::pid_t>().ok());
            if let Some(pid) = pid {
                // Only kill it if it is still the redis-server that runs in that dir.
                let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
                if cwd.as_deref() == Some(dir.as_path()) {
                    // SAFETY: plain kill(2); the pid was verified just above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            tempdir::remove_dir(&dir);
        }
    });
}

/// A Redis Cluster of `n` primaries (no replicas), each a [`RedisServer`] with the module.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

const CLUSTER_SLOTS: u32 = 16384;
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

impl RedisCluster {
    /// Starts `n_primaries` cluster-enabled servers, assigns the slots evenly, and waits
    /// until every node reports `cluster_state:ok` and knows all the others.
    ///
    /// With 3 or more primaries the cluster is made by `redis-cli --cluster create`;
    /// redis-cli refuses fewer than 3, so 1 or 2 primaries are joined with
    /// `CLUSTER ADDSLOTSRANGE` and `CLUSTER MEET` instead.
    pub fn start(n_primaries: usize) -> RedisCluster {
        assert!(n_primaries >= 1, "a cluster needs at least one primary");
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ];
        let nodes = (0..n_primaries)
            .map(|_| RedisServer::launch(&args, &[], true))
            .collect();
        let cluster = RedisCluster { nodes };
        if n_primaries >= 3 {
            cluster.create_with_redis_cli();
        } else {
            cluster.create_by_hand();
        }
        cluster.wait_until_ok();
        cluster
    }

    fn create_with_redis_cli(&self) {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port()));
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .expect("run `redis-cli --cluster create` (is redis-tools installed?)");
        if !out.status.success() {
            panic!(
                "`redis-cli --cluster create` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn create_by_hand(&self) {
        let n = u32::try_from(self.nodes.len()).expect("node count fits u32");
        for (i, node) in (0u32..).zip(&self.nodes) {
            let first = i * CLUSTER_SLOTS / n;
            let last = (i + 1) * CLUSTER_SLOTS / n - 1;
            let () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query(&mut node.conn())
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        let mut first = self.nodes[0].conn();
        for node in &self.nodes[1..] {
            let () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port())
                .arg(
                    node.cluster_bus_port()
                        .expect("cluster nodes are started with --cluster-port"),
                )
                .query(&mut first)
                .expect("CLUSTER MEET");
        }
    }

    fn wait_until_ok(&self) {
        let want_known = format!("cluster_known_nodes:{}", self.nodes.len());
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        for node in &self.nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.conn())
                    .expect("CLUSTER INFO");
                let ok = info.lines().any(|l| l.trim() == "cluster_state:ok")
                    && info.lines().any(|l| l.trim() == want_known);
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "cluster not ok within {CLUSTER_TIMEOUT:?}; CLUSTER INFO of port {}:\n{info}",
                        node.port()
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A cluster client seeded with every node.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>())
            .expect("cluster client for valid URLs")
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn key_slot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.nodes[0].conn())
            .expect("CLUSTER KEYSLOT")
    }

    /// The primary that serves `slot`, according to `CLUSTER NODES` of the first node.
    pub fn node_for_slot(&self, slot: u16) -> &RedisServer {
        let table: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.nodes[0].conn())
            .expect("CLUSTER NODES");
        let port = owner_port(&table, slot)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}; CLUSTER NODES:\n{table}"));
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("slot {slot} is served by unknown port {port}"))
    }

    /// The primary that serves `key`.
    pub fn node_for_key(&self, key: &str) -> &RedisServer {
        self.node_for_slot(self.key_slot(key))
    }
}

impl RedisServer {
    /// The `--cluster-port` this server was started with, if any.
    fn cluster_bus_port(&self) -> Option<u16> {
        self.extra_args
            .iter()
            .rposition(|a| a == "--cluster-port")
            .and_then(|i| self.extra_args.get(i + 1))
            .and_then(|p| p.parse().ok())
    }
}

/// Port of the primary whose slot ranges in a `CLUSTER NODES` table contain `slot`.
/// Lines: `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slots>...`
fn owner_port(table: &str, slot: u16) -> Option<u16> {
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !fields[2].split(',').any(|f| f == "master") {
            return None;
        }
        let serves = fields[8..].iter().any(|range| {
            // "[slot->-id]" / "[slot-<-id]" are migration markers, not ownership.
            if range.starts_with('[') {
                return false;
            }
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
        });
        if !serves {
            return None;
        }
        let addr = fields[1].split(['@', ',']).next()?;
        addr.rsplit_once(':')?.1.parse().ok()
    })
}
