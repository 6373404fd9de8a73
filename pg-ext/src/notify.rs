//! Post-commit NOTIFY, including two-phase commit.
//!
//! `emit` does not call NOTIFY itself: Postgres refuses to PREPARE a transaction that
//! has queued a NOTIFY, so a plain NOTIFY at emit time would make every prepared
//! transaction that emits fail. Instead each notification waits in a backend-local
//! list, tagged with the subtransaction that emitted it:
//! - rollback of a subtransaction (ROLLBACK TO SAVEPOINT, a PL/pgSQL exception block)
//!   drops the entries it and its children added;
//! - `PRE_COMMIT` queues the rest with `Async_Notify`, so they go out with the commit
//!   exactly like a NOTIFY would (same queue, same commit ordering);
//! - `PRE_PREPARE` stores them in `txevents.prepared_notify` under the transaction's
//!   GID (the row is part of the prepared transaction), and `COMMIT PREPARED` of that
//!   GID, run in any session of the database, queues them in that session's
//!   transaction, which commits right after. `ROLLBACK PREPARED` discards the row with
//!   the rest of the transaction;
//! - abort clears the list.
//!
//! The GID is taken from the `PREPARE TRANSACTION` statement by a ProcessUtility hook,
//! which also runs the `COMMIT PREPARED` step; both need the library loaded in the
//! backend (it is, in the emitting one; for the committing one, preload the library).

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::{TxEventsError, TxResult};
use crate::metrics_store::EventCounter;

extern "C-unwind" {
    // Not in pgrx's bindings; declared in commands/async.h of every supported major.
    fn Async_Notify(channel: *const c_char, payload: *const c_char);
}

/// Postgres's limit on channel names (NAMEDATALEN - 1 bytes).
pub const MAX_CHANNEL_LEN: usize = 63;

struct Pending {
    subxact: pg_sys::SubTransactionId,
    channel: CString,
    payload: CString,
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    /// GID of the `PREPARE TRANSACTION` being run, until the transaction ends.
    static PREPARE_GID: RefCell<Option<String>> = const { RefCell::new(None) };
}

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// Checks a channel name the way NOTIFY will, so a bad setting fails at emit, not at COMMIT.
pub fn check_channel(channel: &str) -> TxResult<CString> {
    if channel.len() > MAX_CHANNEL_LEN {
        return Err(TxEventsError::BadSetting {
            name: "txevents.channel",
            reason: format!("is {} bytes long, the limit is 63", channel.len()),
        });
    }
    CString::new(channel).map_err(|_| TxEventsError::BadSetting {
        name: "txevents.channel",
        reason: "contains a NUL byte".into(),
    })
}

/// Remembers `payload` for `channel`, to be sent if and when the current
/// (sub)transaction commits.
pub fn queue(channel: CString, payload: String) -> TxResult<()> {
    // serde_json escapes NUL inside strings, so the payload never holds one.
    let payload = CString::new(payload)
        .map_err(|_| TxEventsError::Internal("NOTIFY payload contains a NUL byte".into()))?;
    // SAFETY: plain accessor of the current transaction state.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|p| {
        p.borrow_mut().push(Pending {
            subxact,
            channel,
            payload,
        })
    });
    Ok(())
}

/// Installs the utility hook; called from `_PG_init` (transaction events come
/// through `xact`).
pub fn register() {
    // SAFETY: registration functions of xact.c, called once at library load; the
    // hook chain is read and written only here, in the single backend thread.
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// Queues one NOTIFY in the current transaction (`Async_Notify`).
pub fn send(channel: &CStr, payload: &CStr) {
    // SAFETY: both are valid C strings for the call; a Postgres ERROR raised inside
    // is turned into a Rust panic that pgrx reports as that ERROR.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| Async_Notify(channel.as_ptr(), payload.as_ptr()));
    }
}

