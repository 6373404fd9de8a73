//! A private PostgreSQL cluster per test process, one database per test.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::ports::free_port;
use crate::tempdir;

const SERVER_LOG: &str = "server.log";
const PG_CTL_OUT: &str = "pg_ctl.out";
/// Longest identifier Postgres keeps (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();
/// Start the server with `RUST_BACKTRACE=1` (see [`pg_with_rust_backtrace`]).
static SERVER_RUST_BACKTRACE: AtomicBool = AtomicBool::new(false);

/// Extra server settings (`name=value`) for [`pg_with_settings`].
static SERVER_SETTINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Like [`pg`], but the server starts with these extra settings (`name=value`, each
/// passed as `-c name=value`; e.g. `wal_level=logical`). Takes effect only if this is
/// the process's first use of the cluster: a test binary calls either this or [`pg`],
/// always with the same settings.
pub fn pg_with_settings(settings: &[&str]) -> &'static PgCluster {
    if CLUSTER.get().is_none() {
        let mut extra = SERVER_SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
        if extra.is_empty() {
            extra.extend(settings.iter().map(|s| s.to_string()));
        }
    }
    pg()
}

/// Like [`pg`], but the cluster's server runs with `RUST_BACKTRACE=1` in its
/// environment, to check that no Rust backtrace reaches a client. Takes effect only if
/// this is the process's first use of the cluster: a test binary calls either this or
/// [`pg`], never both.
pub fn pg_with_rust_backtrace() -> &'static PgCluster {
    SERVER_RUST_BACKTRACE.store(true, Ordering::SeqCst);
    pg()
}

/// The cluster of this test process, started on first use and stopped (and its directory
/// removed) when the process exits.
///
/// Settings from the environment:
/// - `TXEVENTS_PRELOAD`: value of `shared_preload_libraries` (default `txevents`; empty:
///   preload nothing).
/// - `TXEVENTS_PG_BINDIR`: the directory of the server binaries (`initdb`, `pg_ctl`,
///   `postgres`) to test against, e.g. `.pg/18/bin` for a `make deps` download; the
///   extension must have been installed for that server (`make build/pg PG=18`).
///   Default: the bin dir of `PG_CONFIG` if set, else Debian's
///   `/usr/lib/postgresql/15/bin` if present, else that of `pg_config` on PATH.
/// - `PG_CONFIG`: the `pg_config` to take the bin dir from when `TXEVENTS_PG_BINDIR` is
///   not set (default `/usr/lib/postgresql/15/bin/pg_config` if present, else
///   `pg_config` on PATH).
///
/// If the cluster cannot start, every call panics with the reason and the server log;
/// startup is attempted only once per process.
pub fn pg() -> &'static PgCluster {
    match CLUSTER.get_or_init(PgCluster::boot) {
        Ok(cluster) => cluster,
        Err(why) => panic!("{why}"),
    }
}

/// A running PostgreSQL cluster listening only on a unix socket in its own directory.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    data: PathBuf,
    bindir: PathBuf,
    port: u16,
    /// Run server tools through `runuser -u postgres --` (we are root; Postgres refuses root).
    as_postgres: bool,
    /// `shared_preload_libraries` (checked), for this server and its standbys.
    preload: String,
    /// Extra `name=value` settings (checked), kept for [`PgCluster::restart`].
    settings: Vec<String>,
    /// Whether the server runs with `RUST_BACKTRACE=1`.
    rust_backtrace: bool,
    databases: AtomicU64,
}

fn pg_config() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let pg15 = Path::new("/usr/lib/postgresql/15/bin/pg_config");
    if pg15.is_file() {
        return pg15.to_path_buf();
    }
    PathBuf::from("pg_config")
}

