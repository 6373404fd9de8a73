//! The one write on emit's hot path: a row into `txevents.outbox`, without a planned
//! INSERT.
//!
//! An SPI `INSERT`, even from a kept plan, starts and ends an executor for every event
//! (plan, result relation, projection) and cost about two thirds of `emit`. This module
//! does what `ExecSimpleRelationInsert` (logical replication's apply) does: form the
//! tuple, check NOT NULL, `simple_heap_insert` it (WAL, TOAST and statistics included)
//! and insert it into the indexes with `ExecOpenIndices` + `ExecInsertIndexTuples`,
//! inside a real `EState`. Going through the executor's own index code is what makes
//! an index a DBA adds behave as with a plain INSERT: expression and partial indexes
//! are evaluated in the EState's expression context, unique and exclusion constraints
//! are checked, and indexes that CREATE INDEX CONCURRENTLY left not ready are skipped.
//!
//! What this path cannot honour, it refuses (SQLSTATE 55000) instead of bypassing:
//! triggers, rules, row level security, CHECK constraints, deferrable unique or
//! exclusion constraints (their check is an AFTER trigger queued for commit), and
//! columns added, dropped or retyped (the tuple is formed for the columns below).

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
        // Everything that can refuse runs before anything is written.
        if let Err(e) = check_columns(desc) {
            pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            return Err(e);
        }
        // The executor state ExecInsertIndexTuples evaluates index expressions and
        // predicates in (a null one is what crashed expression indexes). Range table
        // index 0: there is no range table, and ExecConstraints then describes a
        // failing row without looking one up.
        let estate = pg_sys::CreateExecutorState();
        let rri: *mut pg_sys::ResultRelInfo =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()).cast();
        (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
        pg_sys::InitResultRelInfo(rri, rel, 0, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(rri, false);
        // Indexes first: a deferrable constraint also adds an internal trigger, and
        // its index is what the user has to change.
        if let Err(e) = check_indexes(rri).and_then(|()| check_bypassed(rel)) {
            pg_sys::ExecCloseIndices(rri);
            pg_sys::FreeExecutorState(estate);
            pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            return Err(e);
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
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsHeapTuple);
        pg_sys::ExecStoreHeapTuple(tuple, slot, false);
        (*slot).tts_tableOid = relid;
        // NOT NULL a DBA may have added (aggregate_type, aggregate_id); CHECK
        // constraints were refused above, so this checks nothing else.
        let constr = (*desc).constr;
        if !constr.is_null() && (*constr).has_not_null {
            pg_sys::ExecConstraints(rri, slot, estate);
        }
        simple_heap_insert_into(rel, tuple, slot);
        if (*rri).ri_NumIndices > 0 {
            // Deferrable constraints were refused, so nothing comes back to recheck.
            let recheck = pg_sys::ExecInsertIndexTuples(
                rri,
                slot,
                estate,
                false,
                false,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            pg_sys::list_free(recheck);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::ExecCloseIndices(rri);
        pg_sys::FreeExecutorState(estate);
        pg_sys::heap_freetuple(tuple);
        // Keep the lock until the transaction ends, as the executor does.
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        Ok((id, txid))
    }
}

/// Writes `tuple` to the heap and points `slot` at the stored row (its new TID).
///
/// # Safety
/// `rel` is open and locked; `slot` holds `tuple` (stored without ownership).
unsafe fn simple_heap_insert_into(
    rel: pg_sys::Relation,
    tuple: pg_sys::HeapTuple,
    slot: *mut pg_sys::TupleTableSlot,
) {
    // SAFETY: as documented above; heap_insert sets the tuple's t_self.
    unsafe {
        pg_sys::simple_heap_insert(rel, tuple);
        (*slot).tts_tid = (*tuple).t_self;
    }
}

/// The column types emit writes, in table order.
const COLUMN_TYPES: [pg_sys::Oid; COLUMNS] = [
    pg_sys::INT8OID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::JSONBOID,
    pg_sys::JSONBOID,
    pg_sys::TIMESTAMPTZOID,
    pg_sys::XID8OID,
];

/// Refuses a table whose columns are not the ones the tuple is formed for: a datum of
/// the wrong type in a column would be stored as garbage.
///
/// # Safety
/// `desc` is the open outbox's tuple descriptor.
unsafe fn check_columns(desc: pg_sys::TupleDesc) -> TxResult<()> {
    // SAFETY: reading the descriptor's attribute array within natts.
    unsafe {
        let natts = (*desc).natts as usize;
        if natts != COLUMNS {
            return Err(TxEventsError::OutboxColumn {
                column: "count".into(),
                found: format!("{natts} columns, including dropped ones; emit writes {COLUMNS}"),
            });
        }
        let attrs = (*desc).attrs.as_slice(natts);
        for (i, (attr, expected)) in attrs.iter().zip(COLUMN_TYPES).enumerate() {
            if attr.attisdropped || attr.atttypid != expected || attr.attgenerated != 0 {
                return Err(TxEventsError::OutboxColumn {
                    column: format!("{}", i + 1),
                    found: if attr.attisdropped {
                        "a dropped column".into()
                    } else if attr.attgenerated != 0 {
                        "a generated column".into()
                    } else {
                        format!("type oid {}", attr.atttypid.to_u32())
                    },
                });
            }
        }
        Ok(())
    }
}

/// Refuses what the executor would honour and this path would not.
///
/// # Safety
/// `rel` is the open outbox.
unsafe fn check_bypassed(rel: pg_sys::Relation) -> TxResult<()> {
    // SAFETY: reading fields of an open relcache entry.
    let what = unsafe {
        let desc = (*rel).rd_att;
        if !(*rel).trigdesc.is_null() {
            Some("a trigger")
        } else if !(*rel).rd_rules.is_null() {
            Some("a rule")
        } else if (*(*rel).rd_rel).relrowsecurity {
            Some("row level security")
        } else if !(*desc).constr.is_null() && (*(*desc).constr).num_check > 0 {
            Some("a CHECK constraint")
        } else {
            None
        }
    };
    match what {
        Some(what) => Err(TxEventsError::OutboxAltered(what)),
        None => Ok(()),
    }
}

/// Refuses indexes ExecInsertIndexTuples can only half-check without the executor's
/// AFTER trigger queue: deferrable unique and exclusion constraints (the violation is
/// rechecked by a constraint trigger at commit). Every other index (expression,
/// partial, unique, exclusion, not yet ready) is maintained as an INSERT would.
///
/// # Safety
/// `rri` has had ExecOpenIndices run on it.
unsafe fn check_indexes(rri: *mut pg_sys::ResultRelInfo) -> TxResult<()> {
    // SAFETY: ri_IndexRelationDescs holds ri_NumIndices open index relations.
    unsafe {
        for i in 0..(*rri).ri_NumIndices.max(0) as usize {
            let index = *(*rri).ri_IndexRelationDescs.add(i);
            if index.is_null() {
                continue;
            }
            let form = (*index).rd_index;
            if !(*form).indimmediate {
                let name = CStr::from_ptr((*(*index).rd_rel).relname.data.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                return Err(TxEventsError::OutboxIndex {
                    index: name,
                    reason: if (*form).indisunique {
                        "a DEFERRABLE unique constraint"
                    } else {
                        "a DEFERRABLE exclusion constraint"
                    },
                    fix: "recreate the constraint NOT DEFERRABLE (checked at once, as emit \
                          can) or drop it",
                });
            }
        }
    }
    Ok(())
}
