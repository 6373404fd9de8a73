//! Module configuration (`CONFIG SET nscache.<name>`, or load arguments).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// `nscache.topk`: how many hottest keys each namespace tracks.
pub static TOPK: AtomicI64 = AtomicI64::new(32);
/// `nscache.max-namespaces`: cap on distinct namespaces. At the cap, a new
/// namespace replaces the least recently used empty one; only when every
/// namespace holds entries does a write of a new one get an error (SPEC 2.6).
pub static MAX_NAMESPACES: AtomicI64 = AtomicI64::new(1024);
/// `nscache.sweep-budget`: keys the background sweep may visit per 10 ms tick.
pub static SWEEP_BUDGET: AtomicI64 = AtomicI64::new(1000);
/// `nscache.max-leases`: cap on outstanding FETCH leases, all namespaces and
/// databases together (SPEC 2.4). At the cap a new lease replaces the one
/// that would expire first.
pub static MAX_LEASES: AtomicI64 = AtomicI64::new(crate::lease::DEFAULT_MAX_LEASES as i64);
/// `nscache.publish-invalidations`: PUBLISH a `cache.invalidated` envelope on
/// `nscache:events` after NSCACHE.DEL and NSCACHE.INVALIDATE.
pub static PUBLISH_INVALIDATIONS: AtomicBool = AtomicBool::new(false);

/// Bounds of each numeric config (min, max), as registered with Redis.
pub const TOPK_RANGE: (i64, i64) = (1, 1024);
/// Bounds of `max-namespaces`.
pub const MAX_NAMESPACES_RANGE: (i64, i64) = (1, 1_000_000);
/// Bounds of `sweep-budget`.
pub const SWEEP_BUDGET_RANGE: (i64, i64) = (10, 10_000_000);

/// Bounds of `max-leases`.
pub const MAX_LEASES_RANGE: (i64, i64) = (1, 10_000_000);

/// Current lease cap.
pub fn max_leases() -> usize {
    usize::try_from(MAX_LEASES.load(Ordering::Relaxed))
        .unwrap_or(1)
        .max(1)
}

/// Current top-K size.
pub fn topk() -> usize {
    usize::try_from(TOPK.load(Ordering::Relaxed))
        .unwrap_or(1)
        .max(1)
}

/// Current namespace cap.
pub fn max_namespaces() -> usize {
    usize::try_from(MAX_NAMESPACES.load(Ordering::Relaxed))
        .unwrap_or(1)
        .max(1)
}

/// Current sweep budget per tick.
pub fn sweep_budget() -> usize {
    usize::try_from(SWEEP_BUDGET.load(Ordering::Relaxed))
        .unwrap_or(10)
        .max(10)
}

/// Whether invalidations are published.
pub fn publish_invalidations() -> bool {
    PUBLISH_INVALIDATIONS.load(Ordering::Relaxed)
}
