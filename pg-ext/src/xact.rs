//! The extension's transaction callbacks: one pair registered with Postgres, handing
//! each event to the modules that follow transactions, in this order: `notify` (queues
//! `commit` mode's NOTIFYs at PRE_COMMIT, may raise an error there), then, when the
//! library is preloaded, `metrics` (times the transaction, adds its event counts) and
//! `coalesced` (launches and wakes the notify worker).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;

/// Whether the preloaded modules take part (set in the postmaster, inherited).
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Registers the callbacks; called once from `_PG_init`.
pub fn register(preloaded: bool) {
    PRELOADED.store(preloaded, Ordering::Release);
    // SAFETY: registration functions of xact.c, called once at library load.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    crate::notify::on_xact(event);
    if PRELOADED.load(Ordering::Relaxed) {
        crate::metrics::on_xact(event);
        crate::coalesced::on_xact(event);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    // Subtransaction ids only grow, and every subtransaction started since `my_subid`
    // is its child (or released into it): what they did goes with it.
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        crate::notify::on_subxact_abort(my_subid);
        if PRELOADED.load(Ordering::Relaxed) {
            crate::metrics::on_subxact_abort(my_subid);
            crate::coalesced::on_subxact_abort(my_subid);
        }
    }
}
