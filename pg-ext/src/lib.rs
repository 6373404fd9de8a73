//! txevents: transactional domain events for Postgres (SPEC 3).
//!
//! Plain Rust (unit-tested without a server): `validate`, `backoff`, `snapshot`.
//! The pgrx layer: `emit` (emit, invalidate, get), `consumer` (groups, poll, ack,
//! nack, dead letters, prune), `capture`, `notify` (post-commit and 2PC NOTIFY), `guc`.

use pgrx::prelude::*;

mod backoff;
mod capture;
mod consumer;
mod emit;
mod error;
mod guc;
mod jsonb;
mod notify;
mod outbox;
mod plans;
mod snapshot;
mod validate;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Registers the extension's settings, transaction callbacks and utility hook when the
/// library loads.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
    notify::register();
}
