//! txevents: transactional domain events for Postgres (SPEC 3).
//!
//! `validate` is plain Rust; `emit`, `notify` and `guc` are the pgrx layer.

use pgrx::prelude::*;

mod emit;
mod error;
mod guc;
mod notify;
mod validate;

pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);

/// Registers the extension's settings when the library loads.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
}
