//! The one write on emit's hot path: a row into `txevents.outbox`, without the executor.
//!
//! An SPI `INSERT`, even from a kept plan, starts and ends an executor for every event
//! (result relation, projection, constraint and index setup) and cost about two thirds
//! of `emit`. This module does what `CatalogTupleInsert` does for system catalogs: form
//! the tuple, `simple_heap_insert` it (WAL, TOAST and statistics included) and insert
//! it into each index of the table, with uniqueness checked. The table has no
//! triggers, rules, CHECK constraints or expression indexes (`sql/bootstrap.sql`), and
//! only the extension writes it, so nothing the executor would add is skipped. If
//! someone adds a trigger, rule, row level security or a CHECK constraint to it,
//! `emit` refuses (SQLSTATE 55000) instead of bypassing it.

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::IntoDatum;

use crate::error::{TxEventsError, TxResult};

extern "C-unwind" {
    // commands/sequence.h; not in pgrx's bindings.
    fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// Columns of `txevents.outbox`, in table order.
const COLUMNS: usize = 8;

/// One outbox row as `emit` writes it.
pub struct Row<'a> {
    pub event_type: &'a str,
    pub aggregate_type: Option<&'a str>,
    pub aggregate_id: Option<&'a str>,
    /// A non-null jsonb datum.
    pub payload: pg_sys::Datum,
    /// A non-null jsonb datum.
    pub headers: pg_sys::Datum,
    /// `timestamptz` microseconds since 2000-01-01.
    pub occurred_at: i64,
}

fn relation(namespace: pg_sys::Oid, name: &CStr) -> TxResult<pg_sys::Oid> {
    // SAFETY: syscache lookup by name; returns InvalidOid when absent.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    if oid == pg_sys::InvalidOid {
        return Err(TxEventsError::Internal(format!(
            "relation txevents.{} is missing",
            name.to_string_lossy()
        )));
    }
    Ok(oid)
}

/// Inserts `row`; returns the new event id and the emitting transaction's id.
pub fn insert(row: Row<'_>) -> TxResult<(i64, u64)> {
    // SAFETY: every call below is the C API used the way heap/catalog code uses it;
    // errors raised inside are Postgres ERRORs that pgrx turns into Rust panics and
    // back, and the transaction abort releases the relation and slot.
    unsafe {
        // The checks the executor would make for an INSERT.
        pg_sys::PreventCommandIfReadOnly(c"txevents.emit()".as_ptr());
        pg_sys::PreventCommandIfParallelMode(c"txevents.emit()".as_ptr());
        pg_sys::PreventCommandDuringRecovery(c"txevents.emit()".as_ptr());
        let namespace = pg_sys::get_namespace_oid(c"txevents".as_ptr(), false);
        let relid = relation(namespace, c"outbox")?;
        let seqid = relation(namespace, c"outbox_id_seq")?;
        let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let desc = (*rel).rd_att;
        if (*desc).natts as usize != COLUMNS {
            pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            return Err(TxEventsError::Internal(format!(
                "txevents.outbox has {} columns, this build writes {COLUMNS}: update the extension",
                (*desc).natts
            )));
        }
        // What the executor would honour and this path would not: refuse rather
        // than skip it silently.
        let bypassed = if !(*rel).trigdesc.is_null() {
            Some("a trigger")
        } else if !(*rel).rd_rules.is_null() {
            Some("a rule")
        } else if (*(*rel).rd_rel).relrowsecurity {
            Some("row level security")
        } else if !(*desc).constr.is_null() && (*(*desc).constr).num_check > 0 {
            Some("a CHECK constraint")
        } else {
            None
        };
        if let Some(what) = bypassed {
            pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            return Err(TxEventsError::OutboxAltered(what));
        }
        let id = pg_sys::ffi::pg_guard_ffi_boundary(|| nextval_internal(seqid, false));
        let txid = pg_sys::GetTopFullTransactionId().value;

        let mut values = [pg_sys::Datum::from(0usize); COLUMNS];
        let mut nulls = [false; COLUMNS];
        let datums = [
            id.into_datum(),
            row.event_type.into_datum(),
            row.aggregate_type.into_datum(),
            row.aggregate_id.into_datum(),
            Some(row.payload),
            Some(row.headers),
            Some(pg_sys::Datum::from(row.occurred_at)),
            Some(pg_sys::Datum::from(txid)),
        ];
        for (i, d) in datums.into_iter().enumerate() {
            match d {
                Some(d) => values[i] = d,
                None => nulls[i] = true,
            }
        }
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(rel, tuple);

        let indexes = pg_sys::RelationGetIndexList(rel);
        if !indexes.is_null() && (*indexes).length > 0 {
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsHeapTuple);
            pg_sys::ExecStoreHeapTuple(tuple, slot, false);
            for i in 0..(*indexes).length as usize {
                let index_oid = (*(*indexes).elements.add(i)).oid_value;
                let index =
                    pg_sys::index_open(index_oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                let info = pg_sys::BuildIndexInfo(index);
                let mut ivalues = [pg_sys::Datum::from(0usize); pg_sys::INDEX_MAX_KEYS as usize];
                let mut inulls = [false; pg_sys::INDEX_MAX_KEYS as usize];
                pg_sys::FormIndexDatum(
                    info,
                    slot,
                    std::ptr::null_mut(),
                    ivalues.as_mut_ptr(),
                    inulls.as_mut_ptr(),
                );
                let check = if (*(*index).rd_index).indisunique {
                    pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
                } else {
                    pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                };
                pg_sys::index_insert(
                    index,
                    ivalues.as_mut_ptr(),
                    inulls.as_mut_ptr(),
                    &mut (*tuple).t_self,
                    rel,
                    check,
                    false,
                    info,
                );
                pg_sys::index_close(index, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
        pg_sys::list_free(indexes);
        pg_sys::heap_freetuple(tuple);
        // Keep the lock until the transaction ends, as the executor does.
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        Ok((id, txid))
    }
}