fn postgres_ids() -> Result<(u32, u32), String> {
    // SAFETY: getpwnam returns null or a pointer to static storage; the fields are read
    // at once, during cluster start (under the OnceLock, no other getpw* call of ours).
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        if pw.is_null() {
            return Err(
                "running as root, but there is no `postgres` user to run the Postgres server as"
                    .to_owned(),
            );
        }
        Ok(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The server binaries to test against (see [`pg`]).
fn bindir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TXEVENTS_PG_BINDIR").filter(|d| !d.is_empty()) {
        // Absolute: the tools run with the cluster directory as working directory.
        let dir = std::path::absolute(&dir)
            .map_err(|e| format!("TXEVENTS_PG_BINDIR={}: {e}", Path::new(&dir).display()))?;
        if !dir.join("pg_ctl").is_file() {
            return Err(format!(
                "TXEVENTS_PG_BINDIR={}: no pg_ctl there (`make deps` downloads 16-18 to .pg/NN/bin)",
                dir.display()
            ));
        }
        return Ok(dir);
    }
    let pg_config = pg_config();
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .map_err(|e| format!("run {} --bindir: {e}", pg_config.display()))?;
    if !out.status.success() {
        return Err(describe(&format!("{} --bindir", pg_config.display()), &out));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

impl PgCluster {
    fn boot() -> Result<PgCluster, String> {
        let preload = std::env::var("TXEVENTS_PRELOAD").unwrap_or_else(|_| "txevents".to_owned());
        let settings = SERVER_SETTINGS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        PgCluster::start(
            preload,
            settings,
            SERVER_RUST_BACKTRACE.load(Ordering::SeqCst),
        )
    }

    fn start(
        preload: String,
        settings: Vec<String>,
        rust_backtrace: bool,
    ) -> Result<PgCluster, String> {
        let bindir = bindir()?;
        // SAFETY: geteuid cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let owner = if as_postgres {
            Some(postgres_ids()?)
        } else {
            None
        };

        reap_stale_clusters(&bindir, as_postgres);

        if !preload
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_,.-".contains(c))
        {
            return Err(format!(
                "TXEVENTS_PRELOAD={preload:?}: only library names separated by commas are allowed"
            ));
        }

        let dir = tempdir::make_dir("pg");
        let cluster = PgCluster {
            data: dir.join("data"),
            dir,
            bindir,
            port: free_port(),
            as_postgres,
            preload: preload.clone(),
            settings,
            rust_backtrace,
            databases: AtomicU64::new(0),
        };
        match cluster.init_and_start(owner) {
            Ok(()) => {
                // SAFETY: registering a plain extern "C" fn; it never unwinds. Once per
                // process: the handler stops the process-wide cluster only.
                static ATEXIT: std::sync::Once = std::sync::Once::new();
                ATEXIT.call_once(|| {
                    if unsafe { libc::atexit(stop_at_exit) } != 0 {
                        eprintln!("cachetx-tests: atexit registration failed; Postgres will outlive this process");
                    }
                });
                Ok(cluster)
            }
            Err(why) => {
                let log = cluster.log();
                let hint = if preload.is_empty() {
                    String::new()
                } else {
                    format!(
                        "\n(started with shared_preload_libraries={preload}: is the extension \
                         built and installed, with shared-memory support? `make build`)"
                    )
                };
                cluster.shutdown();
                Err(format!(
                    "private Postgres cluster failed to start: {why}{hint}\n--- server log ---\n{log}"
                ))
            }
        }
    }

    fn init_and_start(&self, owner: Option<(u32, u32)>) -> Result<(), String> {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {} to postgres: {e}", self.dir.display()))?;
        }
        let out = self
            .tool("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
                "-U",
                "postgres",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run initdb: {e}"))?;
        if !out.status.success() {
            return Err(describe("initdb", &out));
        }

        self.pg_ctl_start()
    }

    /// Starts the server of an initialized data directory with the cluster's options.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut options = server_options(self.port, &self.dir, &self.preload);
        options.push_str(" -c fsync=off");
        for setting in &self.settings {
            if !setting
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.=-".contains(c))
            {
                return Err(format!(
                    "server setting {setting:?}: only name=value of [A-Za-z0-9_.-]"
                ));
            }
            options.push_str(&format!(" -c {setting}"));
        }
        pg_ctl_start(
            self.tool("pg_ctl"),
            &self.dir,
            &self.data,
            &options,
            self.rust_backtrace,
        )
    }

    /// Stops the server (`pg_ctl stop -m fast`, a clean shutdown) and starts it again
    /// with the same settings; connections are closed, data is kept.
    pub fn restart(&self) -> Result<(), String> {
        self.stop_and_start("fast")
    }

    /// Stops the server with `pg_ctl stop -m immediate` (a crash: every backend killed,
    /// no checkpoint, crash recovery at the start) and starts it again.
    pub fn restart_immediate(&self) -> Result<(), String> {
        self.stop_and_start("immediate")
    }

    fn stop_and_start(&self, mode: &str) -> Result<(), String> {
        let out = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run pg_ctl stop: {e}"))?;
        if !out.status.success() {
            return Err(describe(&format!("pg_ctl stop -m {mode}"), &out));
        }
        self.pg_ctl_start()
    }

    /// A server tool from the bin dir, run as `postgres` when we are root, in the cluster
    /// directory, without RUST_BACKTRACE (it would leak into error DETAILs).
    fn tool(&self, name: &str) -> Command {
        tool(&self.bindir, self.as_postgres, name, &self.dir)
    }

    /// Stops the server (fast, then immediate) if it runs, and removes the directory.
    fn shutdown(&self) {
        if self.data.join("postmaster.pid").exists() {
            for mode in ["fast", "immediate"] {
                let out = self
                    .tool("pg_ctl")
                    .arg("-D")
                    .arg(&self.data)
                    .args(["-m", mode, "-w", "-t", "30", "stop"])
                    .stdin(Stdio::null())
                    .output();
                match out {
                    Ok(out) if out.status.success() => break,
                    Ok(out) => eprintln!("cachetx-tests: {}", describe("pg_ctl stop", &out)),
                    Err(e) => eprintln!("cachetx-tests: run pg_ctl stop: {e}"),
                }
            }
        }
        tempdir::remove_dir(&self.dir);
    }

    fn is_running(&self) -> bool {
        self.data.join("postmaster.pid").exists()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server binaries this cluster runs (see [`pg`]).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The directory holding the server's unix socket (also the cluster's root dir).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        match fs::read(self.dir.join(SERVER_LOG)) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(no server log: {e})"),
        }
    }

    /// Connection settings for `db` as the superuser `postgres`.
    pub fn config(&self, db: &str) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// A new connection to `db` as the superuser `postgres`.
    pub fn connect(&self, db: &str) -> postgres::Client {
        self.config(db)
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to database {db:?} as postgres: {e}"))
    }

    /// A libpq-style URL for `db` as the superuser, e.g.
    /// `postgresql://postgres@%2Ftmp%2Fctx-pg-1-0:5432/db`.
    pub fn superuser_url(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@{}:{}/{}",
            percent_encode(&self.dir.to_string_lossy()),
            self.port,
            percent_encode(db)
        )
    }

    /// Creates a fresh database for `test_name` and runs `CREATE EXTENSION txevents` in it.
    pub fn create_db(&'static self, test_name: &str) -> TestDb {
        let db = self.create_db_without_extension(test_name);
        let result = db.connect().batch_execute("CREATE EXTENSION txevents");
        if let Err(e) = result {
            let code = sqlstate(&e).unwrap_or_default();
            let name = db.name.clone();
            drop(db);
            panic!(
                "CREATE EXTENSION txevents in {name}: [{code}] {e} (is the extension installed? `make build`)"
            );
        }
        db
    }

    /// Creates a fresh, empty database for `test_name` (no extension).
    pub fn create_db_without_extension(&'static self, test_name: &str) -> TestDb {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = db_name(test_name, n);
        self.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        TestDb {
            name,
            cluster: self,
        }
    }

    fn drop_db(&self, name: &str) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
        match self.config("postgres").connect(postgres::NoTls) {
            Ok(mut admin) => {
                if let Err(e) = admin.batch_execute(&sql) {
                    eprintln!("cachetx-tests: {sql}: {e}");
                }
            }
            // The cluster is already down (process exit): nothing left to drop.
            Err(_) if !self.is_running() => {}
            Err(e) => eprintln!("cachetx-tests: {sql}: connect: {e}"),
        }
    }
}

