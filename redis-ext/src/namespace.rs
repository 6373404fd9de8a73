//! Namespaces: their generation, statistics and the registry that names them.
//!
//! Entries point at their namespace (`&'static`), and an entry may be freed on
//! Redis's lazy-free thread after the command that dropped it ended. A namespace
//! is therefore allocated once and never moved, and it is freed only when it is
//! forgotten (SPEC 2.6), which the registry allows only while it holds no entry
//! at all: [`Namespace::entry_freed`] touches the namespace last through the
//! `entries` counter, so once that counter reads zero no thread still uses it.
//! Every other holder of a `&'static Namespace` is cleared at that moment
//! ([`epoch`] for the command layer's cache, the removal note) or only holds it
//! for the duration of one call on the main thread, where forgetting happens.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use cachetx_shared::NamespaceStats;

use crate::error::{CacheError, CacheResult};
use crate::histogram::Histogram;
use crate::lifecycle;
use crate::topk::TopK;

/// Event counters of a namespace (SPEC 2.5 names).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that found nothing live.
    pub misses: u64,
    /// Writes that stored an entry.
    pub sets: u64,
    /// Entries removed by NSCACHE.DEL.
    pub deletes: u64,
    /// NSCACHE.INVALIDATE calls.
    pub invalidations: u64,
    /// Entries Redis expired.
    pub expired: u64,
    /// Entries Redis evicted under maxmemory.
    pub evicted: u64,
    /// FETCH leases granted with a MISS (SPEC 2.4).
    pub leases: u64,
    /// FETCHes answered WAIT.
    pub lease_waits: u64,
    /// FETCH leases granted with a REFRESH.
    pub refreshes: u64,
    /// `SET ... LEASE` writes refused because the lease no longer held.
    pub stale_sets_rejected: u64,
}

/// Everything the main thread updates per command, behind one lock so that a
/// command pays for one uncontended lock rather than one atomic per figure.
#[derive(Debug)]
pub struct Stats {
    /// Event counters.
    pub counters: Counters,
    /// Hottest keys by reads.
    pub topk: TopK,
    /// Time spent in read commands, in nanoseconds.
    pub read_latency: Histogram,
    /// Time spent in write commands, in nanoseconds.
    pub write_latency: Histogram,
}

impl Stats {
    fn new(k: usize) -> Stats {
        Stats {
            counters: Counters::default(),
            topk: TopK::new(k),
            read_latency: Histogram::new(),
            write_latency: Histogram::new(),
        }
    }

    /// Counts one read of `key` (a user key, not the stored name).
    pub fn read(&mut self, key: &[u8], hit: bool) {
        if hit {
            self.counters.hits += 1;
        } else {
            self.counters.misses += 1;
        }
        self.topk.record(key);
    }
}

/// Where a namespace reports that its last entry went: the ids of namespaces
/// that may have become empty, for the registry's index of empty namespaces.
type EmptySink = &'static Mutex<BTreeSet<u64>>;

/// Ids of namespaces, never reused: a late report about a forgotten namespace
/// cannot be mistaken for another.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One namespace.
#[derive(Debug)]
pub struct Namespace {
    name: Box<str>,
    id: u64,
    /// Set by the registry that owns the namespace.
    empty_sink: Option<EmptySink>,
    generation: AtomicU64,
    stats: Mutex<Stats>,
    // The figures below change in free callbacks, which may run on the lazy-free
    // thread: atomics, not the lock.
    entries: AtomicI64,
    bytes: AtomicI64,
    /// Entries of the current generation (what INVALIDATE invalidates).
    live: AtomicI64,
}

impl Namespace {
    /// A fresh namespace at generation 0 tracking the `k` hottest keys.
    pub fn new(name: &str, k: usize) -> Namespace {
        Namespace::with_sink(name, k, None)
    }

