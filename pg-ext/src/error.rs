//! The extension's error type; each variant carries the SQLSTATE it is raised with.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Everything a txevents function can refuse.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TxEventsError {
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
    /// An SPI call failed in a way that is a bug, not user input.
    #[error("internal error: {0}")]
    Internal(String),
}

impl TxEventsError {
    /// The SQLSTATE clients see.
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            TxEventsError::NullArgument(_) => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            TxEventsError::EmptyEventType
            | TxEventsError::EventTypeTooLong(_)
            | TxEventsError::NotAnObject { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            TxEventsError::BadSetting { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
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
