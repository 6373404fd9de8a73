//! What one entry costs in Redis memory, computed the way `MEMORY USAGE` does.
//!
//! `MEMORY USAGE key` of a module key is the type's `mem_usage` plus the key's
//! sds allocation plus one dict entry (plus 16 bytes of slot metadata in cluster
//! mode). The namespace's `bytes` counter charges exactly that at write time, so
//! `bytes` equals the sum of `MEMORY USAGE` over the namespace's keys.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Smallest allocation step of the allocator Redis runs on: 8 in upstream
/// builds of jemalloc, 16 in Debian's system jemalloc. Detected at load.
static QUANTUM: AtomicUsize = AtomicUsize::new(8);

/// Records the allocator's quantum, from the usable size Redis reports for a
/// 17-byte allocation (24 with an 8-byte quantum, 32 with a 16-byte one).
pub fn calibrate(usable_size_of_17: usize) {
    let quantum = if usable_size_of_17 >= 32 { 16 } else { 8 };
    QUANTUM.store(quantum, Ordering::Relaxed);
}

/// `robj` (16) plus `moduleValue` (16): Redis's wrapper around every module value.
const MODULE_OBJECT: usize = 32;
/// `dictEntry` of the main keyspace dict.
const DICT_ENTRY: usize = 24;
/// Per-key slot-to-keys metadata Redis 7.0 adds in cluster mode.
const CLUSTER_KEY_METADATA: usize = 16;

/// The size class jemalloc rounds `n` up to.
pub fn alloc_class(n: usize) -> usize {
    alloc_class_with(n, QUANTUM.load(Ordering::Relaxed))
}

fn alloc_class_with(n: usize, quantum: usize) -> usize {
    // jemalloc keeps a "tiny" 8-byte class below a 16-byte quantum.
    if n <= 8 {
        return 8;
    }
    if n <= 64 {
        return n.max(1).div_ceil(quantum) * quantum;
    }
    // Between 2^k and 2^(k+1) jemalloc has four classes, 2^(k-2) apart.
    let k = usize::BITS - 1 - (n - 1).leading_zeros();
    let spacing = 1usize << (k - 2);
    n.div_ceil(spacing) * spacing
}

/// Bytes of the sds string Redis allocates for a key of `len` bytes.
pub fn sds_alloc(len: usize) -> usize {
    let header = match len {
        0 => 3,
        1..32 => 1,
        32..256 => 3,
        256..65536 => 5,
        _ => 9,
    };
    alloc_class(header + len + 1)
}

/// `mem_usage` of an entry whose own allocation is `entry_alloc_len` bytes.
pub fn entry_mem_usage(entry_alloc_len: usize) -> usize {
    alloc_class(entry_alloc_len) + MODULE_OBJECT
}

/// What `MEMORY USAGE` reports for an entry stored under a key of `key_len` bytes.
pub fn key_usage(key_len: usize, entry_alloc_len: usize, cluster: bool) -> usize {
    entry_mem_usage(entry_alloc_len)
        + sds_alloc(key_len)
        + DICT_ENTRY
        + if cluster { CLUSTER_KEY_METADATA } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_jemalloc_with_an_8_byte_quantum() {
        let expect = [
            (1, 8),
            (8, 8),
            (9, 16),
            (24, 24),
            (57, 64),
            (64, 64),
            (65, 80),
            (80, 80),
            (81, 96),
            (128, 128),
            (129, 160),
            (257, 320),
            (1025, 1280),
            (4097, 5120),
        ];
        for (n, class) in expect {
            assert_eq!(alloc_class_with(n, 8), class, "n = {n}");
        }
    }

    #[test]
    fn a_16_byte_quantum_merges_the_smallest_classes() {
        let expect = [
            (1, 8),
            (8, 8),
            (9, 16),
            (17, 32),
            (53, 64),
            (65, 80),
            (129, 160),
            (1025, 1280),
        ];
        for (n, class) in expect {
            assert_eq!(alloc_class_with(n, 16), class, "n = {n}");
        }
    }

    #[test]
    fn sds_headers_grow_with_length() {
        calibrate(24);
        assert_eq!(sds_alloc(10), alloc_class(12));
        assert_eq!(sds_alloc(40), alloc_class(44));
        assert_eq!(sds_alloc(300), alloc_class(306));
    }
}