    fn with_sink(name: &str, k: usize, empty_sink: Option<EmptySink>) -> Namespace {
        Namespace {
            name: name.into(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            empty_sink,
            generation: AtomicU64::new(0),
            stats: Mutex::new(Stats::new(k)),
            entries: AtomicI64::new(0),
            bytes: AtomicI64::new(0),
            live: AtomicI64::new(0),
        }
    }

    /// The prefix.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's id, never reused: leases name their namespace by it,
    /// so they neither pin a namespace nor match a re-created one.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The state a FETCH lease of this namespace is granted in (SPEC 2.4):
    /// an INVALIDATE or a flush changes it, which voids the lease.
    pub fn lease_owner(&self) -> crate::lease::Owner {
        crate::lease::Owner {
            namespace: self.id,
            generation: self.generation(),
        }
    }

    /// Current generation: entries of any other generation are invalidated.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Restores the generation (RDB aux data). Entries already loaded are
    /// recounted by the caller if needed; loading happens before any command.
    pub fn restore_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }

    /// Bumps the generation: every entry written so far reads as a miss from now
    /// on. Returns how many live entries that invalidated.
    pub fn invalidate(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.stats().counters.invalidations += 1;
        self.live.swap(0, Ordering::Relaxed).max(0) as u64
    }

    /// Every database is being emptied (FLUSHALL, a replica's full sync, DEBUG
    /// RELOAD): no entry of this namespace stays live. The entries may be freed
    /// later, on the lazy-free thread; moving to a new generation keeps those
    /// late frees from being counted against entries written after the flush.
    /// Not an invalidation: no counter changes, and no entry is left to miss.
    pub fn all_flushed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.live.store(0, Ordering::Relaxed);
    }

    /// The per-command statistics, locked.
    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        // A poisoned lock only means a panic happened mid-update of plain
        // figures; they stay usable.
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries present in memory (live, awaiting reclaim or queued for lazy
    /// freeing).
    pub fn entries(&self) -> i64 {
        // Acquire pairs with the Release of `entry_freed`: seeing the last
        // decrement means the freeing thread is done with this namespace.
        self.entries.load(Ordering::Acquire)
    }

    /// Bytes of the entries present, as `MEMORY USAGE` counts them.
    pub fn bytes(&self) -> i64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn entry_created(&self, generation: u64, charged: u32) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(i64::from(charged), Ordering::Relaxed);
        if generation == self.generation() {
            self.live.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn entry_freed(&self, generation: u64, charged: u32) {
        self.bytes.fetch_sub(i64::from(charged), Ordering::Relaxed);
        if generation == self.generation() {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        // Copied first: after the decrement below this namespace may be gone.
        let (id, sink) = (self.id, self.empty_sink);
        // Last touch, and Release: once `entries` reads zero the main thread may
        // forget and free this namespace while the lazy-free thread returns.
        if self.entries.fetch_sub(1, Ordering::Release) == 1 {
            // The id and the sink outlive the namespace, so reporting after the
            // decrement is safe; the registry checks the count again.
            if let Some(sink) = sink {
                sink.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
            }
        }
    }

    /// Zeroes counters, hot keys and latencies (not entries, bytes or the
    /// generation: those describe what is stored, not what happened).
    pub fn reset_stats(&self) {
        let mut stats = self.stats();
        let k = stats.topk.k();
        *stats = Stats::new(k);
    }

    /// A report in the shared wire format.
    pub fn report(&self) -> NamespaceStats {
        let stats = self.stats();
        let c = &stats.counters;
        NamespaceStats {
            prefix: self.name.to_string(),
            hits: c.hits,
            misses: c.misses,
            hit_ratio: NamespaceStats::hit_ratio_of(c.hits, c.misses),
            sets: c.sets,
            deletes: c.deletes,
            invalidations: c.invalidations,
            expired: c.expired,
            evicted: c.evicted,
            entries: self.entries().max(0) as u64,
            bytes: self.bytes().max(0) as u64,
            read_latency_us: stats.read_latency.summary_us(),
            write_latency_us: stats.write_latency.summary_us(),
            leases: c.leases,
            lease_waits: c.lease_waits,
            refreshes: c.refreshes,
            stale_sets_rejected: c.stale_sets_rejected,
        }
    }
}

/// A registered namespace and when it was last used.
#[derive(Debug)]
struct Registered {
    ns: &'static Namespace,
    last_used: u64,
    /// Whether it is in [`Registry::empty`] (under `last_used`).
    indexed: bool,
}

/// Bumped whenever a namespace is forgotten (and freed): a `&'static Namespace`
/// cached outside the registry is valid only while the epoch it was taken in
/// lasts.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current registry epoch (see [`EPOCH`]).
pub fn epoch() -> u64 {
    EPOCH.load(Ordering::Acquire)
}

/// Name → namespace. Only the main thread looks names up.
///
/// Making room must not cost a scan of every namespace: a client that reads
/// unknown prefixes at the cap would make each of its reads O(cap) on the main
/// thread. So the registry keeps the namespaces that may be empty ordered by
/// last use (`empty`), and a namespace whose last entry goes reports its id to
/// `became_empty` (from whichever thread freed the entry). An indexed namespace
/// found holding entries leaves the index until it reports again, so each one
/// is passed over at most once per time it empties: victims cost O(log n)
/// amortized.
#[derive(Debug)]
pub struct Registry {
    by_name: HashMap<Box<str>, Registered>,
    by_id: HashMap<u64, Box<str>>,
    /// last_used → id of namespaces that may hold no entries; every empty
    /// namespace is here or has its id in `became_empty`.
    empty: BTreeMap<u64, u64>,
    became_empty: EmptySink,
    /// Logical clock of uses, for the least-recently-used policy.
    clock: u64,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            by_name: HashMap::new(),
            by_id: HashMap::new(),
            empty: BTreeMap::new(),
            // One per registry, and the module has one registry: it lives as
            // long as the namespaces that may report to it.
            became_empty: Box::leak(Box::new(Mutex::new(BTreeSet::new()))),
            clock: 0,
        }
    }
}

