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
//! Deferrable unique and exclusion constraints are checked as the executor does: the
//! index insert reports a possible conflict, and `ExecARInsertTriggers` queues the
//! constraint's internal recheck trigger, fired at the end of the statement or at
//! commit (`INITIALLY DEFERRED`, `SET CONSTRAINTS`).
//!
//! An outbox attached as a partition has its partition constraint checked, as for an
//! INSERT into the partition.
//!
//! What this path cannot honour, it refuses (SQLSTATE 55000) instead of bypassing:
//! triggers that fire on INSERT (other than those rechecks; disabled triggers and
//! UPDATE, DELETE and TRUNCATE ones, such as a referencing foreign key's, are fine),
//! INSERT rules (UPDATE and DELETE rules are fine), row level security that applies
//! to emit's owner (not to a superuser, nor to the table's owner without FORCE), CHECK
//! constraints, a relation that is not an ordinary heap table, columns added or
//! retyped (the tuple is formed for the columns below; dropped columns are written as
//! NULL), and a renamed or moved outbox or sequence.

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
    /// The checked event type.
    pub event_type: &'a str,
    /// Kind of the aggregate, or NULL.
    pub aggregate_type: Option<&'a str>,
    /// Id of the aggregate, or NULL.
    pub aggregate_id: Option<&'a str>,
    /// A non-null jsonb datum.
    pub payload: pg_sys::Datum,
    /// A non-null jsonb datum.
    pub headers: pg_sys::Datum,
    /// `timestamptz` microseconds since 2000-01-01.
    pub occurred_at: i64,
}

