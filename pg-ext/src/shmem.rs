//! The extension's shared memory (with `shared_preload_libraries` only): one area for
//! the metrics (`metrics_store`, sized by `txevents.metrics_databases`) and one for the
//! coalesced notify workers (`coalesced_state`), requested and attached through
//! Postgres's shmem hooks (PostgreSQL 15+).

use std::ffi::CStr;

use pgrx::pg_sys;

use crate::{coalesced, coalesced_state, guc, metrics, metrics_store};

static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Installs the hooks; called from `_PG_init` while preloading.
pub fn register() {
    // SAFETY: hook chains written once in the postmaster while it loads libraries.
    unsafe {
        PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: chaining to the previous hook, then asking for our bytes while requests
    // are allowed (this hook is the place for it since PostgreSQL 15).
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(metrics_store::size_for(guc::metrics_databases()));
        pg_sys::RequestAddinShmemSpace(coalesced_state::size());
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: chaining to the previous hook.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            prev();
        }
    }
    let slots = guc::metrics_databases();
    metrics::attach(
        area(c"txevents metrics", metrics_store::size_for(slots)),
        slots,
    );
    coalesced::attach(area(c"txevents coalesced", coalesced_state::size()));
}

/// The named area of `size` bytes, zeroed when it is created (zero is the empty state
/// of both areas).
fn area(name: &CStr, size: usize) -> *mut u8 {
    // SAFETY: the standard ShmemInitStruct dance under AddinShmemInitLock
    // (MainLWLockArray[21] in every supported major).
    unsafe {
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let base = pg_sys::ShmemInitStruct(name.as_ptr(), size, &mut found).cast::<u8>();
        if !found {
            std::ptr::write_bytes(base, 0, size);
        }
        pg_sys::LWLockRelease(lock);
        base
    }
}