impl Registry {
    /// The namespace called `name`, if it exists (not counted as a use).
    pub fn get(&self, name: &str) -> Option<&'static Namespace> {
        self.by_name.get(name).map(|r| r.ns)
    }

    /// The namespace called `name`, if it exists, counted as a use.
    fn use_existing(&mut self, name: &str) -> Option<&'static Namespace> {
        let registered = self.by_name.get_mut(name)?;
        self.clock += 1;
        if registered.indexed {
            if let Some(id) = self.empty.remove(&registered.last_used) {
                self.empty.insert(self.clock, id);
            }
        }
        registered.last_used = self.clock;
        Some(registered.ns)
    }

    /// The namespace called `name`, created if missing. When `max` namespaces
    /// exist already, the least recently used empty one is forgotten to make
    /// room; when none is empty, the cap holds and creation fails.
    pub fn get_or_create(
        &mut self,
        name: &str,
        max: usize,
        k: usize,
    ) -> CacheResult<&'static Namespace> {
        if let Some(ns) = self.use_existing(name) {
            return Ok(ns);
        }
        if !self.make_room(max) {
            return Err(CacheError::TooManyNamespaces(max));
        }
        Ok(self.insert(name, k))
    }

    /// The namespace called `name`, created even past the cap `max`: for data
    /// that already exists (RDB/AOF loading, the replication stream), which
    /// must not be dropped. Empty namespaces still make room first, least
    /// recently used first: otherwise a replica, or a replay of a long AOF,
    /// would keep a namespace for every prefix its primary ever named, while
    /// the primary stays within the cap.
    pub fn get_or_create_uncapped(
        &mut self,
        name: &str,
        max: usize,
        k: usize,
    ) -> &'static Namespace {
        if let Some(ns) = self.use_existing(name) {
            return ns;
        }
        // When every namespace holds entries the cap gives way: never refused.
        let _ = self.make_room(max);
        self.insert(name, k)
    }

    fn insert(&mut self, name: &str, k: usize) -> &'static Namespace {
        // Reports pile up only between insertions and forgets: take them here.
        self.take_reports();
        let ns: &'static Namespace = Box::leak(Box::new(Namespace::with_sink(
            name,
            k,
            Some(self.became_empty),
        )));
        self.clock += 1;
        let last_used = self.clock;
        self.by_name.insert(
            name.into(),
            Registered {
                ns,
                last_used,
                indexed: true,
            },
        );
        self.by_id.insert(ns.id, name.into());
        self.empty.insert(last_used, ns.id);
        ns
    }

    /// Indexes the namespaces that reported their last entry gone.
    fn take_reports(&mut self) {
        let reported =
            std::mem::take(&mut *self.became_empty.lock().unwrap_or_else(|p| p.into_inner()));
        for id in reported {
            // A forgotten namespace's report is stale: its id is no longer known.
            let Some(registered) = self.by_id.get(&id).and_then(|n| self.by_name.get_mut(n)) else {
                continue;
            };
            if !registered.indexed && lifecycle::forgettable(registered.ns.entries()) {
                registered.indexed = true;
                self.empty.insert(registered.last_used, id);
            }
        }
    }

    /// Forgets empty namespaces, least recently used first, until fewer than
    /// `max` remain; false when that is impossible (all hold entries).
    fn make_room(&mut self, max: usize) -> bool {
        if !lifecycle::must_make_room(self.by_name.len(), max) {
            return true;
        }
        self.take_reports();
        while lifecycle::must_make_room(self.by_name.len(), max) {
            // The least recently used indexed namespace; one that holds
            // entries leaves the index until its last entry goes.
            let Some((_, id)) = self.empty.pop_first() else {
                return false;
            };
            let Some(registered) = self.by_id.get(&id).and_then(|n| self.by_name.get_mut(n)) else {
                continue;
            };
            registered.indexed = false;
            if lifecycle::forgettable(registered.ns.entries()) {
                let ns = registered.ns;
                self.remove(ns);
            }
        }
        true
    }

    /// `NSCACHE.FORGET`: drops the namespace called `name` and its statistics.
    /// Ok(true) when it was forgotten, Ok(false) when no such namespace exists,
    /// an error (and no change) when it holds entries.
    pub fn forget(&mut self, name: &str) -> CacheResult<bool> {
        let Some(ns) = self.get(name) else {
            return Ok(false);
        };
        let entries = ns.entries();
        if !lifecycle::forgettable(entries) {
            return Err(CacheError::NamespaceNotEmpty(name.to_string(), entries));
        }
        self.remove(ns);
        Ok(true)
    }

    /// Unregisters and frees `ns`, which holds no entries.
    fn remove(&mut self, ns: &'static Namespace) {
        if let Some(registered) = self.by_name.remove(ns.name()) {
            if registered.indexed {
                self.empty.remove(&registered.last_used);
            }
        }
        self.by_id.remove(&ns.id);
        // Invalidate cached pointers before the memory goes.
        EPOCH.fetch_add(1, Ordering::Release);
        crate::removal::drop_note_for(ns);
        // SAFETY: `ns` came from `Box::leak` in `insert` and was just removed
        // from the registry, the only owner. No entry points at it (`entries`
        // read zero with Acquire after the last `entry_freed`, and entries are
        // only created on the main thread, which is here); caches outside the
        // registry were invalidated just above.
        drop(unsafe { Box::from_raw(std::ptr::from_ref(ns).cast_mut()) });
    }

    /// All namespaces, sorted by name.
    pub fn all(&self) -> Vec<&'static Namespace> {
        let mut all: Vec<_> = self.by_name.values().map(|r| r.ns).collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// How many namespaces exist.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no namespace exists.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// The module's registry, created on first use.