/// The OID of relation `txevents.<name>`; a DBA may have renamed or moved it.
fn relation(namespace: pg_sys::Oid, name: &CStr) -> TxResult<pg_sys::Oid> {
    // SAFETY: syscache lookup by name; returns InvalidOid when absent.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    if oid == pg_sys::InvalidOid {
        return Err(TxEventsError::OutboxMissing(
            name.to_string_lossy().into_owned(),
        ));
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
        if let Err(e) = check_kind(rel) {
            pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            return Err(e);
        }
        let attributes = match live_columns(desc) {
            Ok(attributes) => attributes,
            Err(e) => {
                pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                return Err(e);
            }
        };
        // The executor state ExecInsertIndexTuples evaluates index expressions and
        // predicates in (a null one is what crashed expression indexes). Range table
        // index 0: there is no range table, and ExecConstraints then describes a
        // failing row without looking one up.
        let estate = pg_sys::CreateExecutorState();
        // Everything below is allocated in the EState's memory, as in the executor
        // (index infos, their AM caches, the tuple), and freed with it: nothing
        // accumulates when one statement emits many events.
        let caller_cxt = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
        let rri: *mut pg_sys::ResultRelInfo =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()).cast();
        (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
        pg_sys::InitResultRelInfo(rri, rel, 0, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(rri, false);
        let rechecks = match check_bypassed(rel) {
            Ok(rechecks) => rechecks,
            Err(e) => {
                pg_sys::ExecCloseIndices(rri);
                pg_sys::MemoryContextSwitchTo(caller_cxt);
                pg_sys::FreeExecutorState(estate);
                pg_sys::table_close(rel, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
                return Err(e);
            }
        };

        let id = pg_sys::ffi::pg_guard_ffi_boundary(|| nextval_internal(seqid, false));
        let txid = pg_sys::GetTopFullTransactionId().value;

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
        // Dropped columns keep their place in the tuple, as NULL.
        let mut values = vec![pg_sys::Datum::from(0usize); attributes.len()];
        let mut nulls = vec![true; attributes.len()];
        for (at, column) in attributes.iter().enumerate() {
            if let Some(&Some(d)) = column.map(|c| &datums[c]) {
                values[at] = d;
                nulls[at] = false;
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
        // An outbox attached as a partition keeps its bound, as with a plain INSERT
        // into the partition (and ExecSimpleRelationInsert): 23514 outside it.
        if (*(*rel).rd_rel).relispartition {
            pg_sys::ExecPartitionCheck(rri, slot, estate, true);
        }
        simple_heap_insert_into(rel, tuple, slot);
        let mut recheck: *mut pg_sys::List = std::ptr::null_mut();
        if (*rri).ri_NumIndices > 0 {
            // Returns the deferrable constraints' indexes that may hold a conflict.
            recheck = pg_sys::ExecInsertIndexTuples(
                rri,
                slot,
                estate,
                false,
                false,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                // onlySummarizing (PostgreSQL 16+): false, an INSERT fills every index.
                #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
                false,
            );
        }
        if rechecks {
            // What ExecSimpleRelationInsert and a plain INSERT do: queue the recheck
            // triggers of the possibly violated constraints (only those), then end
            // this "query": immediate ones fire now, deferred ones move to commit.
            pg_sys::AfterTriggerBeginQuery();
            pg_sys::ExecARInsertTriggers(estate, rri, slot, recheck, std::ptr::null_mut());
            pg_sys::AfterTriggerEndQuery(estate);
            // Relations and slots the trigger machinery opened in this EState.
            pg_sys::ExecCloseResultRelations(estate);
            pg_sys::ExecResetTupleTable((*estate).es_tupleTable, false);
        }
        pg_sys::list_free(recheck);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::ExecCloseIndices(rri);
        pg_sys::heap_freetuple(tuple);
        pg_sys::MemoryContextSwitchTo(caller_cxt);
        pg_sys::FreeExecutorState(estate);
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

/// Refuses a relation that is not an ordinary heap table: a partitioned table (no
/// storage of its own) or a foreign table put in place of the outbox would be written
/// as a heap.
///
/// # Safety
/// `rel` is an open relation.
unsafe fn check_kind(rel: pg_sys::Relation) -> TxResult<()> {
    // A table access method other than heap's (whatever its name) stores rows its own
    // way: simple_heap_insert would write them as heap tuples.
    // SAFETY: reading fields of an open relcache entry.
    let (kind, heap) = unsafe {
        (
            (*(*rel).rd_rel).relkind as u8,
            (*rel).rd_tableam == pg_sys::GetHeapamTableAmRoutine(),
        )
    };
    let what = match kind {
        pg_sys::RELKIND_RELATION if heap => return Ok(()),
        pg_sys::RELKIND_RELATION => "a table of another access method than heap",
        pg_sys::RELKIND_PARTITIONED_TABLE => "a partitioned table",
        pg_sys::RELKIND_FOREIGN_TABLE => "a foreign table",
        pg_sys::RELKIND_VIEW => "a view",
        pg_sys::RELKIND_MATVIEW => "a materialized view",
        pg_sys::RELKIND_SEQUENCE => "a sequence",
        _ => "a relation of another kind",
    };
    Err(TxEventsError::OutboxKind(what))
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

/// For each attribute of the outbox, the column of [`COLUMN_TYPES`] it holds, or
/// `None` for a dropped column (an ADD then DROP COLUMN leaves one behind for good).
/// Refuses a table whose live columns are not the ones the tuple is formed for: a
/// datum of the wrong type would be stored as garbage, and an added column's default
/// would be bypassed.
///
/// # Safety
/// `desc` is the open outbox's tuple descriptor.
unsafe fn live_columns(desc: pg_sys::TupleDesc) -> TxResult<Vec<Option<usize>>> {
    // SAFETY: `desc` is valid and outlives this call; not released on drop. pgrx's
    // accessor knows each version's layout (PostgreSQL 18 moved the attributes).
    let attrs = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(desc) };
    let mut out = Vec::with_capacity(attrs.len());
    let mut live = 0;
    for attr in attrs.iter() {
        if attr.attisdropped {
            out.push(None);
            continue;
        }
        let Some(&expected) = COLUMN_TYPES.get(live) else {
            let name = attr_name(attr);
            return Err(TxEventsError::OutboxColumn {
                column: format!("\"{name}\""),
                found: format!("a column added to the {COLUMNS} emit writes"),
            });
        };
        if attr.atttypid != expected || attr.attgenerated != 0 {
            return Err(TxEventsError::OutboxColumn {
                column: format!("\"{}\"", attr_name(attr)),
                found: if attr.attgenerated != 0 {
                    "a generated column".into()
                } else {
                    format!(
                        "type oid {}, emit writes oid {}",
                        attr.atttypid.to_u32(),
                        expected.to_u32()
                    )
                },
            });
        }
        out.push(Some(live));
        live += 1;
    }
    if live != COLUMNS {
        return Err(TxEventsError::OutboxColumn {
            column: "count".into(),
            found: format!("{live} columns, emit writes {COLUMNS}"),
        });
    }
    Ok(out)
}

/// The name of a column.
fn attr_name(attr: &pg_sys::FormData_pg_attribute) -> String {
    // SAFETY: attname is a NUL-terminated NameData.
    unsafe { CStr::from_ptr(attr.attname.data.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Whether a rule rewrites INSERTs (rules on UPDATE or DELETE do not touch one).
///
/// # Safety
/// `rules` is a relcache entry's `rd_rules`: null, or `numLocks` rules.
unsafe fn has_insert_rule(rules: *mut pg_sys::RuleLock) -> bool {
    if rules.is_null() {
        return false;
    }
    // SAFETY: as documented above.
    unsafe {
        (0..(*rules).numLocks.max(0) as usize)
            .any(|i| (**(*rules).rules.add(i)).event == pg_sys::CmdType::CMD_INSERT)
    }
}

/// Refuses what the executor would honour and this path would not. Returns whether
/// the table has recheck triggers of deferrable unique or exclusion constraints, the
/// only triggers this path fires (as the executor does, see the module comment).
///
/// # Safety
/// `rel` is the open outbox.
unsafe fn check_bypassed(rel: pg_sys::Relation) -> TxResult<bool> {
    // SAFETY: reading fields of an open relcache entry; `triggers` holds
    // `numtriggers` entries.
    let (what, rechecks) = unsafe {
        let desc = (*rel).rd_att;
        let trigdesc = (*rel).trigdesc;
        let mut rechecks = false;
        let mut other_trigger = false;
        if !trigdesc.is_null() {
            for i in 0..(*trigdesc).numtriggers.max(0) as usize {
                let trigger = &*(*trigdesc).triggers.add(i);
                if trigger.tgtype as u32 & pg_sys::TRIGGER_TYPE_INSERT == 0
                    || trigger.tgenabled as u8 == pg_sys::TRIGGER_DISABLED
                {
                    // UPDATE, DELETE or TRUNCATE only (e.g. the RI triggers of a
                    // foreign key referencing the outbox), or disabled: an INSERT
                    // fires none of them.
                    continue;
                }
                if trigger.tgisinternal
                    && trigger.tgfoid == pg_sys::Oid::from(pg_sys::F_UNIQUE_KEY_RECHECK)
                {
                    rechecks = true;
                } else {
                    other_trigger = true;
                }
            }
        }
        let what = if other_trigger {
            Some("a trigger")
        } else if has_insert_rule((*rel).rd_rules) {
            Some("a rule")
        } else if (*(*rel).rd_rel).relrowsecurity
            // As the executor decides for an INSERT: RLS applies to the current user
            // (emit's owner: exempt as the table's owner unless FORCE, and always as a
            // superuser or BYPASSRLS role). noError: refused here, with 55000.
            && pg_sys::check_enable_rls((*rel).rd_id, pg_sys::InvalidOid, true)
                == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
        {
            Some("row level security")
        } else if !(*desc).constr.is_null() && (*(*desc).constr).num_check > 0 {
            Some("a CHECK constraint")
        } else {
            None
        };
        (what, rechecks)
    };
    match what {
        Some(what) => Err(TxEventsError::OutboxAltered(what)),
        None => Ok(rechecks),
    }
}
