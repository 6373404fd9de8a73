//! Turns a batch of `cache.invalidate` events into the fewest Redis commands: one
//! `NSCACHE.DEL` per namespace and hash slot (a cluster node only accepts keys of its
//! own slots; per slot is the finest grouping any node accepts), one
//! `NSCACHE.INVALIDATE` per namespace sent to every primary. Each command remembers
//! which events it serves, so the relay acks exactly the events whose commands Redis
//! confirmed.

use std::collections::{BTreeMap, BTreeSet};

use cachetx_shared::slot::key_slot;
use cachetx_shared::{CacheInvalidation, InvalidationScope};

use crate::redis_client::Target;

/// Most keys in one `NSCACHE.DEL`, to keep a single command's time in Redis short.
pub const MAX_KEYS_PER_DEL: usize = 1000;

/// One Redis command of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// What to run.
    pub action: Action,
    /// Where to run it.
    pub target: Target,
    /// Ids of the events this command serves (ascending, no duplicates).
    pub events: Vec<i64>,
}

/// The command of an [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `NSCACHE.DEL prefix key...`
    Del {
        /// The namespace.
        prefix: String,
        /// Distinct keys, in first-seen order.
        keys: Vec<String>,
    },
    /// `NSCACHE.INVALIDATE prefix` on every primary.
    Invalidate {
        /// The namespace.
        prefix: String,
    },
}

impl Op {
    /// The Redis command.
    pub fn command(&self) -> redis::Cmd {
        match &self.action {
            Action::Del { prefix, keys } => {
                let mut cmd = redis::cmd("NSCACHE.DEL");
                cmd.arg(prefix).arg(keys);
                cmd
            }
            Action::Invalidate { prefix } => {
                let mut cmd = redis::cmd("NSCACHE.INVALIDATE");
                cmd.arg(prefix);
                cmd
            }
        }
    }
}

#[derive(Default)]
struct Group {
    keys: Vec<String>,
    seen: BTreeSet<String>,
    events: BTreeSet<i64>,
}

