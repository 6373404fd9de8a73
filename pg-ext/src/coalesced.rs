//! `txevents.notify = coalesced` (SPEC 3.2): notifications sent after commit by a
//! background worker, so committing transactions never take NOTIFY's global lock.
//!
//! - `emit` in coalesced mode writes, once per transaction, a row of
//!   `txevents.coalesced` (the transaction's `txid` and channel). The row commits or
//!   rolls back with the events (a savepoint rolled back past it takes it away, and the
//!   next emit writes it again), so only committed transactions are ever notified.
//! - At `PRE_COMMIT` (and `PRE_PREPARE`) such a transaction makes sure its database has
//!   a worker (a dynamic background worker, launched at most once at a time:
//!   `coalesced_state`); once it has committed it sets the worker's latch. No lock, no
//!   polling tick. `COMMIT PREPARED` sets the latch too.
//! - The worker, one per database (NOTIFY reaches the listeners of its own database
//!   only), loops: delete a batch of committed rows, read their transactions' events
//!   from the outbox through the same code as `txevents.get` and send the same
//!   notifications as `commit` mode, many in one transaction of its own, then commit.
//!   The rows are the position: deleted in the transaction that queues the
//!   notifications, they are gone exactly when the notifications are sent.
//! - Crash or restart: a terminated worker is restarted by the postmaster (1 s); after a
//!   server restart a starter worker (registered at preload) launches the workers of
//!   the databases listed in `$PGDATA/txevents_coalesced.oids`. Rows not yet deleted
//!   are notified then: at least once. Ordering: by transaction id, then event id (not
//!   commit order across transactions).
//! - DROP DATABASE stops the database's worker for good (see `notify`'s utility hook).

use std::cell::Cell;
use std::ffi::CString;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::coalesced_state::{format_oids, parse_oids, Registry, WorkerEntry};
use crate::error::{TxEventsError, TxResult};
use crate::metrics_store::EventCounter;

/// The list of databases whose workers a server restart starts again, in the data
/// directory (the working directory of every Postgres process).
const OIDS_FILE: &str = "txevents_coalesced.oids";
/// Marker rows a worker takes per transaction.
const BATCH: i64 = 1000;
/// `pg_stat_activity.backend_type` of the workers.
const WORKER_TYPE: &str = "txevents coalesced";

extern "C-unwind" {
    // Postgres's SIGTERM handler of backends (tcop/postgres.c), as the raw C function:
    // pgrx's `pg_sys::die` is a Rust wrapper, not a signal handler.
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

static BASE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    /// The subtransaction that wrote this transaction's marker row, if any.
    static MARKED: Cell<Option<pg_sys::SubTransactionId>> = const { Cell::new(None) };
    /// Set the worker's latch when the transaction commits.
    static WAKE: Cell<bool> = const { Cell::new(false) };
}

/// Attaches the shared area (from `shmem`'s startup hook).
pub fn attach(base: *mut u8) {
    BASE.store(base, Ordering::Release);
}

fn registry() -> Option<Registry<'static>> {
    let base = BASE.load(Ordering::Acquire);
    // SAFETY: set by shmem to an area of coalesced_state::size() bytes that lives as
    // long as the server, zeroed when created.
    (!base.is_null()).then(|| unsafe { Registry::from_raw(base) })
}

