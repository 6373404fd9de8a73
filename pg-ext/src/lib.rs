//! txevents: transactional domain events for Postgres (SPEC 3).
//!
//! Plain Rust (unit-tested without a server): `validate`, `backoff`, `snapshot`,
//! `poll_range` (where a poll reads next), `delivery` (the delivery state machine),
//! `histogram`, `sqlstate`, `metrics_store` (the metrics' shared-memory layout), `tally`
//! (a transaction's event counts), `coalesced_state` (the coalesced workers' shared
//! state), `oid_slots`.
//! The pgrx layer: `emit` (emit, invalidate, get), `outbox` (emit's direct insert with
//! the executor's index maintenance), `consumer` (groups, poll, ack, nack, dead
//! letters, prune), `capture`, `notify` (post-commit and 2PC NOTIFY), `metrics` (shared
//! memory, transaction callbacks, `emit_log_hook`, the metric functions), `coalesced`
//! (the `coalesced` notify mode's worker), `shmem`, `xact` (the transaction callbacks,
//! one pair for all modules), `jsonb`, `guc`.

use pgrx::prelude::*;

mod backoff;
mod capture;
mod claim_store;
mod coalesced;
mod coalesced_state;
mod consumer;
mod delivery;
mod emit;
mod error;
mod guc;
mod histogram;
mod jsonb;
mod legacy;
mod metrics;
mod metrics_store;
mod notify;
mod oid_slots;
mod outbox;
mod plans;
mod poll;
mod poll_range;
mod shmem;
mod snapshot;
mod sqlstate;
mod tally;
mod validate;
mod xact;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Refuses to run `function` (named in the message, e.g. `c"txevents.poll()"`) in a
/// read-only transaction, on a hot standby included, with Postgres's own 25006 error,
/// before it does anything: its SPI writes would otherwise ask for a transaction id
/// first (pgrx does, for every non-read-only SPI statement), which a standby refuses
/// with an XX000 "cannot assign TransactionIds during recovery".
pub(crate) fn require_writable(function: &std::ffi::CStr) {
    // SAFETY: raises a Postgres ERROR (re-raised through pgrx's guard) or returns.
    unsafe { pg_sys::PreventCommandIfReadOnly(function.as_ptr()) }
}

/// Registers the extension's settings, transaction callbacks and utility hook when the
/// library loads, and the metrics' shared memory and hooks when it is preloaded.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    disable_rust_backtraces();
    // SAFETY: a flag the postmaster sets while it loads shared_preload_libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    guc::register(preloading);
    notify::register();
    xact::register(preloading);
    if preloading {
        guc::register_preload();
        shmem::register();
        metrics::register();
        coalesced::register();
    }
}

/// Keeps Rust backtraces out of error messages.
///
/// pgrx appends a captured Rust backtrace to the DETAIL of every error that passes
/// through Rust (a Postgres ERROR raised under a pgrx guard included) whenever
/// `Backtrace::capture()` captures one, which it does when `RUST_BACKTRACE` or
/// `RUST_LIB_BACKTRACE` is set in the server's environment. Users must see the error's
/// own message and SQLSTATE, not frames of the extension: `RUST_LIB_BACKTRACE=0` turns
/// capturing off (it takes precedence over `RUST_BACKTRACE`) and only affects
/// `std::backtrace`, not panic messages. Runs in `_PG_init`, before anything can have
/// captured (std caches the setting at the first capture); with
/// `shared_preload_libraries` the postmaster sets it once for every backend.
fn disable_rust_backtraces() {
    // The backend is single-threaded while a library loads: nothing reads the
    // environment concurrently.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
}