/// The commands that apply `events` (id, invalidation). With `cluster`, keys are
/// grouped by hash slot; otherwise all keys of a namespace share one command (split
/// every [`MAX_KEYS_PER_DEL`] keys).
pub fn plan(events: &[(i64, &CacheInvalidation)], cluster: bool) -> Vec<Op> {
    let mut dels: BTreeMap<(&str, u16), Vec<Group>> = BTreeMap::new();
    let mut namespaces: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for (id, invalidation) in events {
        let prefix = invalidation.prefix.as_str();
        match &invalidation.scope {
            InvalidationScope::Namespace => {
                namespaces.entry(prefix).or_default().insert(*id);
            }
            InvalidationScope::Keys(keys) => {
                for key in keys {
                    let slot = if cluster { key_slot(key.as_bytes()) } else { 0 };
                    let groups = dels.entry((prefix, slot)).or_default();
                    // A key already queued in an earlier chunk of this group is not
                    // repeated; its event is then served by that chunk too. Only a new
                    // key opens a chunk, so no command is left without keys.
                    if let Some(group) = groups.iter_mut().find(|g| g.seen.contains(key)) {
                        group.events.insert(*id);
                        continue;
                    }
                    if groups
                        .last()
                        .is_none_or(|g| g.keys.len() >= MAX_KEYS_PER_DEL)
                    {
                        groups.push(Group::default());
                    }
                    if let Some(group) = groups.last_mut() {
                        group.seen.insert(key.clone());
                        group.keys.push(key.clone());
                        group.events.insert(*id);
                    }
                }
            }
        }
    }
    let mut ops = Vec::new();
    for ((prefix, slot), groups) in dels {
        for group in groups {
            ops.push(Op {
                action: Action::Del {
                    prefix: prefix.to_string(),
                    keys: group.keys,
                },
                target: Target::Slot(slot),
                events: group.events.into_iter().collect(),
            });
        }
    }
    for (prefix, ids) in namespaces {
        ops.push(Op {
            action: Action::Invalidate {
                prefix: prefix.to_string(),
            },
            target: Target::AllPrimariesSum,
            events: ids.into_iter().collect(),
        });
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(prefix: &str, keys: &[&str]) -> CacheInvalidation {
        CacheInvalidation {
            prefix: prefix.into(),
            scope: InvalidationScope::Keys(keys.iter().map(|k| k.to_string()).collect()),
        }
    }

    fn namespace(prefix: &str) -> CacheInvalidation {
        CacheInvalidation {
            prefix: prefix.into(),
            scope: InvalidationScope::Namespace,
        }
    }

    #[test]
    fn single_node_groups_by_namespace_and_dedupes() {
        let a = keys("c", &["1", "2"]);
        let b = keys("c", &["2", "3"]);
        let c = keys("p", &["1"]);
        let ops = plan(&[(1, &a), (2, &b), (3, &c)], false);
        assert_eq!(
            ops,
            vec![
                Op {
                    action: Action::Del {
                        prefix: "c".into(),
                        keys: vec!["1".into(), "2".into(), "3".into()]
                    },
                    target: Target::Slot(0),
                    events: vec![1, 2],
                },
                Op {
                    action: Action::Del {
                        prefix: "p".into(),
                        keys: vec!["1".into()]
                    },
                    target: Target::Slot(0),
                    events: vec![3],
                },
            ]
        );
    }

    #[test]
    fn cluster_groups_by_slot_and_hash_tag() {
        let a = keys("c", &["foo", "bar", "{foo}x"]);
        let ops = plan(&[(7, &a)], true);
        assert_eq!(ops.len(), 2);
        for op in &ops {
            let Action::Del { keys, .. } = &op.action else {
                panic!("a DEL");
            };
            let Target::Slot(slot) = op.target else {
                panic!("routed to a slot");
            };
            assert!(keys.iter().all(|k| key_slot(k.as_bytes()) == slot));
        }
        let foo = ops
            .iter()
            .find(|op| op.target == Target::Slot(key_slot(b"foo")))
            .map(|op| op.action.clone());
        assert_eq!(
            foo,
            Some(Action::Del {
                prefix: "c".into(),
                keys: vec!["foo".into(), "{foo}x".into()]
            })
        );
    }

    #[test]
    fn namespaces_go_to_every_primary_once() {
        let a = namespace("c");
        let b = namespace("c");
        let c = keys("c", &["1"]);
        let ops = plan(&[(1, &a), (2, &b), (3, &c)], true);
        let invalidations: Vec<_> = ops
            .iter()
            .filter(|op| op.target == Target::AllPrimariesSum)
            .collect();
        assert_eq!(invalidations.len(), 1);
        assert_eq!(invalidations[0].events, vec![1, 2]);
        assert_eq!(
            invalidations[0].action,
            Action::Invalidate { prefix: "c".into() }
        );
    }

    #[test]
    fn large_batches_split_and_keep_every_key_once() {
        let many: Vec<String> = (0..2500).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let a = keys("c", &refs);
        let b = keys("c", &["5", "2400"]);
        let ops = plan(&[(1, &a), (2, &b)], false);
        assert_eq!(ops.len(), 3);
        let mut all = Vec::new();
        for op in &ops {
            let Action::Del { keys, .. } = &op.action else {
                panic!("a DEL");
            };
            assert!(keys.len() <= MAX_KEYS_PER_DEL);
            all.extend(keys.iter().cloned());
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 2500);
        // Event 2's keys live in the first and the last chunk: both serve it.
        assert_eq!(ops[0].events, vec![1, 2]);
        assert_eq!(ops[1].events, vec![1]);
        assert_eq!(ops[2].events, vec![1, 2]);
    }
}

#[cfg(test)]
mod empty_chunk_tests {
    use super::*;

    #[test]
    fn a_duplicate_after_a_full_chunk_adds_no_empty_command() {
        let many: Vec<String> = (0..MAX_KEYS_PER_DEL).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let a = CacheInvalidation {
            prefix: "c".into(),
            scope: InvalidationScope::Keys(refs.iter().map(|k| k.to_string()).collect()),
        };
        let b = CacheInvalidation {
            prefix: "c".into(),
            scope: InvalidationScope::Keys(vec!["5".into()]),
        };
        let ops = plan(&[(1, &a), (2, &b)], false);
        for op in &ops {
            let Action::Del { keys, .. } = &op.action else {
                panic!("a DEL");
            };
            assert!(!keys.is_empty(), "an NSCACHE.DEL without keys: {op:?}");
        }
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].events, vec![1, 2]);
    }
}
