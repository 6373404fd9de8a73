//! Namespaces: their generation, statistics and the registry that names them.
//!
//! A namespace lives as long as the module: entries point at it, and an entry may
//! be freed on Redis's lazy-free thread after the command that dropped it ended.
//! Namespaces are therefore allocated once, never moved and never freed; the
//! registry caps how many there can be.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use cachetx_shared::NamespaceStats;

use crate::error::{CacheError, CacheResult};
use crate::histogram::Histogram;
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

/// One namespace.
#[derive(Debug)]
pub struct Namespace {
    name: Box<str>,
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
        Namespace {
            name: name.into(),
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

    /// The per-command statistics, locked.
    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        // A poisoned lock only means a panic happened mid-update of plain
        // figures; they stay usable.
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries present in memory (live or awaiting reclaim).
    pub fn entries(&self) -> i64 {
        self.entries.load(Ordering::Relaxed)
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
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(i64::from(charged), Ordering::Relaxed);
        if generation == self.generation() {
            self.live.fetch_sub(1, Ordering::Relaxed);
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
        }
    }
}

/// Name → namespace. Only the main thread looks names up.
#[derive(Debug, Default)]
pub struct Registry {
    by_name: HashMap<Box<str>, &'static Namespace>,
}

impl Registry {
    /// The namespace called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<&'static Namespace> {
        self.by_name.get(name).copied()
    }

    /// The namespace called `name`, created if missing and fewer than `max` exist.
    pub fn get_or_create(
        &mut self,
        name: &str,
        max: usize,
        k: usize,
    ) -> CacheResult<&'static Namespace> {
        if let Some(ns) = self.get(name) {
            return Ok(ns);
        }
        if self.by_name.len() >= max {
            return Err(CacheError::TooManyNamespaces(max));
        }
        Ok(self.get_or_create_uncapped(name, k))
    }

    /// The namespace called `name`, created even past the cap: for data that
    /// already exists (RDB load), which must not be dropped.
    pub fn get_or_create_uncapped(&mut self, name: &str, k: usize) -> &'static Namespace {
        if let Some(ns) = self.get(name) {
            return ns;
        }
        let ns: &'static Namespace = Box::leak(Box::new(Namespace::new(name, k)));
        self.by_name.insert(name.into(), ns);
        ns
    }

    /// All namespaces, sorted by name.
    pub fn all(&self) -> Vec<&'static Namespace> {
        let mut all: Vec<_> = self.by_name.values().copied().collect();
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
        reg.get_or_create("b", 2, 4).expect("second");
        assert!(matches!(
            reg.get_or_create("c", 2, 4),
            Err(CacheError::TooManyNamespaces(2))
        ));
        assert!(reg.get("c").is_none());
        reg.get_or_create("c", 3, 4).expect("after raising the cap");
        let names: Vec<_> = reg.all().iter().map(|n| n.name().to_string()).collect();
        assert_eq!(names, ["a", "b", "c"]);
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
