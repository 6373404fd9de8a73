//! Namespace lifecycle policy (SPEC 2.6): which namespace to forget when the
//! cap is reached.
//!
//! Only a namespace that holds no entries at all may be forgotten: entries point
//! at their namespace, so one with entries (live, invalidated and awaiting the
//! sweep, or queued for lazy freeing) must stay. Among the empty ones the least
//! recently used goes first, so a burst of reads of unknown prefixes recycles its
//! own namespaces rather than those of a working application.

/// A namespace as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<K> {
    /// What identifies the namespace to the caller.
    pub key: K,
    /// Logical time of its last use (larger is more recent).
    pub last_used: u64,
    /// Entries it holds in memory, whatever their state.
    pub entries: i64,
}

/// Whether a namespace holding `entries` entries may be forgotten.
pub fn forgettable(entries: i64) -> bool {
    // Below zero would be an accounting bug; keep such a namespace rather than
    // risk freeing one an entry still points at.
    entries == 0
}

/// Whether a registry of `len` namespaces must forget one before it may add
/// another under a cap of `max`.
pub fn must_make_room(len: usize, max: usize) -> bool {
    len >= max
}

/// The namespace to forget to make room: the least recently used one that holds
/// no entries, or None when every namespace holds some.
pub fn victim<K>(candidates: impl IntoIterator<Item = Candidate<K>>) -> Option<K> {
    candidates
        .into_iter()
        .filter(|c| forgettable(c.entries))
        .min_by_key(|c| c.last_used)
        .map(|c| c.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &'static str, last_used: u64, entries: i64) -> Candidate<&'static str> {
        Candidate {
            key,
            last_used,
            entries,
        }
    }

    #[test]
    fn the_least_recently_used_empty_namespace_goes() {
        let all = [c("a", 5, 0), c("b", 1, 3), c("c", 2, 0), c("d", 9, 0)];
        assert_eq!(victim(all), Some("c"), "b is older but holds entries");
    }

    #[test]
    fn no_victim_when_every_namespace_holds_entries() {
        assert_eq!(victim([c("a", 1, 1), c("b", 2, 7)]), None);
        assert_eq!(victim(Vec::<Candidate<&str>>::new()), None);
    }

    #[test]
    fn a_negative_count_is_never_forgotten() {
        assert_eq!(victim([c("a", 1, -1), c("b", 2, 0)]), Some("b"));
        assert!(!forgettable(-1) && !forgettable(1) && forgettable(0));
    }

    #[test]
    fn room_is_needed_from_the_cap_on() {
        assert!(!must_make_room(2, 3));
        assert!(must_make_room(3, 3));
        assert!(
            must_make_room(5, 3),
            "over the cap after a load or a lower cap"
        );
    }
}
