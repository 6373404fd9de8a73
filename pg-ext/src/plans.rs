//! Prepared SPI plans kept for the life of the backend, one per statement text.
//!
//! `poll`, `ack` and `nack` run several short statements per call; parsing and
//! planning them every time cost more than running them. Each statement is prepared
//! on first use (argument types taken from that call's arguments) and kept with
//! `SPI_keepplan`; Postgres's plan cache re-plans it when the tables change.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::PgOid;

use crate::error::TxResult;

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
}

/// Runs `sql` (always the same text for the same argument types) with `args`, as a
/// statement that may write: it sees a fresh snapshot in READ COMMITTED.
pub fn execute<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    limit: Option<i64>,
    args: &[DatumWithOid<'_>],
) -> TxResult<SpiTupleTable<'conn>> {
    let cached = PLANS.with(|p| p.borrow().get(sql).cloned());
    let plan = match cached {
        Some(plan) => plan,
        None => {
            let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
            let plan = Rc::new(client.prepare_mut(sql, &types)?.keep());
            PLANS.with(|p| p.borrow_mut().insert(sql, Rc::clone(&plan)));
            plan
        }
    };
    Ok(client.update(&*plan, limit, args)?)
}
