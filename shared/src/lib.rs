//! Wire types shared by the `nscache` Redis module, the `txevents` Postgres extension
//! and their clients (SPEC 4): the event envelope, the NOTIFY payload, the cache
//! invalidation payload and the namespace stats report.
//!
//! Every type writes one canonical compact JSON text and reads it back strictly:
//! parsing never panics and returns a [`ParseError`] that names the problem. The golden
//! vectors in `tests/vectors/` pin the format for every crate of the workspace.
//!
//! ```
//! use cachetx_shared::{CacheInvalidation, Envelope, NotifyPayload};
//!
//! let text = r#"{"v":1,"id":7,"type":"cache.invalidate","aggregate_type":null,"aggregate_id":null,"payload":{"prefix":"candidates","scope":"namespace","v":1},"headers":{},"occurred_at":"2024-02-29T13:45:07.123456Z","txid":901}"#;
//! let event = Envelope::parse(text)?;
//! let invalidation = CacheInvalidation::from_payload(&event.payload)?;
//! assert_eq!(invalidation.prefix, "candidates");
//! assert_eq!(NotifyPayload::encode_for_envelope(&event), format!(r#"{{"v":1,"kind":"event","event":{text}}}"#));
//! # Ok::<(), cachetx_shared::ParseError>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod envelope;
pub mod error;
pub mod invalidation;
pub mod notify;
pub mod prefix;
pub mod slot;
pub mod stats;
pub mod timestamp;

mod json;

pub use envelope::{Envelope, RawEnvelope, FORMAT_VERSION};
pub use error::ParseError;
pub use invalidation::{
    CacheInvalidation, InvalidationScope, INVALIDATED_EVENT_TYPE, INVALIDATE_EVENT_TYPE,
};
pub use notify::{NotifyPayload, NOTIFY_PAYLOAD_LIMIT};
pub use prefix::{validate_prefix, PrefixError, MAX_PREFIX_LEN};
pub use stats::{LatencySummary, NamespaceStats, StatsReport};
pub use timestamp::Timestamp;