/// A cluster of its own for one test (not the process-wide [`pg`]), e.g. to run
/// without the preload or to restart the server; stopped and removed on drop.
#[derive(Debug)]
pub struct OwnedPgCluster(PgCluster);

/// Starts a private cluster with `shared_preload_libraries = preload` (empty: none) and
/// extra `name=value` settings, with the server binaries [`pg`] would use. Connect to
/// its `postgres` database with [`PgCluster::connect`].
pub fn start_cluster(preload: &str, settings: &[&str]) -> Result<OwnedPgCluster, String> {
    let settings = settings.iter().map(|s| s.to_string()).collect();
    PgCluster::start(preload.to_owned(), settings, false).map(OwnedPgCluster)
}

impl std::ops::Deref for OwnedPgCluster {
    type Target = PgCluster;

    fn deref(&self) -> &PgCluster {
        &self.0
    }
}

impl Drop for OwnedPgCluster {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A hot standby of the test cluster (streaming replication from a base backup), in a
/// directory of its own; stopped and removed on drop.
#[derive(Debug)]
pub struct PgStandby {
    dir: PathBuf,
    data: PathBuf,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PgCluster {
    /// Starts a hot standby of this cluster (`pg_basebackup -R`, then `pg_ctl start`
    /// with the same preload). Every database of the primary is on it; wait for a
    /// change to arrive with `pg_last_wal_replay_lsn()`.
    pub fn start_standby(&self) -> Result<PgStandby, String> {
        let dir = tempdir::make_dir("pg");
        let standby = PgStandby {
            data: dir.join("data"),
            dir,
            bindir: self.bindir.clone(),
            port: free_port(),
            as_postgres: self.as_postgres,
        };
        if self.as_postgres {
            let (uid, gid) = postgres_ids()?;
            std::os::unix::fs::chown(&standby.dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", standby.dir.display()))?;
        }
        let out = tool(
            &self.bindir,
            self.as_postgres,
            "pg_basebackup",
            &standby.dir,
        )
        .arg("-D")
        .arg(&standby.data)
        .arg("-h")
        .arg(&self.dir)
        .args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "--no-sync",
            "--checkpoint=fast",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run pg_basebackup: {e}"))?;
        if !out.status.success() {
            return Err(describe("pg_basebackup", &out));
        }
        let mut options = server_options(standby.port, &standby.dir, &self.preload);
        options.push_str(" -c hot_standby=on");
        pg_ctl_start(
            tool(&self.bindir, self.as_postgres, "pg_ctl", &standby.dir),
            &standby.dir,
            &standby.data,
            &options,
            false,
        )
        .map_err(|why| {
            let log = fs::read_to_string(standby.dir.join(SERVER_LOG)).unwrap_or_default();
            format!("standby did not start: {why}\n{log}")
        })?;
        Ok(standby)
    }
}

impl PgStandby {
    /// A new connection to `db` on the standby, as the superuser.
    pub fn connect(&self, db: &str) -> postgres::Client {
        let mut config = postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        config
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to standby database {db:?}: {e}"))
    }
}

impl Drop for PgStandby {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = tool(&self.bindir, self.as_postgres, "pg_ctl", Path::new("/"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdin(Stdio::null())
                .output();
        }
        tempdir::remove_dir(&self.dir);
    }
}

/// The `pg_ctl -o` options every server of the harness starts with: its port, its
/// socket directory, no TCP, prepared transactions for the 2PC tests, the preload.
fn server_options(port: u16, dir: &Path, preload: &str) -> String {
    let mut options = format!(
        "-p {port} -k {} -c listen_addresses='' -c max_prepared_transactions=10",
        dir.display()
    );
    if !preload.is_empty() {
        options.push_str(&format!(" -c shared_preload_libraries={preload}"));
    }
    options
}

/// `pg_ctl start` of the server in `data` (log in `dir`), waiting until it accepts
/// connections; `rust_backtrace` sets RUST_BACKTRACE for the server (pg_errors).
fn pg_ctl_start(
    mut pg_ctl: Command,
    dir: &Path,
    data: &Path,
    options: &str,
    rust_backtrace: bool,
) -> Result<(), String> {
    // pg_ctl's output goes to a file, not a pipe: the postmaster it forks must not
    // hold a pipe of ours open.
    let out_path = dir.join(PG_CTL_OUT);
    let out = File::create(&out_path).map_err(|e| format!("create {}: {e}", out_path.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("clone file handle: {e}"))?;
    if rust_backtrace {
        pg_ctl.env("RUST_BACKTRACE", "1");
    }
    let status = pg_ctl
        .arg("-D")
        .arg(data)
        .arg("-o")
        .arg(options)
        .arg("-l")
        .arg(dir.join(SERVER_LOG))
        .args(["-w", "-t", "60", "start"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| format!("run pg_ctl start: {e}"))?;
    if !status.success() {
        let said = fs::read_to_string(&out_path).unwrap_or_default();
        return Err(format!("pg_ctl start failed ({status}):\n{said}"));
    }
    Ok(())
}

fn tool(bindir: &Path, as_postgres: bool, name: &str, cwd: &Path) -> Command {
    let mut cmd = if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bindir.join(name));
        cmd
    } else {
        Command::new(bindir.join(name))
    };
    cmd.current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("PGDATA");
    cmd
}

extern "C" fn stop_at_exit() {
    // Never unwind out of an atexit handler.
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(cluster)) = CLUSTER.get() {
            cluster.shutdown();
        }
    });
}

