//! Claiming a slot per database in a fixed array of shared memory, without locks:
//! open addressing from the database OID, a slot's key (OID + 1, 0 while free) set once
//! by compare-and-swap and never cleared. Used by `metrics_store` and `coalesced_state`.

use std::sync::atomic::{AtomicU64, Ordering};

/// The slot of database `oid` in `slots` (found, or claimed if free); `None` when every
/// slot belongs to another database. `key` gives a slot's key field.
pub fn claim<T>(slots: &[T], key: impl Fn(&T) -> &AtomicU64, oid: u32) -> Option<&T> {
    let n = slots.len();
    if n == 0 {
        return None;
    }
    let wanted = u64::from(oid) + 1;
    let start = (oid as usize).wrapping_mul(0x9E37_79B9) % n;
    for i in 0..n {
        let slot = &slots[(start + i) % n];
        let k = key(slot);
        let current = k.load(Ordering::Acquire);
        if current == wanted {
            return Some(slot);
        }
        if current == 0 {
            match k.compare_exchange(0, wanted, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(slot),
                Err(other) if other == wanted => return Some(slot),
                Err(_) => {}
            }
        }
    }
    None
}

/// The database OID of a claimed slot's key, `None` for a free slot.
pub fn oid_of(key: &AtomicU64) -> Option<u32> {
    match key.load(Ordering::Acquire) {
        0 => None,
        k => Some((k - 1) as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_database_keeps_its_slot_until_all_are_taken() {
        let slots: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        let a = claim(&slots, |s| s, 10).unwrap();
        assert!(std::ptr::eq(a, claim(&slots, |s| s, 10).unwrap()));
        assert_eq!(oid_of(a), Some(10));
        let b = claim(&slots, |s| s, 0).unwrap();
        assert!(!std::ptr::eq(a, b));
        assert_eq!(oid_of(b), Some(0));
        assert!(claim(&slots, |s| s, 11).is_some());
        assert!(claim(&slots, |s| s, 12).is_none());
        assert!(claim(&[] as &[AtomicU64], |s| s, 1).is_none());
    }
}
