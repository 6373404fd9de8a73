//! The extension's error type; each variant carries the SQLSTATE it is raised with.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Everything a txevents function can refuse.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TxEventsError {
    /// Someone added to txevents.outbox what emit's direct insert cannot honour.
    #[error("txevents.outbox has {0}, which emit's direct insert would bypass; remove it (write your own table from a consumer instead)")]
    OutboxAltered(&'static str),
    /// A relation emit writes is not where the extension put it.
    #[error("relation txevents.{0} does not exist (renamed, moved or dropped); undo that ALTER or reinstall the extension")]
    OutboxMissing(String),
    /// `txevents.outbox` is a relation emit cannot write as a heap (a partitioned or
    /// foreign table, a view put in place of the outbox).
    #[error("txevents.outbox is {0}, not an ordinary table; emit writes only an ordinary table: undo the change")]
    OutboxKind(&'static str),
    /// A column of txevents.outbox was added or retyped.
    #[error("txevents.outbox column {column} is not what emit writes ({found}); undo the ALTER TABLE on txevents.outbox or update the extension")]
    OutboxColumn {
        /// Position (1-based) or name of the column.
        column: String,
        /// What was found there.
        found: String,
    },
    /// A required argument was SQL NULL.
    #[error("{0} must not be null")]
    NullArgument(&'static str),
    /// The event type is the empty string.
    #[error("event_type must not be empty")]
    EmptyEventType,
    /// The event type is longer than 255 bytes.
    #[error("event_type is {0} bytes long, the limit is 255")]
    EventTypeTooLong(usize),
    /// A jsonb argument that must be an object is something else.
    #[error("{field} must be a JSON object, not {found}")]
    NotAnObject {
        /// Which argument.
        field: &'static str,
        /// The JSON kind that was passed.
        found: &'static str,
    },
    /// A GUC holds a value the function cannot use.
    #[error("invalid setting {name}: {reason}")]
    BadSetting {
        /// The GUC.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// An argument is out of its allowed range or form (the message says which).
    #[error("{0}")]
    InvalidArgument(String),
    /// A namespace prefix that `cachetx_shared::validate_prefix` refuses.
    #[error("invalid prefix: {0}")]
    BadPrefix(#[from] cachetx_shared::PrefixError),
    /// No consumer group of that name.
    #[error("consumer group \"{0}\" does not exist")]
    UndefinedConsumer(String),
    /// A consumer group of that name exists already.
    #[error("consumer group \"{0}\" already exists")]
    DuplicateConsumer(String),
    /// `nack` of an event the group does not hold in a claim.
    #[error("event {id} is not claimed by consumer group \"{consumer}\" (acked, nacked, or never polled)")]
    NotClaimed {
        /// The group.
        consumer: String,
        /// The event.
        id: i64,
    },
    /// `capture` of a relation OID that names no relation.
    #[error("relation with OID {0} does not exist")]
    UndefinedTable(u32),
    /// `capture` of something that is not an ordinary or partitioned table.
    #[error("\"{0}\" is not a table")]
    NotATable(String),
    /// A metrics function was called but the library was not preloaded.
    #[error("metrics need the extension's shared memory: add txevents to shared_preload_libraries (postgresql.conf) and restart PostgreSQL")]
    NotPreloaded,
    /// An SPI call failed in a way that is a bug, not user input.
    #[error("internal error: {0}")]
    Internal(String),
}

impl TxEventsError {
    /// The SQLSTATE clients see.
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            TxEventsError::OutboxAltered(_)
            | TxEventsError::OutboxKind(_)
            | TxEventsError::OutboxColumn { .. }
            | TxEventsError::OutboxMissing(_) => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            TxEventsError::NullArgument(_) => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            TxEventsError::EmptyEventType
            | TxEventsError::EventTypeTooLong(_)
            | TxEventsError::NotAnObject { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            TxEventsError::BadSetting { .. }
            | TxEventsError::InvalidArgument(_)
            | TxEventsError::BadPrefix(_) => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            TxEventsError::UndefinedConsumer(_) => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            TxEventsError::DuplicateConsumer(_) => PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            TxEventsError::NotClaimed { .. } => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            TxEventsError::NotATable(_) => PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            TxEventsError::UndefinedTable(_) => PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            TxEventsError::NotPreloaded => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            TxEventsError::Internal(_) => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        }
    }

    /// Raises the error as a Postgres ERROR (does not return).
    pub fn raise(self) -> ! {
        ErrorReport::new(self.sqlstate(), format!("txevents: {self}"), "txevents")
            .report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

impl From<pgrx::spi::Error> for TxEventsError {
    fn from(err: pgrx::spi::Error) -> Self {
        TxEventsError::Internal(err.to_string())
    }
}

/// Result of the extension's logic.
pub type TxResult<T> = Result<T, TxEventsError>;