/// Stops clusters (and removes directories) left behind by test processes that died
/// before their atexit handler ran.
fn reap_stale_clusters(bindir: &Path, as_postgres: bool) {
    for dir in tempdir::stale_dirs("pg") {
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            let out = tool(bindir, as_postgres, "pg_ctl", Path::new("/"))
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdin(Stdio::null())
                .output();
            if let Ok(out) = out {
                if !out.status.success() {
                    eprintln!(
                        "cachetx-tests: stale cluster {}: {}",
                        dir.display(),
                        describe("pg_ctl stop", &out)
                    );
                }
            }
        }
        tempdir::remove_dir(&dir);
    }
}

/// A database of its own for one test; dropped (`DROP DATABASE ... WITH (FORCE)`) on drop.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    cluster: &'static PgCluster,
}

impl TestDb {
    /// A new connection as the superuser `postgres`.
    pub fn connect(&self) -> postgres::Client {
        self.cluster.connect(&self.name)
    }

    /// A new connection as `role` (which must exist and may log in; authentication is
    /// `trust`).
    pub fn connect_as(&self, role: &str) -> postgres::Client {
        self.cluster
            .config(&self.name)
            .user(role)
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to database {:?} as {role:?}: {e}", self.name))
    }

    /// Connection settings for this database as the superuser.
    pub fn config(&self) -> postgres::Config {
        self.cluster.config(&self.name)
    }

