//! Short-named temporary directories under /tmp, removed on drop, and the reaping of
//! directories left behind by test processes that were killed before they could clean up.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Parent of every directory this crate creates. Fixed and short on purpose: a Postgres
/// socket path (`<dir>/.s.PGSQL.<port>`) must stay under ~100 bytes.
const ROOT: &str = "/tmp";

/// Creates `/tmp/ctx-<kind>-<pid>-<seq>` and returns its path. Nothing removes it: callers
/// that want removal on drop use [`TempDir`].
pub(crate) fn make_dir(kind: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    loop {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(ROOT).join(format!("ctx-{kind}-{pid}-{seq}"));
        match fs::create_dir(&path) {
            Ok(()) => return path,
            // Left by an earlier process that had the same pid; reaped separately.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create temp dir {}: {e}", path.display()),
        }
    }
}

/// Removes a directory tree, reporting failures other than "already gone" on stderr.
pub(crate) fn remove_dir(path: &Path) {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => eprintln!("cachetx-tests: could not remove {}: {e}", path.display()),
    }
}

/// A directory under /tmp that is removed, with its contents, on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `/tmp/ctx-<kind>-<pid>-<seq>`.
    pub fn new(kind: &str) -> TempDir {
        TempDir {
            path: make_dir(kind),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        remove_dir(&self.path);
    }
}

/// Whether a process with this pid exists and has not exited (a zombie waiting to be
/// reaped counts as dead; EPERM counts as alive: it is not ours to clean up after).
pub(crate) fn pid_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 performs only the existence and permission checks.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// State `Z` in `/proc/<pid>/stat` (`pid (comm) state ...`; comm may contain spaces).
fn is_zombie(pid: libc::pid_t) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_comm) = stat.rsplit_once(')')?;
            after_comm
                .split_whitespace()
                .next()
                .map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// Directories `/tmp/ctx-<kind>-<pid>-<seq>` whose owning test process no longer exists
/// (it was killed, or aborted, before its cleanup ran).
pub(crate) fn stale_dirs(kind: &str) -> Vec<PathBuf> {
    let prefix = format!("ctx-{kind}-");
    let me = std::process::id();
    let Ok(entries) = fs::read_dir(ROOT) else {
        return Vec::new();
    };
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some((pid, seq)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), seq.parse::<u32>()) else {
            continue;
        };
        let Ok(pid_t) = libc::pid_t::try_from(pid) else {
            continue;
        };
        if pid != me && !pid_alive(pid_t) {
            stale.push(entry.path());
        }
    }
    stale
}
