//! Settings (GUCs) of the extension.

use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::{pg_sys, GucContext, GucEnum, GucFlags, GucRegistry, GucSetting};

/// Whether the library was loaded by `shared_preload_libraries` (set in `_PG_init`,
/// inherited by every backend).
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// `txevents.channel`: the NOTIFY channel events are published on.
pub static CHANNEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"txevents"));

/// `txevents.notify`: when to NOTIFY.
pub static NOTIFY: GucSetting<NotifyMode> = GucSetting::<NotifyMode>::new(NotifyMode::Commit);

/// `txevents.metrics_databases`: databases the shared-memory metrics keep apart (read
/// at server start; SPEC 3.4).
pub static METRICS_DATABASES: GucSetting<i32> = GucSetting::<i32>::new(64);

/// How committed events are announced (SPEC 3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, pgrx::PostgresGucEnum)]
pub enum NotifyMode {
    /// One NOTIFY per event, delivered at commit.
    #[name = c"commit"]
    Commit,
    /// No NOTIFY: consumers poll.
    #[name = c"off"]
    Off,
    /// A background worker sends the notifications after commit (needs the preload).
    #[name = c"coalesced"]
    Coalesced,
}

/// Registers the settings; called from `_PG_init`, told whether the library is being
/// preloaded.
pub fn register(preloading: bool) {
    PRELOADED.store(preloading, Ordering::Release);
    GucRegistry::define_string_guc(
        c"txevents.channel",
        c"NOTIFY channel for published events.",
        c"Listeners LISTEN on this channel; each committed event sends one notification.",
        &CHANNEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: check_notify is a plain function that neither raises nor panics.
    unsafe {
        GucRegistry::define_enum_guc_with_hooks(
            c"txevents.notify",
            c"When to send NOTIFY for emitted events: commit, coalesced or off.",
            c"commit: one notification per event, queued by the committing transaction; \
coalesced: sent after commit by a background worker (needs shared_preload_libraries); \
off: none (consumers poll).",
            &NOTIFY,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_notify),
            None,
            None,
        );
    }
}

/// Refuses `coalesced` when the library was not preloaded: there is no worker to send
/// the notifications (SPEC 3.2). Postgres reports the refusal with our message.
unsafe extern "C-unwind" fn check_notify(
    newval: *mut c_int,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: newval points to the proposed value for the duration of the call.
    let proposed = unsafe { *newval };
    if proposed != NotifyMode::Coalesced.to_ordinal() || PRELOADED.load(Ordering::Acquire) {
        return true;
    }
    // SAFETY: GUC_check_* are the documented way for a check hook to word its error;
    // the strings are copied into palloc'd memory as guc.c expects.
    unsafe {
        pg_sys::GUC_check_errcode(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE as c_int,
        );
        pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(
            c"txevents.notify = coalesced needs the extension preloaded: add txevents to shared_preload_libraries (postgresql.conf) and restart PostgreSQL".as_ptr(),
        );
    }
    false
}

/// Registers `txevents.metrics_databases`. Only while the library is preloaded:
/// Postgres refuses to create a server-start setting later (FATAL).
pub fn register_preload() {
    GucRegistry::define_int_guc(
        c"txevents.metrics_databases",
        c"Databases whose transaction metrics are kept in shared memory.",
        c"Sizes the shared memory of txevents.metrics at server start (about 12 kB per \
database); transactions of further databases are not counted.",
        &METRICS_DATABASES,
        1,
        100_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// `txevents.metrics_databases` as a count of slots.
pub fn metrics_databases() -> usize {
    usize::try_from(METRICS_DATABASES.get()).unwrap_or(1).max(1)
}

/// The channel in force, or an error when it is unset or empty.
pub fn channel() -> Result<String, crate::error::TxEventsError> {
    match CHANNEL.get() {
        Some(c) if !c.as_bytes().is_empty() => Ok(c.to_string_lossy().into_owned()),
        _ => Err(crate::error::TxEventsError::BadSetting {
            name: "txevents.channel",
            reason: "must be a non-empty channel name".into(),
        }),
    }
}
