//! Queueing a NOTIFY from Rust without going through SQL.
//!
//! NOTIFY is transactional: queued now, delivered at commit, dropped with the
//! (sub)transaction that queued it. Queueing at emit time therefore gives
//! "published only after COMMIT, nothing after ROLLBACK [TO SAVEPOINT]" for free.

use std::ffi::{c_char, CString};

use crate::error::{TxEventsError, TxResult};

extern "C-unwind" {
    // Not in pgrx's bindings; declared in commands/async.h of every supported major.
    fn Async_Notify(channel: *const c_char, payload: *const c_char);
}

/// Queues `payload` on `channel` for delivery at commit.
pub fn queue(channel: &str, payload: &str) -> TxResult<()> {
    let channel = CString::new(channel).map_err(|_| TxEventsError::BadSetting {
        name: "txevents.channel",
        reason: "contains a NUL byte".into(),
    })?;
    // serde_json escapes NUL inside strings, so the payload never holds one.
    let payload = CString::new(payload)
        .map_err(|_| TxEventsError::Internal("NOTIFY payload contains a NUL byte".into()))?;
    // SAFETY: both strings are valid C strings for the call; a Postgres ERROR
    // raised inside (bad channel, full queue) is turned into a Rust panic that
    // pgrx reports as that ERROR.
    unsafe {
        pgrx::pg_sys::ffi::pg_guard_ffi_boundary(|| {
            Async_Notify(channel.as_ptr(), payload.as_ptr())
        });
    }
    Ok(())
}
