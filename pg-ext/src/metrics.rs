//! Transaction metrics in shared memory (SPEC 3.4): the Postgres glue.
//!
//! With `shared_preload_libraries = 'txevents'`, `_PG_init` asks for the shared area
//! (`metrics_store`, sized by `txevents.metrics_databases` at server start) and
//! installs:
//! - transaction callbacks that time client backends' transactions (start of the
//!   transaction to its end; `PRE_COMMIT` to `COMMIT` for the commit itself, WAL flush
//!   included) and add the event counts the transaction made (`tally`) when it commits;
//! - an `emit_log_hook` that counts every ERROR (and worse) a client backend reports, by
//!   SQLSTATE.
//!
//! Neither may raise an error or let a panic unwind into Postgres (a commit callback and
//! the log hook are places where an ERROR is illegal): they only touch atomics and
//! backend-local memory, and catch any panic. Without preload nothing is installed and
//! the SQL functions behind the metric views raise a 55000 error naming the setting.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::{TxEventsError, TxResult};
use crate::metrics_store::{DbSnapshot, EventCounter, Store};
use crate::sqlstate;
use crate::tally::Tally;

static BASE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static SLOTS: AtomicUsize = AtomicUsize::new(0);

static mut PREV_EMIT_LOG: pg_sys::emit_log_hook_type = None;

thread_local! {
    static TALLY: RefCell<Tally> = const { RefCell::new(Tally::new()) };
    /// When the running transaction's commit began (`PRE_COMMIT`), Postgres timestamp.
    static COMMIT_START: Cell<Option<i64>> = const { Cell::new(None) };
}

/// Installs the log hook; called from `_PG_init` when the library is being preloaded
/// (the shared area comes from `shmem`, transaction events through `xact`).
pub fn register() {
    // SAFETY: hook chain and callback lists, written once in the postmaster while it
    // loads libraries (single-threaded); backends inherit them.
    unsafe {
        PREV_EMIT_LOG = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(emit_log);
    }
}

/// Whether the shared area exists (the library was preloaded).
pub fn preloaded() -> bool {
    !BASE.load(Ordering::Acquire).is_null()
}

fn store() -> Option<Store<'static>> {
    let base = BASE.load(Ordering::Acquire);
    if base.is_null() {
        return None;
    }
    // SAFETY: set by shmem_startup to an area of size_for(SLOTS) bytes that lives as
    // long as the server; zeroed there on creation.
    Some(unsafe { Store::from_raw(base, SLOTS.load(Ordering::Acquire)) })
}

fn require_store() -> TxResult<Store<'static>> {
    store().ok_or(TxEventsError::NotPreloaded)
}

/// Attaches the shared area of `slots` databases (from `shmem`'s startup hook).
pub fn attach(base: *mut u8, slots: usize) {
    SLOTS.store(slots, Ordering::Release);
    BASE.store(base, Ordering::Release);
}

/// Whether this process is a client backend serving queries (not a background worker,
/// autovacuum, a WAL sender, nor a backend still starting up: the catalog transactions
/// of connection start are not the client's).
fn is_client_backend() -> bool {
    // SAFETY: plain reads of process-global state.
    unsafe {
        pg_sys::MyBackendType == pg_sys::BackendType::B_BACKEND
            && pg_sys::Mode == pg_sys::ProcessingMode::NormalProcessing
    }
}

fn now() -> i64 {
    // SAFETY: reads the clock; cannot fail.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn database() -> u32 {
    // SAFETY: plain read of process-global state.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Counts `n` events of `counter` for the running (sub)transaction; they reach shared
/// memory if and when the transaction commits.
pub fn count(counter: EventCounter, n: u64) {
    if !preloaded() || n == 0 {
        return;
    }
    // SAFETY: plain accessor of the current transaction state.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    TALLY.with(|t| t.borrow_mut().add(subxact, counter, n));
}

/// A transaction event (from `xact`).
pub fn on_xact(event: pg_sys::XactEvent::Type) {
    // An ERROR (or a panic turned into one) would be raised from inside COMMIT or
    // ABORT: nothing here raises, and a panic is dropped rather than passed on.
    let _ = catch_unwind(|| record_xact_event(event));
}

fn record_xact_event(event: pg_sys::XactEvent::Type) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT if is_client_backend() => {
            COMMIT_START.set(Some(now()));
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => finish(Some(true)),
        pg_sys::XactEvent::XACT_EVENT_ABORT => finish(Some(false)),
        // A prepared transaction's events are counted when it is prepared; its
        // COMMIT PREPARED is a transaction of its own.
        pg_sys::XactEvent::XACT_EVENT_PREPARE => finish(None),
        _ => {}
    }
}

