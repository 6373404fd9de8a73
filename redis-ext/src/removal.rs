//! Attributing expirations and evictions to namespaces.
//!
//! Redis announces `expired` / `evicted` with the key name only, after the key
//! is gone, and a plain key may happen to look like a stored name. The type's
//! unlink callback runs just before, on the same thread, for our entries only:
//! it leaves a note that the notification handler consumes.

use std::sync::Mutex;

use crate::namespace::Namespace;

/// Why Redis removed a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Its TTL ran out.
    Expired,
    /// `maxmemory` evicted it.
    Evicted,
}

struct Note {
    namespace: &'static Namespace,
    key_hash: u64,
}

static LAST_UNLINKED: Mutex<Option<Note>> = Mutex::new(None);

fn key_hash(key: &[u8]) -> u64 {
    // FNV-1a: no allocation, and only compared with the next notification.
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Notes that the entry stored under `key` is leaving the keyspace.
pub fn entry_unlinked(namespace: &'static Namespace, key: &[u8]) {
    let note = Note {
        namespace,
        key_hash: key_hash(key),
    };
    *LAST_UNLINKED.lock().unwrap_or_else(|p| p.into_inner()) = Some(note);
}

/// Drops the note: the unlinked entry left for a reason other than expiry or
/// eviction (DEL, RENAME, MOVE, a module deletion, an overwrite).
pub fn forget() {
    LAST_UNLINKED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
}

/// Drops the note if it names `namespace`, which is being forgotten: the note
/// must not outlive it.
pub fn drop_note_for(namespace: &Namespace) {
    let mut note = LAST_UNLINKED.lock().unwrap_or_else(|p| p.into_inner());
    if note
        .as_ref()
        .is_some_and(|n| std::ptr::eq(n.namespace, namespace))
    {
        note.take();
    }
}

/// Counts a removal announced by Redis if the key was one of our entries; returns
/// the namespace it was counted in.
pub fn key_removed(kind: Removal, key: &[u8]) -> Option<&'static Namespace> {
    let note = LAST_UNLINKED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()?;
    if note.key_hash != key_hash(key) {
        return None;
    }
    let mut stats = note.namespace.stats();
    match kind {
        Removal::Expired => stats.counters.expired += 1,
        Removal::Evicted => stats.counters.evicted += 1,
    }
    Some(note.namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_counts_only_for_the_entry_just_unlinked() {
        let ns: &'static Namespace = Box::leak(Box::new(Namespace::new("p", 4)));
        assert!(
            key_removed(Removal::Expired, b"p:{a}").is_none(),
            "no note, no count"
        );
        entry_unlinked(ns, b"p:{a}");
        assert!(
            key_removed(Removal::Expired, b"p:{b}").is_none(),
            "another key"
        );
        assert!(
            key_removed(Removal::Expired, b"p:{a}").is_none(),
            "the note was consumed"
        );
        entry_unlinked(ns, b"p:{a}");
        forget();
        assert!(
            key_removed(Removal::Expired, b"p:{a}").is_none(),
            "a DEL came between"
        );
        entry_unlinked(ns, b"p:{a}");
        assert!(key_removed(Removal::Evicted, b"p:{a}").is_some());
        let c = ns.stats().counters.clone();
        assert_eq!((c.expired, c.evicted), (0, 1));
    }
}
