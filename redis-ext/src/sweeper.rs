//! The background sweep: reclaims entries of invalidated generations (SPEC 2.3).
//!
//! A 10 ms timer scans the keyspace of every database with `RM_Scan`, visiting at
//! most `nscache.sweep-budget` keys per tick, and deletes the stale entries it
//! finds (replicating an UNLINK each). It runs only on primaries: replicas get
//! those UNLINKs through replication.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Duration;

use redis_module::{raw, Context, ContextFlags, RedisString};

use crate::entry::EntryRef;
use crate::openkey::{Content, OpenKey};
use crate::sweep::SweepSchedule;
use crate::{config, datatype};

const TICK: Duration = Duration::from_millis(10);

static SCHEDULE: Mutex<SweepSchedule> = Mutex::new(SweepSchedule::new());

/// Where the running pass is.
struct Pass {
    db: i32,
    cursor: NonNull<raw::RedisModuleScanCursor>,
    /// Entries this pass deleted. A pass that found some runs again: SWAPDB,
    /// MOVE or RESTORE may have put stale entries behind its cursor.
    reclaimed: usize,
}

// SAFETY: the cursor is only used from the main thread (timer callbacks).
unsafe impl Send for Pass {}

static PASS: Mutex<Option<Pass>> = Mutex::new(None);

fn schedule() -> std::sync::MutexGuard<'static, SweepSchedule> {
    SCHEDULE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asks for a full pass over the keyspace (after an invalidation or a load).
pub fn request() {
    schedule().request();
}