/// Records the end of the transaction: `Some(committed)` for a commit or rollback,
/// `None` for PREPARE (events counted, no transaction).
fn finish(outcome: Option<bool>) {
    let commit_start = COMMIT_START.take();
    let events = TALLY.with(|t| {
        let mut t = t.borrow_mut();
        if outcome == Some(false) {
            t.clear();
            None
        } else {
            Some(t.take())
        }
    });
    let Some(store) = store() else { return };
    let client = is_client_backend();
    let Some(slot) = store.slot(database()) else {
        if client && outcome.is_some() {
            store.count_untracked();
        }
        return;
    };
    if let (true, Some(committed)) = (client, outcome) {
        let end = now();
        // SAFETY: the timestamp of the transaction's start, valid until it ends.
        let start = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
        let micros = |from: i64| u64::try_from(end.saturating_sub(from)).unwrap_or(0);
        let commit = if committed {
            commit_start.map(micros)
        } else {
            None
        };
        slot.record_xact(committed, micros(start), commit);
    }
    if let Some(events) = events {
        for (i, n) in events.into_iter().enumerate() {
            if n > 0 {
                slot.add_events(COUNTERS[i], n);
            }
        }
    }
}

const COUNTERS: [EventCounter; crate::metrics_store::EVENT_COUNTERS] = [
    EventCounter::Emitted,
    EventCounter::Published,
    EventCounter::Acked,
    EventCounter::Retried,
    EventCounter::DeadLettered,
    EventCounter::Redriven,
];

/// Rollback of subtransaction `my_subid` (from `xact`): its event counts go with it.
pub fn on_subxact_abort(my_subid: pg_sys::SubTransactionId) {
    let _ = catch_unwind(|| TALLY.with(|t| t.borrow_mut().abort_sub(my_subid)));
}

unsafe extern "C-unwind" fn emit_log(edata: *mut pg_sys::ErrorData) {
    // Runs while an error is being reported: raising another one, or unwinding, here
    // would recurse into the error machinery. Count, swallow any panic, chain.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: edata is the error being reported, valid for the call.
        unsafe { count_error(edata) }
    }));
    // SAFETY: forwarding the same argument down the hook chain.
    unsafe {
        if let Some(prev) = PREV_EMIT_LOG {
            prev(edata);
        }
    }
}

unsafe fn count_error(edata: *const pg_sys::ErrorData) {
    if edata.is_null() {
        return;
    }
    // SAFETY: non-null, valid for the call; message is null or a C string.
    let (elevel, code, message) = unsafe {
        let e = &*edata;
        let message = if e.message.is_null() {
            &b""[..]
        } else {
            CStr::from_ptr(e.message).to_bytes()
        };
        (e.elevel, e.sqlerrcode, message)
    };
    // SAFETY: plain read of process-global state. No Mode check: a connection refused
    // at start (FATAL) is a client's error too, counted under its database if known.
    let client = unsafe { pg_sys::MyBackendType == pg_sys::BackendType::B_BACKEND };
    if elevel < pg_sys::PGERROR as i32 || !client || code == 0 {
        return;
    }
    if let Some(slot) = store().and_then(|s| s.slot(database())) {
        slot.record_error(code, message, now());
    }
}