fn database() -> u32 {
    // SAFETY: plain read of process-global state.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Registers the starter worker; called from `_PG_init` while preloading (transaction
/// events come through `xact`).
pub fn register() {
    BackgroundWorkerBuilder::new("txevents coalesced starter")
        .set_type("txevents coalesced starter")
        .set_library("txevents")
        .set_function("txevents_coalesced_starter")
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load();
}

/// Records that the current transaction emitted events to be notified on `channel` by
/// the worker (once per transaction; again after a savepoint rollback took it away).
pub fn mark(txid: u64, channel: CString) -> TxResult<()> {
    if MARKED.get().is_some() {
        return Ok(());
    }
    let registry = registry().ok_or(TxEventsError::NotPreloaded)?;
    if registry.entry(database()).is_none() {
        return Err(TxEventsError::InvalidArgument(format!(
            "txevents.notify = coalesced serves at most {} databases; use commit mode here",
            crate::coalesced_state::MAX_DATABASES
        )));
    }
    let channel = channel.to_string_lossy().into_owned();
    Spi::connect_mut(|client| {
        crate::plans::execute(
            client,
            "INSERT INTO txevents.coalesced (txid, channel) VALUES ($1::text::xid8, $2)
             ON CONFLICT (txid) DO NOTHING",
            None,
            &[txid.to_string().into(), channel.into()],
        )
        .map(|_| ())
    })?;
    // SAFETY: plain accessor of the current transaction state.
    MARKED.set(Some(unsafe { pg_sys::GetCurrentSubTransactionId() }));
    Ok(())
}

/// Sets the worker's latch when the current transaction commits (`COMMIT PREPARED` of
/// a transaction that may have marked).
pub fn wake_at_commit() {
    WAKE.set(true);
}

/// A transaction event (from `xact`).
pub fn on_xact(event: pg_sys::XactEvent::Type) {
    match event {
        // Before the commit an ERROR is still allowed (it aborts the transaction).
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT | pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE
            if MARKED.get().is_some() =>
        {
            launch_if_needed(database());
            WAKE.set(true);
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            MARKED.set(None);
            if WAKE.replace(false) {
                wake(database());
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            MARKED.set(None);
            WAKE.set(false);
        }
        _ => {}
    }
}

/// Rollback of subtransaction `my_subid` (from `xact`): the marker row goes with the
/// subtransaction that wrote it (or a parent of it).
pub fn on_subxact_abort(my_subid: pg_sys::SubTransactionId) {
    if MARKED.get().is_some_and(|s| s >= my_subid) {
        MARKED.set(None);
    }
}

/// Sets the latch of database `oid`'s worker, if one runs. Never raises: called after
/// the commit.
fn wake(oid: u32) {
    if let Some(latch) = registry()
        .and_then(|r| r.entry(oid))
        .and_then(WorkerEntry::latch)
    {
        // SAFETY: the address of a running worker's latch in shared memory (a PGPROC's);
        // setting a latch of a process that has just exited is a harmless wakeup.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// Asks the postmaster for database `oid`'s worker unless one runs or is starting.
fn launch_if_needed(oid: u32) {
    let Some(entry) = registry().and_then(|r| r.entry(oid)) else {
        return;
    };
    if entry.latch().is_some() || !entry.should_launch(now()) {
        return;
    }
    let started = BackgroundWorkerBuilder::new(&format!("txevents coalesced notify {oid}"))
        .set_type(WORKER_TYPE)
        .set_library("txevents")
        .set_function("txevents_coalesced_main")
        .set_argument(Some(pg_sys::Datum::from(oid)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load_dynamic();
    if started.is_err() {
        // The events wait in txevents.coalesced; the next commit after the grace
        // period asks again.
        pgrx::warning!(
            "txevents: could not start the coalesced notify worker (max_worker_processes reached?); notifications wait until it starts"
        );
    }
}

/// Stops database `oid`'s worker for good before DROP DATABASE (which would otherwise
/// wait for it, and the postmaster would restart it against a missing database).
pub fn stop_for_drop(oid: u32) {
    let Some(registry) = registry() else {
        return;
    };
    let Some(entry) = registry.entry(oid) else {
        return;
    };
    entry.set_dropping();
    // The worker checks `dropping` each time it wakes, and exits for good.
    wake(oid);
    update_oids_file(&registry, |oids| oids.retain(|&o| o != oid));
}

/// Rewrites the on-disk database list with `change` applied, under the area's lock.
/// Failures are logged: the list only matters for the next server restart.
fn update_oids_file(registry: &Registry<'_>, change: impl FnOnce(&mut Vec<u32>)) {
    let _guard = registry.lock_file();
    let mut oids = std::fs::read_to_string(OIDS_FILE)
        .map(|t| parse_oids(&t))
        .unwrap_or_default();
    let before = oids.clone();
    change(&mut oids);
    if oids == before {
        return;
    }
    let tmp = format!("{OIDS_FILE}.tmp");
    let written =
        std::fs::write(&tmp, format_oids(&oids)).and_then(|()| std::fs::rename(&tmp, OIDS_FILE));
    if let Err(e) = written {
        pgrx::log!("txevents: could not write {OIDS_FILE}: {e}");
    }
}

/// The starter: launches the workers of the databases that used the coalesced mode
/// before the server (re)started, then exits.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn txevents_coalesced_starter(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    let oids = std::fs::read_to_string(OIDS_FILE)
        .map(|t| parse_oids(&t))
        .unwrap_or_default();
    for oid in oids {
        launch_if_needed(oid);
    }
}

/// A database's worker (`bgw_main_arg`: the database OID).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn txevents_coalesced_main(arg: pg_sys::Datum) {
    let oid = arg.value() as u32;
    // SIGTERM (pg_terminate_backend, shutdown) goes to Postgres's `die`, as in a
    // backend: the process ends with FATAL (exit code 1, so the postmaster starts a new
    // worker) at the next interrupt check, a lock wait included, and never inside a
    // critical section (the default bgworker handler raises FATAL from the signal
    // handler itself, which during a commit's WAL insert is a PANIC of the server). A
    // batch cut short rolls back and is sent again.
    // SAFETY: installs a handler of Postgres's own while signals are still blocked.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    let Some(registry) = registry() else {
        return;
    };
    let Some(entry) = registry.entry(oid) else {
        return;
    };
    if entry.dropping() {
        // Launched just before DROP DATABASE: do not connect to it.
        return;
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(oid)), None);
    // SAFETY: process globals of this worker; MyLatch is its PGPROC's latch in shared
    // memory, which other processes may set.
    let (pid, latch) = unsafe { (pg_sys::MyProcPid, pg_sys::MyLatch as usize) };
    if !entry.claim(pid, latch) {
        // Another worker serves this database (a launch raced a restart): exit for good.
        return;
    }
    // SAFETY: registers a plain callback that releases the entry however we exit.
    unsafe { pg_sys::before_shmem_exit(Some(release_entry), pg_sys::Datum::from(oid)) };
    update_oids_file(&registry, |oids| {
        if !oids.contains(&oid) {
            oids.push(oid)
        }
    });
    // Returning exits with code 0: the postmaster forgets the worker (DROP DATABASE,
    // DROP EXTENSION).
    while !entry.dropping() {
        if !drain() {
            // The extension was dropped from the database: nothing left to send, and
            // nothing to start after a restart.
            update_oids_file(&registry, |oids| oids.retain(|&o| o != oid));
            return;
        }
        if !BackgroundWorker::wait_latch(None) {
            break;
        }
    }
}

unsafe extern "C-unwind" fn release_entry(_code: i32, arg: pg_sys::Datum) {
    let oid = arg.value() as u32;
    // SAFETY: plain read of a process global.
    let pid = unsafe { pg_sys::MyProcPid };
    if let Some(entry) = registry().and_then(|r| r.entry(oid)) {
        entry.release(pid);
    }
}

/// Sends the notifications of every committed marked transaction, a batch per
/// transaction, until none is left; `false` when the extension is no longer installed
/// in the database.
fn drain() -> bool {
    loop {
        let taken = BackgroundWorker::transaction(|| send_batch().unwrap_or_else(|e| e.raise()));
        match taken {
            None => return false,
            Some(n) if n < BATCH as usize => return true,
            Some(_) => {}
        }
    }
}

/// One transaction's worth: deletes up to [`BATCH`] marker rows and queues their
/// events' notifications, sent when this transaction commits. `None` when there is no
/// `txevents.coalesced` (DROP EXTENSION).
fn send_batch() -> TxResult<Option<usize>> {
    Spi::connect_mut(|client| {
        if !lock_tables(client)? {
            return Ok(None);
        }
        let rows = crate::plans::execute(
            client,
            "DELETE FROM txevents.coalesced
              WHERE txid IN (SELECT txid FROM txevents.coalesced ORDER BY txid LIMIT $1)
             RETURNING txid::text, channel",
            None,
            &[BATCH.into()],
        )?;
        let mut by_channel: Vec<(String, Vec<String>)> = Vec::new();
        let mut taken = 0;
        for row in rows {
            let txid: String = row
                .get(1)?
                .ok_or_else(|| TxEventsError::Internal("coalesced txid is NULL".into()))?;
            let channel: String = row
                .get(2)?
                .ok_or_else(|| TxEventsError::Internal("coalesced channel is NULL".into()))?;
            taken += 1;
            match by_channel.iter_mut().find(|(c, _)| *c == channel) {
                Some((_, txids)) => txids.push(txid),
                None => by_channel.push((channel, vec![txid])),
            }
        }
        for (channel, txids) in by_channel {
            let channel = crate::notify::check_channel(&channel)?;
            let notifications = crate::emit::notifications_of(client, txids)?;
            for payload in &notifications {
                let payload = CString::new(payload.as_str()).map_err(|_| {
                    TxEventsError::Internal("NOTIFY payload contains a NUL byte".into())
                })?;
                crate::notify::send(&channel, &payload);
            }
            crate::metrics::count(EventCounter::Published, notifications.len() as u64);
        }
        Ok(Some(taken))
    })
}

/// The OIDs of the outbox and of the marker table, or `None` when either is gone.
fn table_oids(
    client: &mut pgrx::spi::SpiClient<'_>,
) -> TxResult<Option<(pg_sys::Oid, pg_sys::Oid)>> {
    let table = crate::plans::execute(
        client,
        "SELECT pg_catalog.to_regclass('txevents.outbox')::oid,
                pg_catalog.to_regclass('txevents.coalesced')::oid",
        Some(1),
        &[],
    )?;
    let row = table.first();
    let outbox: Option<pg_sys::Oid> = row.get(1)?;
    let marks: Option<pg_sys::Oid> = row.get(2)?;
    Ok(outbox.zip(marks))
}

/// Locks the outbox (read) and the marker table (write) before the batch touches
/// either, never waiting for one while holding the other. A statement that locks both
/// in the other order (DROP EXTENSION drops the outbox, then the marker table) would
/// otherwise deadlock with the worker, and Postgres could cancel the user's statement
/// rather than the worker's batch. `false` when either table is gone, as seen once
/// both locks are held (taking a lock processes the invalidations of a concurrent
/// DROP).
fn lock_tables(client: &mut pgrx::spi::SpiClient<'_>) -> TxResult<bool> {
    let Some((outbox, marks)) = table_oids(client)? else {
        return Ok(false);
    };
    let read = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    let write = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    // SAFETY: lock manager calls inside a transaction, on relation OIDs; a lock taken
    // here and released at once was not held before in this transaction (the batch's
    // first access to these tables), so the release does not drop an earlier hold.
    unsafe {
        loop {
            pg_sys::LockRelationOid(outbox, read);
            if pg_sys::ConditionalLockRelationOid(marks, write) {
                break;
            }
            pg_sys::UnlockRelationOid(outbox, read);
            pg_sys::LockRelationOid(marks, write);
            if pg_sys::ConditionalLockRelationOid(outbox, read) {
                break;
            }
            pg_sys::UnlockRelationOid(marks, write);
        }
    }
    Ok(table_oids(client)? == Some((outbox, marks)))
}
