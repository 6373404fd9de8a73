//! Settings (GUCs) of the extension.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

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
}

/// Registers the settings; called from `_PG_init`.
pub fn register() {
    GucRegistry::define_string_guc(
        c"txevents.channel",
        c"NOTIFY channel for published events.",
        c"Listeners LISTEN on this channel; each committed event sends one notification.",
        &CHANNEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"txevents.notify",
        c"When to send NOTIFY for emitted events: commit or off.",
        c"commit: one notification per event after COMMIT; off: none (consumers poll).",
        &NOTIFY,
        GucContext::Userset,
        GucFlags::default(),
    );
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
