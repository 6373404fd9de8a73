//! The demo's private servers: a redis-server with the nscache module and a Postgres
//! cluster with txevents preloaded, each on a free port in its own temp directory,
//! stopped and removed on drop. As root, Postgres runs as the `postgres` user (it
//! refuses root), as in the test harness.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A temp directory removed on drop.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// Creates `/tmp/cachetx-demo-<pid>-<n>`, traversable by the `postgres` user.
    pub fn new() -> Result<WorkDir> {
        let base = std::env::temp_dir();
        for n in 0..100u32 {
            let path = base.join(format!("cachetx-demo-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    set_mode(&path, 0o755)?;
                    return Ok(WorkDir(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("create {}", path.display())),
            }
        }
        bail!("cannot create a temp directory in {}", base.display())
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in /tmp is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// A free TCP port on 127.0.0.1 (the OS picks one; it is free when we ask).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A private redis-server; killed on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PrivateRedis {
    /// Starts redis-server with `module` loaded, in `dir`.
    pub fn start(module: &Path, dir: &Path) -> Result<PrivateRedis> {
        if !module.is_file() {
            bail!(
                "nscache module not found at {} (run `make build`, or pass --module / set NSCACHE_MODULE)",
                module.display()
            );
        }
        // redis-server changes into --dir before loading the module.
        let module = std::fs::canonicalize(module)
            .with_context(|| format!("resolve {}", module.display()))?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("redis.log")).context("create redis.log")?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args(["--save", "", "--appendonly", "no", "--loadmodule"])
            .arg(&module)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server (is the redis-server package installed?)")?;
        let mut server = PrivateRedis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                bail!("redis-server exited ({status}):\n{log}");
            }
            if Instant::now() > deadline {
                bail!("redis-server did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // Already exited is fine; nothing else to do on failure.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Postgres cluster; stopped on drop.
#[derive(Debug)]
pub struct PrivatePostgres {
    bindir: PathBuf,
    data: PathBuf,
    /// The socket directory.
    pub socket_dir: PathBuf,
    /// Its port.
    pub port: u16,
}

impl PrivatePostgres {
    /// initdb + pg_ctl start with `shared_preload_libraries = 'txevents'`, socket only.
    pub fn start(bindir: &Path, dir: &Path) -> Result<PrivatePostgres> {
        let as_root = is_root();
        if as_root {
            run(Command::new("chown").arg("postgres:postgres").arg(dir))
                .context("give the demo directory to the postgres user")?;
        }
        let data = dir.join("pg");
        let port = free_port()?;
        run(pg_command(as_root, &bindir.join("initdb"))
            .args([
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-U",
                "postgres",
                "--no-sync",
                "-D",
            ])
            .arg(&data))
        .context("initdb")?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses='' -c shared_preload_libraries=txevents -c fsync=off -c max_connections=200",
            dir.display()
        );
        let server = PrivatePostgres {
            bindir: bindir.to_path_buf(),
            data: data.clone(),
            socket_dir: dir.to_path_buf(),
            port,
        };
        run(pg_command(as_root, &bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]))
        .map_err(|e| {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            anyhow::anyhow!("{e:#}\n{log}")
        })
        .context("pg_ctl start (is txevents installed? `make build`)")?;
        Ok(server)
    }

    /// A libpq key=value connection string for database `postgres` as `postgres`.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Best effort on the way out; the directory goes with WorkDir.
        let _ = run(pg_command(is_root(), &self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]));
    }
}

/// True when running as root (Postgres must then run as `postgres`).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn pg_command(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The bin directory of the Postgres to start: `pg_config --bindir` of Debian's 15 if
/// present, else of `pg_config` on PATH.
pub fn default_pg_bindir() -> Result<PathBuf> {
    let debian = Path::new("/usr/lib/postgresql/15/bin/pg_config");
    let pg_config = if debian.is_file() {
        debian.to_path_buf()
    } else {
        PathBuf::from("pg_config")
    };
    let out = run(Command::new(&pg_config).arg("--bindir"))
        .context("find Postgres (pg_config --bindir); pass --pg-bindir")?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The nscache module: `$NSCACHE_MODULE`, else `libnscache.so` next to this binary
/// (`target/release/`), else `target/release/libnscache.so` under the current directory.
pub fn default_module() -> PathBuf {
    if let Some(path) = std::env::var_os("NSCACHE_MODULE").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("libnscache.so")));
    match beside {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("target/release/libnscache.so"),
    }
}
