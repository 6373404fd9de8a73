//! The module's error type; every variant becomes an error reply naming the problem.

use cachetx_shared::PrefixError;

/// Everything a command can refuse. Messages start with a Redis error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    /// The caller passed the wrong number of arguments.
    #[error("ERR wrong number of arguments for '{0}' command")]
    WrongArity(&'static str),
    /// The namespace name is not 1-64 chars of `[A-Za-z0-9_.-]`.
    #[error("ERR invalid prefix: {0}")]
    BadPrefix(#[from] PrefixError),
    /// `ttl` is not a whole number of seconds greater than zero.
    #[error("ERR invalid ttl: must be a whole number of seconds > 0")]
    BadTtl,
    /// `ttl` is so large that the absolute expiry would overflow.
    #[error("ERR invalid ttl: too large")]
    TtlTooLarge,
    /// A key form that is neither 0 nor 1 (NSCACHE.RESTOREENTRY).
    #[error("ERR invalid form: must be 0 (wrapped) or 1 (tagged)")]
    BadForm,
    /// A count that is not a whole number >= 1.
    #[error("ERR invalid count: must be a whole number >= 1")]
    BadCount,
    /// An option the command does not know.
    #[error("ERR unknown option '{0}'")]
    UnknownOption(String),
    /// Two options that exclude each other.
    #[error("ERR {0} and {1} options at the same time are not compatible")]
    ConflictingOptions(&'static str, &'static str),
    /// A value over the size limit.
    #[error("ERR value too large: {0} bytes, the limit is {1} bytes")]
    ValueTooLarge(usize, usize),
    /// The empty key has no slot a stored name could keep.
    #[error("ERR invalid key: the empty key cannot be cached")]
    EmptyKey,
    /// A key with `}` but no valid hash tag would change slot when wrapped.
    #[error("ERR invalid key: a key containing '}}' must carry a valid hash tag ({{...}}), otherwise its stored name 'prefix:{{key}}' would hash to another cluster slot")]
    UnroutableKey,
    /// The stored name holds a key that is not a cache entry.
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    /// The namespace cap (module config) is reached.
    #[error(
        "ERR too many namespaces: the limit of {0} is reached (CONFIG SET nscache.max-namespaces)"
    )]
    TooManyNamespaces(usize),
    /// NSCACHE.FORGET of a namespace that still holds entries.
    #[error("ERR namespace '{0}' holds {1} entries: only an empty namespace can be forgotten (NSCACHE.DEL or NSCACHE.INVALIDATE them, and retry once they are reclaimed)")]
    NamespaceNotEmpty(String, i64),
    /// NSCACHE.RESTOREENTRY from a client: only AOF loading and the
    /// replication link may run it.
    #[error("ERR NSCACHE.RESTOREENTRY is internal: only AOF loading and a primary's replication stream may run it (use NSCACHE.SET)")]
    InternalCommand,
    /// `lease_ms` is not a whole number of milliseconds in range.
    #[error("ERR invalid lease_ms: must be a whole number of milliseconds from 1 to {0}")]
    BadLeaseMs(i64),
    /// `window_ms` is not a whole number of milliseconds in range.
    #[error("ERR invalid window_ms: must be a whole number of milliseconds from 1 to {0}")]
    BadWindowMs(i64),
    /// A lease token that NSCACHE.FETCH cannot have issued.
    #[error("ERR invalid lease token: must be the 16 hex digits NSCACHE.FETCH replied")]
    BadToken,
    /// An option without its argument.
    #[error("ERR syntax error: {0}")]
    MissingArgument(&'static str),
    /// An option given twice.
    #[error("ERR syntax error: {0} given more than once")]
    DuplicateOption(&'static str),
    /// The user's ACL key patterns do not cover the stored names (or, for a
    /// namespace-wide command, `prefix:*`) with the permission it needs.
    #[error("NOPERM this user has no permissions to access one of the keys used as arguments (nscache namespace '{0}')")]
    NoPermission(String),
    /// Redis refused an operation the module asked for.
    #[error("ERR internal error: {0}")]
    Internal(&'static str),
}

// `redis_module` converts any `std::error::Error` into an error reply carrying its
// `Display` text, so the messages above are the replies. They must not contain
// CR, LF or NUL: only `UnknownOption` echoes client bytes, sanitised by `printable`.

/// Result of the module's logic.
pub type CacheResult<T> = Result<T, CacheError>;
