//! `txevents.capture(table)` / `txevents.uncapture(table)`: row triggers that emit
//! `<prefix>.inserted|updated|deleted` with the row as JSON.
//!
//! The trigger function, `txevents.capture_trigger()`, is SQL in `sql/finalize.sql`
//! (`to_jsonb(NEW)` is the natural way to turn any row into JSON); it is SECURITY
//! DEFINER so that writers of a captured table need no txevents role. `capture` itself
//! runs with the caller's rights: CREATE TRIGGER checks that the caller may add
//! triggers to that table. The DDL is built by SQL `format()` from the `regclass` text
//! and `%L` literals, never from Rust strings.

use pgrx::prelude::*;

use crate::error::{TxEventsError, TxResult};
use crate::validate;

/// Name of the trigger `capture` installs.
pub const TRIGGER: &str = "txevents_capture";
/// The longest suffix appended to the prefix (`.inserted`).
const LONGEST_SUFFIX: &str = ".inserted";

#[pg_extern(name = "_capture")]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_capture_oid(tbl: Option<pg_sys::Oid>, event_prefix: Option<&str>) {
    crate::require_writable(c"txevents.capture()");
    capture(tbl, event_prefix).unwrap_or_else(|e| e.raise())
}

#[pg_extern(name = "_uncapture")]
#[search_path(@extschema@, pg_catalog, pg_temp)]
fn txevents_uncapture_oid(tbl: Option<pg_sys::Oid>) -> bool {
    crate::require_writable(c"txevents.uncapture()");
    uncapture(tbl).unwrap_or_else(|e| e.raise())
}

fn capture(tbl: Option<pg_sys::Oid>, event_prefix: Option<&str>) -> TxResult<()> {
    let tbl = tbl.ok_or(TxEventsError::NullArgument("tbl"))?;
    Spi::connect_mut(|client| {
        let table = client.select(
            "SELECT relkind::text, relname::text, oid::regclass::text FROM pg_class WHERE oid = $1",
            Some(1),
            &[tbl.into()],
        )?;
        let Some(row) = table.into_iter().next() else {
            return Err(TxEventsError::UndefinedTable(tbl.to_u32()));
        };
        // pg_class columns are NOT NULL; NULL would be a catalog bug, not a default.
        let catalog = |what: &str| TxEventsError::Internal(format!("pg_class.{what} is NULL"));
        let kind: String = row.get(1)?.ok_or_else(|| catalog("relkind"))?;
        let relname: String = row.get(2)?.ok_or_else(|| catalog("relname"))?;
        let shown: String = row.get(3)?.ok_or_else(|| catalog("oid"))?;
        if kind != "r" && kind != "p" {
            return Err(TxEventsError::NotATable(shown));
        }
        let prefix = event_prefix.unwrap_or(&relname).to_string();
        if prefix.is_empty() {
            return Err(TxEventsError::InvalidArgument(
                "event_prefix must not be empty".into(),
            ));
        }
        validate::event_type(Some(&format!("{prefix}{LONGEST_SUFFIX}")))?;
        let pk: Option<String> = client
            .select(
                "SELECT a.attname::text FROM pg_index i
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                  WHERE i.indrelid = $1 AND i.indisprimary AND i.indnatts = 1",
                Some(1),
                &[tbl.into()],
            )?
            .next()
            .map(|r| r.get::<String>(1))
            .transpose()?
            .flatten();
        let ddl: Option<String> = client
            .select(
                "SELECT format('CREATE OR REPLACE TRIGGER txevents_capture
                                AFTER INSERT OR UPDATE OR DELETE ON %s
                                FOR EACH ROW EXECUTE FUNCTION txevents.capture_trigger(%L, %L)',
                               $1::regclass, $2::text, $3::text)",
                Some(1),
                // '' tells the trigger that the table has no single-column key.
                &[tbl.into(), prefix.into(), pk.unwrap_or_default().into()],
            )?
            .first()
            .get_one()?;
        let ddl = ddl.ok_or_else(|| TxEventsError::Internal("no trigger DDL".into()))?;
        client.update(ddl.as_str(), None, &[])?;
        Ok(())
    })
}

fn uncapture(tbl: Option<pg_sys::Oid>) -> TxResult<bool> {
    let tbl = tbl.ok_or(TxEventsError::NullArgument("tbl"))?;
    Spi::connect_mut(|client| {
        let ddl: Option<String> = client
            .select(
                "SELECT format('DROP TRIGGER txevents_capture ON %s', $1::regclass)
                   FROM pg_trigger WHERE tgrelid = $1 AND tgname = $2",
                Some(1),
                &[tbl.into(), TRIGGER.into()],
            )?
            .next()
            .map(|r| r.get::<String>(1))
            .transpose()?
            .flatten();
        match ddl {
            Some(ddl) => {
                client.update(ddl.as_str(), None, &[])?;
                Ok(true)
            }
            None => Ok(false),
        }
    })
}