    /// A libpq-style URL for this database as the superuser.
    pub fn url(&self) -> String {
        self.cluster.superuser_url(&self.name)
    }

    pub fn cluster(&self) -> &'static PgCluster {
        self.cluster
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.cluster.drop_db(&self.name);
    }
}

/// The SQLSTATE of a server error (e.g. `"22023"`); `None` for client-side errors
/// (connection, conversion, ...).
pub fn sqlstate(err: &postgres::Error) -> Option<String> {
    err.code().map(|code| code.code().to_owned())
}

/// `t_<sanitized test name>_<n>`, at most 63 bytes: lower-case ASCII letters, digits, `_`.
fn db_name(test_name: &str, n: u64) -> String {
    let suffix = format!("_{n}");
    let mut name = String::from("t_");
    for c in test_name.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_alphanumeric() { c } else { '_' };
        if c == '_' && name.ends_with('_') {
            continue;
        }
        name.push(c);
    }
    name.truncate(MAX_IDENT - suffix.len());
    let mut name = name.trim_end_matches('_').to_owned();
    name.push_str(&suffix);
    name
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_names_are_sanitized_and_short() {
        assert_eq!(db_name("events::Emit-Works", 3), "t_events_emit_works_3");
        let long = "x".repeat(200);
        let name = db_name(&long, 12345);
        assert!(name.len() <= MAX_IDENT, "{name}");
        assert!(name.ends_with("_12345"));
    }

    #[test]
    fn urls_encode_the_socket_dir() {
        assert_eq!(percent_encode("/tmp/ctx-pg-1-0"), "%2Ftmp%2Fctx-pg-1-0");
    }
}