fn millis(micros: Option<u64>) -> Option<f64> {
    micros.map(|m| m as f64 / 1000.0)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn snapshots() -> TxResult<Vec<DbSnapshot>> {
    Ok(require_store()?.read_all())
}

type MetricsRow = (
    pg_sys::Oid,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
);

fn metrics_row(d: &DbSnapshot) -> MetricsRow {
    let q = |h: &crate::metrics_store::HistogramSnapshot, q: f64| millis(h.quantile(q));
    let max = |h: &crate::metrics_store::HistogramSnapshot| millis(h.quantile(1.0).map(|_| h.max));
    let e = |c: EventCounter| signed(d.events[c as usize]);
    (
        pg_sys::Oid::from_u32(d.oid),
        signed(d.commits),
        signed(d.rollbacks),
        q(&d.xact, 0.5),
        q(&d.xact, 0.9),
        q(&d.xact, 0.99),
        q(&d.xact, 0.999),
        max(&d.xact),
        q(&d.commit, 0.5),
        q(&d.commit, 0.9),
        q(&d.commit, 0.99),
        q(&d.commit, 0.999),
        max(&d.commit),
        e(EventCounter::Emitted),
        e(EventCounter::Published),
        e(EventCounter::Acked),
        e(EventCounter::Retried),
        e(EventCounter::DeadLettered),
        e(EventCounter::Redriven),
        signed(d.errors_total),
        signed(d.errors_overflow),
        d.reset_at,
    )
}

/// One row per database with metrics; the source of the `txevents.metrics` view.
/// Timestamps are Postgres microseconds (since 2000-01-01 UTC); durations in ms.
#[pg_extern(name = "_metrics", volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn txevents_metrics() -> TableIterator<
    'static,
    (
        name!(dboid, pg_sys::Oid),
        name!(commits, i64),
        name!(rollbacks, i64),
        name!(xact_p50_ms, Option<f64>),
        name!(xact_p90_ms, Option<f64>),
        name!(xact_p99_ms, Option<f64>),
        name!(xact_p999_ms, Option<f64>),
        name!(xact_max_ms, Option<f64>),
        name!(commit_p50_ms, Option<f64>),
        name!(commit_p90_ms, Option<f64>),
        name!(commit_p99_ms, Option<f64>),
        name!(commit_p999_ms, Option<f64>),
        name!(commit_max_ms, Option<f64>),
        name!(events_emitted, i64),
        name!(events_published, i64),
        name!(events_acked, i64),
        name!(events_retried, i64),
        name!(events_dead_lettered, i64),
        name!(events_redriven, i64),
        name!(errors, i64),
        name!(errors_overflow, i64),
        name!(reset_at_us, Option<i64>),
    ),
> {
    let rows: Vec<MetricsRow> = snapshots()
        .unwrap_or_else(|e| e.raise())
        .iter()
        .map(metrics_row)
        .collect();
    TableIterator::new(rows)
}

/// One row per (database, SQLSTATE) counted; the source of `txevents.errors`.
#[pg_extern(name = "_errors", volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn txevents_errors() -> TableIterator<
    'static,
    (
        name!(dboid, pg_sys::Oid),
        name!(sqlstate, String),
        name!(condition, Option<String>),
        name!(count, i64),
        name!(last_message, String),
        name!(last_at_us, i64),
    ),
> {
    let mut rows = Vec::new();
    for d in snapshots().unwrap_or_else(|e| e.raise()) {
        for e in d.errors {
            let Some(code) = sqlstate::unpack(e.code) else {
                continue;
            };
            let code = String::from_utf8_lossy(&code).into_owned();
            let condition = sqlstate::condition_name(&code).map(str::to_owned);
            rows.push((
                pg_sys::Oid::from_u32(d.oid),
                code,
                condition,
                signed(e.count),
                e.message,
                e.last_at,
            ));
        }
    }
    TableIterator::new(rows)
}

/// Every bucket of both histograms of every database; the source of
/// `txevents.latency_buckets`. `le` is the bucket's exclusive upper bound in seconds
/// (`Infinity` for the last), `cumulative` the count up to and including it.
#[pg_extern(name = "_latency_buckets", volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn txevents_latency_buckets() -> TableIterator<
    'static,
    (
        name!(dboid, pg_sys::Oid),
        name!(histogram, String),
        name!(bucket, i32),
        name!(le, f64),
        name!(count, i64),
        name!(cumulative, i64),
    ),
> {
    let mut rows = Vec::new();
    for d in snapshots().unwrap_or_else(|e| e.raise()) {
        for (name, h) in [("transaction", &d.xact), ("commit", &d.commit)] {
            let mut cumulative = 0u64;
            for (bucket, &n) in h.counts.iter().enumerate() {
                cumulative += n;
                let le = match crate::histogram::bounds(bucket).1 {
                    Some(upper) => upper as f64 / 1e6,
                    None => f64::INFINITY,
                };
                rows.push((
                    pg_sys::Oid::from_u32(d.oid),
                    name.to_owned(),
                    bucket as i32,
                    le,
                    signed(n),
                    signed(cumulative),
                ));
            }
        }
    }
    TableIterator::new(rows)
}

/// Zeroes the current database's metrics and errors.
#[pg_extern(name = "reset_metrics", volatile, parallel_restricted)]
fn txevents_reset_metrics() {
    let run = || -> TxResult<()> {
        let store = require_store()?;
        if let Some(slot) = store.slot(database()) {
            slot.reset(now());
        }
        Ok(())
    };
    run().unwrap_or_else(|e| e.raise())
}

/// Transactions not counted because every slot of `txevents.metrics_databases` was
/// taken by other databases (raise the setting when this grows).
#[pg_extern(name = "metrics_untracked", volatile, parallel_restricted)]
fn txevents_metrics_untracked() -> i64 {
    let store = require_store().unwrap_or_else(|e| e.raise());
    signed(store.untracked())
}
