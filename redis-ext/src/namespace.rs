//! Namespaces: their generation, counters and the registry that names them.
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

/// Counters only the main thread changes; kept behind one lock per namespace so a
/// command pays for one uncontended lock, not one atomic per counter.
#[derive(Debug, Default, Clone)]
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

/// One namespace.
#[derive(Debug)]
pub struct Namespace {
    name: Box<str>,
    generation: AtomicU64,
    counters: Mutex<Counters>,
    // Entries and bytes change in free callbacks, which may run on the lazy-free
    // thread: atomics, not the lock.
    entries: AtomicI64,
    bytes: AtomicI64,
}

impl Namespace {
    /// A fresh namespace at generation 0.
    pub fn new(name: &str) -> Namespace {
        Namespace {
            name: name.into(),
            generation: AtomicU64::new(0),
            counters: Mutex::new(Counters::default()),
            entries: AtomicI64::new(0),
            bytes: AtomicI64::new(0),
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

    /// Sets the generation (restored from RDB aux data or a replicated bump).
    pub fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }

    /// The main-thread counters, locked.
    pub fn counters(&self) -> MutexGuard<'_, Counters> {
        // A poisoned lock only means a panic happened mid-update of plain
        // counters; they stay usable.
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live entries.
    pub fn entries(&self) -> i64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Bytes of live entries.
    pub fn bytes(&self) -> i64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn entry_created(&self, charged: u32) {
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(i64::from(charged), Ordering::Relaxed);
    }

    pub(crate) fn entry_freed(&self, charged: u32) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(i64::from(charged), Ordering::Relaxed);
    }

    /// Zeroes the counters (not entries, bytes or the generation: those describe
    /// what is stored, not what happened).
    pub fn reset_counters(&self) {
        *self.counters() = Counters::default();
    }

    /// A report in the shared wire format.
    pub fn report(&self) -> NamespaceStats {
        let c = self.counters().clone();
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
            read_latency_us: Default::default(),
            write_latency_us: Default::default(),
        }
    }
}

/// Default cap on the number of namespaces.
pub const DEFAULT_MAX_NAMESPACES: usize = 1024;

/// Name → namespace. Only the main thread looks names up.
#[derive(Debug)]
pub struct Registry {
    by_name: HashMap<Box<str>, &'static Namespace>,
    max: usize,
}

impl Registry {
    /// An empty registry holding at most `max` namespaces.
    pub fn new(max: usize) -> Registry {
        Registry {
            by_name: HashMap::new(),
            max,
        }
    }

    /// The namespace called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<&'static Namespace> {
        self.by_name.get(name).copied()
    }

    /// The namespace called `name`, created if missing and the cap allows.
    pub fn get_or_create(&mut self, name: &str) -> CacheResult<&'static Namespace> {
        if let Some(ns) = self.get(name) {
            return Ok(ns);
        }
        if self.by_name.len() >= self.max {
            return Err(CacheError::TooManyNamespaces(self.max));
        }
        Ok(self.get_or_create_uncapped(name))
    }

    /// The namespace called `name`, created even past the cap: for data that
    /// already exists (RDB load), which must not be dropped.
    pub fn get_or_create_uncapped(&mut self, name: &str) -> &'static Namespace {
        if let Some(ns) = self.get(name) {
            return ns;
        }
        let ns: &'static Namespace = Box::leak(Box::new(Namespace::new(name)));
        self.by_name.insert(name.into(), ns);
        ns
    }

    /// Changes the cap; existing namespaces stay even above it.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// All namespaces, sorted by name.
    pub fn all(&self) -> Vec<&'static Namespace> {
        let mut all: Vec<_> = self.by_name.values().copied().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// The module's registry, created on first use.
pub fn registry() -> RegistryGuard {
    let mut guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    guard.get_or_insert_with(|| Registry::new(DEFAULT_MAX_NAMESPACES));
    RegistryGuard(guard)
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
        let mut reg = Registry::new(2);
        let a = reg.get_or_create("a").expect("first");
        assert!(std::ptr::eq(a, reg.get_or_create("a").expect("again")));
        reg.get_or_create("b").expect("second");
        assert!(matches!(
            reg.get_or_create("c"),
            Err(CacheError::TooManyNamespaces(2))
        ));
        assert!(reg.get("c").is_none());
        reg.set_max(3);
        reg.get_or_create("c").expect("after raising the cap");
        let names: Vec<_> = reg.all().iter().map(|n| n.name().to_string()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn report_uses_spec_field_semantics() {
        let ns = Namespace::new("p");
        {
            let mut c = ns.counters();
            c.hits = 3;
            c.misses = 1;
            c.sets = 2;
        }
        ns.entry_created(100);
        let r = ns.report();
        assert_eq!(
            (r.hits, r.misses, r.sets, r.entries, r.bytes),
            (3, 1, 2, 1, 100)
        );
        assert!((r.hit_ratio - 0.75).abs() < 1e-9);
        ns.reset_counters();
        let r = ns.report();
        assert_eq!((r.hits, r.entries), (0, 1));
    }
}