/// A transaction event (from `xact`).
pub fn on_xact(event: pg_sys::XactEvent::Type) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            for n in &pending {
                send(&n.channel, &n.payload);
            }
            crate::metrics::count(EventCounter::Published, pending.len() as u64);
        }
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => {
            let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            if !pending.is_empty() {
                let gid = PREPARE_GID.with(|g| g.borrow_mut().take());
                let result = match gid {
                    Some(gid) => save_prepared(&gid, &pending),
                    None => Err(TxEventsError::Internal(
                        "PREPARE TRANSACTION without a GID seen by txevents".into(),
                    )),
                };
                if let Err(e) = result {
                    e.raise();
                }
            }
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            PENDING.with(|p| p.borrow_mut().clear());
            PREPARE_GID.with(|g| g.borrow_mut().take());
        }
        _ => {}
    }
}

/// Rollback of subtransaction `my_subid` (from `xact`): drops what it and its children
/// queued.
pub fn on_subxact_abort(my_subid: pg_sys::SubTransactionId) {
    PENDING.with(|p| p.borrow_mut().retain(|n| n.subxact < my_subid));
}

#[allow(clippy::too_many_arguments)]
#[pg_guard]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: pstmt is the statement being run, valid for the call.
    let (kind, gid) = unsafe { transaction_stmt(pstmt) };
    if kind == Some(pg_sys::TransactionStmtKind::TRANS_STMT_PREPARE) {
        PREPARE_GID.with(|g| *g.borrow_mut() = gid.clone());
    }
    // SAFETY: as above.
    if let Some(oid) = unsafe { dropped_database(pstmt) } {
        crate::coalesced::stop_for_drop(oid);
    }
    // SAFETY: forwarding the arguments unchanged down the hook chain.
    unsafe {
        match PREV_PROCESS_UTILITY {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
    if kind == Some(pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT_PREPARED) {
        // The prepared transaction may hold a coalesced marker: wake the worker.
        crate::coalesced::wake_at_commit();
        if let Some(gid) = gid {
            if let Err(e) = publish_prepared(&gid) {
                e.raise();
            }
        }
    }
}

/// The OID of the database a `DROP DATABASE` statement drops, if it exists.
unsafe fn dropped_database(pstmt: *mut pg_sys::PlannedStmt) -> Option<u32> {
    // SAFETY: the caller passes a valid PlannedStmt; utilityStmt is a Node or null.
    unsafe {
        if pstmt.is_null() {
            return None;
        }
        let node = (*pstmt).utilityStmt;
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_DropdbStmt {
            return None;
        }
        let stmt = node.cast::<pg_sys::DropdbStmt>();
        if (*stmt).dbname.is_null() {
            return None;
        }
        let oid = pg_sys::get_database_oid((*stmt).dbname, true);
        (oid != pg_sys::InvalidOid).then(|| oid.to_u32())
    }
}

/// The kind and GID of a transaction-control statement, or `(None, None)`.
unsafe fn transaction_stmt(
    pstmt: *mut pg_sys::PlannedStmt,
) -> (Option<pg_sys::TransactionStmtKind::Type>, Option<String>) {
    // SAFETY: the caller passes a valid PlannedStmt; utilityStmt is a Node or null.
    unsafe {
        if pstmt.is_null() {
            return (None, None);
        }
        let node = (*pstmt).utilityStmt;
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_TransactionStmt {
            return (None, None);
        }
        let stmt = node.cast::<pg_sys::TransactionStmt>();
        let gid = if (*stmt).gid.is_null() {
            None
        } else {
            Some(CStr::from_ptr((*stmt).gid).to_string_lossy().into_owned())
        };
        (Some((*stmt).kind), gid)
    }
}

/// Whether the extension is installed in the current database.
fn extension_installed() -> bool {
    // SAFETY: catalog lookup by name; missing_ok so it never raises.
    unsafe { pg_sys::get_extension_oid(c"txevents".as_ptr(), true) != pg_sys::InvalidOid }
}

/// Runs `f` as the owner of `txevents.prepared_notify` (the extension's owner), like a
/// SECURITY DEFINER function would: the emitting or committing role may have no
/// privilege on the table. On error the transaction abort restores the user.
///
/// Also pushes a fresh active snapshot: transaction callbacks and transaction-control
/// statements run without one, and SPI needs it.
fn as_extension_owner<T>(f: impl FnOnce() -> TxResult<T>) -> TxResult<T> {
    // SAFETY: pushed here, popped below; an error aborts the transaction, which
    // resets the active snapshot stack.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let result = as_owner(f);
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    result
}

fn as_owner<T>(f: impl FnOnce() -> TxResult<T>) -> TxResult<T> {
    let owner: Option<pg_sys::Oid> = Spi::get_one(
        "SELECT relowner FROM pg_catalog.pg_class WHERE oid = 'txevents.prepared_notify'::pg_catalog.regclass",
    )?;
    let owner =
        owner.ok_or_else(|| TxEventsError::Internal("no owner of prepared_notify".into()))?;
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: saving and switching the current user, as fmgr_security_definer does.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let result = f();
    // SAFETY: restoring what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

fn save_prepared(gid: &str, pending: &[Pending]) -> TxResult<()> {
    let channels: Vec<String> = pending
        .iter()
        .map(|n| n.channel.to_string_lossy().into_owned())
        .collect();
    let payloads: Vec<String> = pending
        .iter()
        .map(|n| n.payload.to_string_lossy().into_owned())
        .collect();
    as_extension_owner(|| {
        Spi::run_with_args(
            "INSERT INTO txevents.prepared_notify (gid, channels, payloads) VALUES ($1, $2, $3)
             ON CONFLICT (gid) DO UPDATE SET channels = EXCLUDED.channels, payloads = EXCLUDED.payloads",
            &[gid.into(), channels.into(), payloads.into()],
        )?;
        Ok(())
    })
}

fn publish_prepared(gid: &str) -> TxResult<()> {
    if !extension_installed() {
        return Ok(());
    }
    let rows = as_extension_owner(|| {
        Spi::connect_mut(|client| {
            let table = client.update(
                "DELETE FROM txevents.prepared_notify WHERE gid = $1 RETURNING channels, payloads",
                None,
                &[gid.into()],
            )?;
            let mut rows = Vec::new();
            for row in table {
                // NOT NULL columns written together by save_prepared: anything else is
                // corrupt, and sending part of it would silently lose notifications.
                let column = |value: Option<Vec<Option<String>>>, what: &str| {
                    value
                        .ok_or_else(|| {
                            TxEventsError::Internal(format!(
                                "prepared_notify {gid:?}: {what} is NULL"
                            ))
                        })?
                        .into_iter()
                        .collect::<Option<Vec<String>>>()
                        .ok_or_else(|| {
                            TxEventsError::Internal(format!(
                                "prepared_notify {gid:?}: {what} holds a NULL element"
                            ))
                        })
                };
                let channels = column(row.get(1)?, "channels")?;
                let payloads = column(row.get(2)?, "payloads")?;
                if channels.len() != payloads.len() {
                    return Err(TxEventsError::Internal(format!(
                        "prepared_notify {gid:?}: {} channels for {} payloads",
                        channels.len(),
                        payloads.len()
                    )));
                }
                rows.push((channels, payloads));
            }
            Ok::<_, TxEventsError>(rows)
        })
    })?;
    for (channels, payloads) in rows {
        for (channel, payload) in channels.into_iter().zip(payloads) {
            let channel = check_channel(&channel)?;
            let payload = CString::new(payload)
                .map_err(|_| TxEventsError::Internal("stored payload holds a NUL byte".into()))?;
            send(&channel, &payload);
            crate::metrics::count(EventCounter::Published, 1);
        }
    }
    Ok(())
}