/// Whether a pass is owed or running (for INFO and tests); None when the
/// schedule is locked (a crash report must not wait for it).
pub fn busy() -> Option<bool> {
    match SCHEDULE.try_lock() {
        Ok(sched) => Some(sched.has_work()),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().has_work()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Whether Redis asks modules not to propagate anything now (CLIENT PAUSE
/// WRITE, FAILOVER): it asserts that nothing is propagated while paused.
pub fn replication_paused() -> bool {
    // SAFETY: a plain query of server state.
    unsafe { raw::RedisModule_AvoidReplicaTraffic.map(|f| f()) }.unwrap_or(0) != 0
}

/// Arms the sweep timer; called once at module load.
pub fn start(ctx: &Context) {
    ctx.create_timer(TICK, on_tick, ());
}

fn on_tick(ctx: &Context, _: ()) {
    let ticked = catch_unwind(AssertUnwindSafe(|| {
        crate::clock::recalibrate();
        tick(ctx);
    }));
    if ticked.is_err() {
        crate::log::warning("nscache: sweep tick failed; retrying next tick");
    }
    ctx.create_timer(TICK, on_tick, ());
}

fn tick(ctx: &Context) {
    let flags = ctx.get_flags();
    if flags.contains(ContextFlags::SLAVE) {
        // The primary sweeps and replicates its deletions here.
        schedule().settle_all();
        if let Some(pass) = PASS.lock().unwrap_or_else(|p| p.into_inner()).take() {
            destroy_cursor(pass.cursor);
        }
        return;
    }
    if flags.contains(ContextFlags::LOADING) || replication_paused() {
        return;
    }
    {
        let mut sched = schedule();
        if !sched.has_work() {
            return;
        }
        if sched.start_pass() {
            let Some(cursor) =
                unsafe { raw::RedisModule_ScanCursorCreate.map(|f| f()) }.and_then(NonNull::new)
            else {
                return;
            };
            *PASS.lock().unwrap_or_else(|p| p.into_inner()) = Some(Pass {
                db: 0,
                cursor,
                reclaimed: 0,
            });
        }
    }
    let mut pass_guard = PASS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(pass) = pass_guard.as_mut() else {
        schedule().finish_pass();
        return;
    };
    // SAFETY: plain getters/setters of the context's selected database.
    let original_db = unsafe { raw::RedisModule_GetSelectedDb.map(|f| f(ctx.ctx)) }.unwrap_or(0);
    let finished = scan(ctx, pass, config::sweep_budget());
    unsafe {
        if let Some(select) = raw::RedisModule_SelectDb {
            select(ctx.ctx, original_db);
        }
    }
    if finished {
        if let Some(pass) = pass_guard.take() {
            destroy_cursor(pass.cursor);
            let mut sched = schedule();
            sched.finish_pass();
            if pass.reclaimed > 0 {
                sched.request();
            }
        }
    }
}

fn destroy_cursor(cursor: NonNull<raw::RedisModuleScanCursor>) {
    // SAFETY: created by ScanCursorCreate and dropped from the pass, so unused.
    unsafe {
        if let Some(destroy) = raw::RedisModule_ScanCursorDestroy {
            destroy(cursor.as_ptr());
        }
    }
}

/// Scans up to `budget` keys; returns true when every database was covered.
fn scan(ctx: &Context, pass: &mut Pass, budget: usize) -> bool {
    let (Some(select), Some(scan), Some(restart)) = (
        unsafe { raw::RedisModule_SelectDb },
        unsafe { raw::RedisModule_Scan },
        unsafe { raw::RedisModule_ScanCursorRestart },
    ) else {
        return true;
    };
    let mut visited = 0usize;
    while visited < budget {
        // SAFETY: selecting a database that does not exist fails cleanly.
        if unsafe { select(ctx.ctx, pass.db) } != raw::Status::Ok as i32 {
            return true;
        }
        let mut found = Collector::default();
        // Each call walks one hash-table bucket: a few keys at most.
        let more = loop {
            // SAFETY: the cursor belongs to this pass; the callback gets `found`.
            let more = unsafe {
                scan(
                    ctx.ctx,
                    pass.cursor.as_ptr(),
                    Some(collect),
                    (&mut found as *mut Collector).cast(),
                )
            };
            if more == 0 || found.visited >= budget - visited || found.stale.len() >= 256 {
                break more != 0;
            }
        };
        visited += found.visited.max(1);
        for name in &found.stale {
            let name = RedisString::create_from_slice(ctx.ctx, name);
            pass.reclaimed += usize::from(reclaim(ctx, &name));
        }
        if !more {
            pass.db += 1;
            // SAFETY: restarting a cursor we own.
            unsafe { restart(pass.cursor.as_ptr()) };
        }
    }
    false
}

#[derive(Default)]
struct Collector {
    visited: usize,
    stale: Vec<Vec<u8>>,
}

unsafe extern "C" fn collect(
    _ctx: *mut raw::RedisModuleCtx,
    keyname: *mut raw::RedisModuleString,
    key: *mut raw::RedisModuleKey,
    privdata: *mut c_void,
) {
    // SAFETY: privdata is the Collector passed to RM_Scan for this call.
    let found = unsafe { &mut *privdata.cast::<Collector>() };
    found.visited += 1;
    if key.is_null() {
        return;
    }
    // SAFETY: key is an open key handed to us for this callback only.
    let ours = unsafe {
        raw::RedisModule_KeyType.map(|f| f(key)) == Some(raw::REDISMODULE_KEYTYPE_MODULE as i32)
            && raw::RedisModule_ModuleTypeGetType.map(|f| f(key)) == Some(datatype::raw_type())
    };
    if !ours {
        return;
    }
    let value = unsafe { raw::RedisModule_ModuleTypeGetValue.map(|f| f(key)) };
    if let Some(entry) = value.and_then(|v| unsafe { EntryRef::from_raw(v) }) {
        if !entry.is_current(entry.namespace().generation()) {
            found
                .stale
                .push(RedisString::string_as_slice(keyname).to_vec());
        }
    }
}

/// Deletes the entry stored under `name` if it is of an invalidated generation,
/// and replicates the deletion. Returns whether it deleted.
pub fn reclaim(ctx: &Context, name: &RedisString) -> bool {
    let key = OpenKey::write(ctx, name);
    let stale = matches!(key.content(), Ok(Content::Entry(entry)) if !entry.is_current(entry.namespace().generation()));
    if stale && key.delete().is_ok() {
        drop(key);
        ctx.replicate("UNLINK", &[name][..]);
        return true;
    }
    false
}