pub fn registry() -> RegistryGuard {
    let mut guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    guard.get_or_insert_with(Registry::default);
    RegistryGuard(guard)
}

/// The registry if it is not locked right now (for crash reports, which may run
/// while a command holds the lock).
pub fn try_registry() -> Option<RegistryGuard> {
    let mut guard = match REGISTRY.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return None,
    };
    guard.get_or_insert_with(Registry::default);
    Some(RegistryGuard(guard))
}

/// A locked registry.
pub struct RegistryGuard(MutexGuard<'static, Option<Registry>>);

impl std::ops::Deref for RegistryGuard {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        // Filled by `registry()` before the guard is handed out.
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for RegistryGuard {
    fn deref_mut(&mut self) -> &mut Registry {
        self.0.as_mut().unwrap_or_else(|| unreachable!())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_creates_once_and_caps() {
        let mut reg = Registry::default();
        let a = reg.get_or_create("a", 2, 4).expect("first");
        assert!(std::ptr::eq(
            a,
            reg.get_or_create("a", 2, 4).expect("again")
        ));
        let b = reg.get_or_create("b", 2, 4).expect("second");
        // Namespaces that hold entries cannot be forgotten to make room.
        a.entry_created(0, 1);
        b.entry_created(0, 1);
        assert!(matches!(
            reg.get_or_create("c", 2, 4),
            Err(CacheError::TooManyNamespaces(2))
        ));
        assert!(reg.get("c").is_none());
        reg.get_or_create("c", 3, 4).expect("after raising the cap");
        let names: Vec<_> = reg.all().iter().map(|n| n.name().to_string()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        a.entry_freed(0, 1);
        b.entry_freed(0, 1);
    }

    #[test]
    fn the_cap_forgets_the_least_recently_used_empty_namespace() {
        let mut reg = Registry::default();
        let a = reg.get_or_create("a", 3, 4).expect("a");
        reg.get_or_create("b", 3, 4).expect("b");
        reg.get_or_create("c", 3, 4).expect("c");
        a.entry_created(0, 10);
        // a is the oldest but holds an entry; b is the oldest empty one.
        let before = epoch();
        reg.get_or_create("d", 3, 4).expect("d makes room");
        assert!(epoch() > before, "forgetting invalidates cached pointers");
        let names: Vec<_> = reg.all().iter().map(|n| n.name().to_string()).collect();
        assert_eq!(names, ["a", "c", "d"]);
        // A use makes c recent: d goes next.
        reg.get_or_create("c", 3, 4).expect("c again");
        reg.get_or_create("e", 3, 4).expect("e");
        let names: Vec<_> = reg.all().iter().map(|n| n.name().to_string()).collect();
        assert_eq!(names, ["a", "c", "e"]);
        a.entry_freed(0, 10);
    }

    #[test]
    fn namespaces_with_entries_keep_the_cap() {
        let mut reg = Registry::default();
        let a = reg.get_or_create("a", 1, 4).expect("a");
        a.entry_created(0, 10);
        assert!(matches!(
            reg.get_or_create("b", 1, 4),
            Err(CacheError::TooManyNamespaces(1))
        ));
        // Loading and replication are not capped.
        let b = reg.get_or_create_uncapped("b", 1, 4);
        b.entry_created(0, 1);
        assert_eq!(reg.len(), 2);
        let c = reg.get_or_create_uncapped("c", 1, 4);
        c.entry_created(0, 1);
        assert_eq!(reg.len(), 3);
        b.entry_freed(0, 1);
        // Over the cap, room is made down to below it.
        a.entry_freed(0, 10);
        reg.get_or_create("d", 2, 4).expect("a and b go");
        let names: Vec<_> = reg.all().iter().map(|n| n.name().to_string()).collect();
        assert_eq!(names, ["c", "d"]);
        c.entry_freed(0, 1);
    }

    #[test]
    fn uncapped_creation_still_forgets_empty_namespaces() {
        let mut reg = Registry::default();
        let kept = reg.get_or_create_uncapped("kept", 10, 4);
        kept.entry_created(0, 1);
        for i in 0..1000 {
            reg.get_or_create_uncapped(&format!("r{i}"), 10, 4);
            assert!(reg.len() <= 10, "{} namespaces", reg.len());
        }
        assert!(reg.get("kept").is_some(), "one with entries stays");
        assert!(reg.get("r999").is_some() && reg.get("r991").is_some());
        assert!(reg.get("r990").is_none(), "the least recently used went");
        kept.entry_freed(0, 1);
    }

    #[test]
    fn forget_refuses_a_namespace_with_entries_and_ignores_unknown_ones() {
        let mut reg = Registry::default();
        assert_eq!(reg.forget("nope"), Ok(false));
        let a = reg.get_or_create("a", 10, 4).expect("a");
        a.entry_created(0, 10);
        a.entry_created(0, 10);
        a.invalidate();
        assert_eq!(
            reg.forget("a"),
            Err(CacheError::NamespaceNotEmpty("a".to_string(), 2)),
            "stale entries still point at it"
        );
        a.entry_freed(0, 10);
        a.entry_freed(0, 10);
        assert_eq!(reg.forget("a"), Ok(true));
        assert!(reg.get("a").is_none());
        let again = reg.get_or_create("a", 10, 4).expect("a anew");
        assert_eq!((again.generation(), again.report().invalidations), (0, 0));
    }

    #[test]
    fn a_namespace_that_empties_later_is_a_victim_again() {
        let mut reg = Registry::default();
        let a = reg.get_or_create("a", 3, 4).expect("a");
        let b = reg.get_or_create("b", 3, 4).expect("b");
        reg.get_or_create("c", 3, 4).expect("c");
        a.entry_created(0, 1);
        b.entry_created(0, 1);
        // a and b are passed over (and leave the index); c goes.
        reg.get_or_create("d", 3, 4).expect("d");
        assert!(reg.get("c").is_none());
        // b's last entry goes, from any thread: b is the least recently used
        // empty namespace again, older than d.
        b.entry_freed(0, 1);
        reg.get_or_create("e", 3, 4).expect("e");
        let names: Vec<_> = reg.all().iter().map(|n| n.name().to_string()).collect();
        assert_eq!(names, ["a", "d", "e"]);
        // With every namespace but the newest holding entries, each new one
        // replaces the previous newcomer.
        let d = reg.get("d").expect("d");
        d.entry_created(0, 1);
        for i in 0..100 {
            reg.get_or_create(&format!("junk{i}"), 3, 4).expect("junk");
        }
        let names: Vec<_> = reg.all().iter().map(|n| n.name().to_string()).collect();
        assert_eq!(names, ["a", "d", "junk99"]);
        // Full of entries: the cap holds.
        reg.get("junk99").expect("junk99").entry_created(0, 1);
        assert!(reg.get_or_create("f", 3, 4).is_err());
        for name in ["a", "d", "junk99"] {
            reg.get(name).expect(name).entry_freed(0, 1);
        }
        reg.get_or_create("f", 3, 4).expect("room again");
        let names: Vec<_> = reg.all().iter().map(|n| n.name().to_string()).collect();
        assert_eq!(names, ["d", "f", "junk99"], "a was the least recently used");
    }

    #[test]
    fn churn_keeps_at_most_the_cap() {
        let mut reg = Registry::default();
        for i in 0..10_000 {
            reg.get_or_create(&format!("junk{i}"), 100, 4)
                .expect("empty ones make room");
            assert!(reg.len() <= 100);
        }
    }

    #[test]
    fn report_uses_spec_field_semantics() {
        let ns = Namespace::new("p", 4);
        {
            let mut s = ns.stats();
            s.read(b"k", true);
            s.read(b"k", true);
            s.read(b"k", true);
            s.read(b"x", false);
            s.counters.sets = 2;
            s.read_latency.record(1500);
        }
        ns.entry_created(0, 100);
        let r = ns.report();
        assert_eq!(
            (r.hits, r.misses, r.sets, r.entries, r.bytes),
            (3, 1, 2, 1, 100)
        );
        assert!((r.hit_ratio - 0.75).abs() < 1e-9);
        assert!(r.read_latency_us.max >= 1);
        assert_eq!(ns.stats().topk.top(1)[0].0, b"k");
        ns.reset_stats();
        let r = ns.report();
        assert_eq!((r.hits, r.entries, r.read_latency_us.max), (0, 1, 0));
        assert!(ns.stats().topk.top(1).is_empty());
    }

    #[test]
    fn invalidate_counts_live_entries_of_the_current_generation() {
        let ns = Namespace::new("p", 4);
        ns.entry_created(0, 10);
        ns.entry_created(0, 10);
        assert_eq!(ns.invalidate(), 2);
        assert_eq!(ns.generation(), 1);
        // The old entries are still in memory until reclaimed.
        assert_eq!(ns.entries(), 2);
        ns.entry_created(1, 10);
        ns.entry_freed(0, 10);
        assert_eq!(ns.invalidate(), 1);
        assert_eq!((ns.entries(), ns.bytes()), (2, 20));
        assert_eq!(ns.report().invalidations, 2);
    }
}
