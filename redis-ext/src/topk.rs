//! Per-namespace hottest keys in bounded memory (SPEC 2.5, `NSCACHE.TOPKEYS`).
//!
//! [`TopK::record`] runs on every cache read, on Redis's single main thread, so it
//! must cost about as much as the read itself. Two structures share the work:
//!
//! - a count-min sketch with conservative update (4 rows of 1024 saturating `u32`
//!   counters, 16 KiB, allocated once) estimates how often every key not in the
//!   table was read. Touching it allocates nothing, so the long tail of cold keys
//!   costs one hash and four counter updates each;
//! - a Space-Saving-style table of at most K keys holds the candidates. A tracked
//!   key's count is incremented directly (found through a small open-addressing
//!   index, then a min-heap fix-up that is O(1) for hot keys at the bottom of the
//!   heap). An untracked key enters when its sketch estimate exceeds the smallest
//!   tracked count, replacing that key, whose count is written back into the sketch
//!   so that nothing it accumulated is lost if it comes back. Only entering the table
//!   allocates (the key bytes), and not even that when the evicted key had the same
//!   length.
//!
//! # Error bound
//!
//! Counts are since the table was created or last cleared ([`TopK::clear`], run by
//! `NSCACHE.RESETSTATS`); there is no decay, so a key that was hot an hour ago stays
//! reported until others overtake its count. With N reads recorded since then and
//! `f` a key's true number of reads:
//!
//! - a reported count never underestimates: `count >= f`;
//! - it overestimates by at most `ε·N` with probability at least `1 − δ`, where
//!   `ε = e / width` and `δ = e^−depth`. Here width = 1024 and depth = 4, so
//!   `ε ≈ 0.00265` and `δ ≈ 0.0183`: with probability ≥ 98.2 % a count is at most
//!   0.27 % of N too high (≤ 2,655 after 1,000,000 reads). Conservative update
//!   makes the typical error far smaller than the bound;
//! - a key whose true count exceeds the smallest reported count is reported: at its
//!   last read its estimate (≥ its true count) beat that count, so it was admitted.
//!
//! The 64-bit hash is seeded per table at random, so clients cannot precompute keys
//! that collide with a victim key in all four rows to inflate its count. Counters
//! saturate at `u32::MAX` reads per cell; tracked counts are `u64`.
//!
//! # Memory
//!
//! 16 KiB of sketch, plus per tracked slot about 40 bytes, the key bytes and 12
//! bytes of heap and index: about 18 KiB for K = 32 and short keys, whatever the
//! number of distinct keys read. Long keys cost their length, K times at most.

use std::cmp::Ordering;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;

/// Number of hottest keys tracked when the module config does not say otherwise.
pub const DEFAULT_K: usize = 32;

/// Largest K accepted; larger requests are clamped so a bad config cannot make
/// [`TopK::new`] preallocate gigabytes.
pub const MAX_K: usize = 1 << 16;

/// log2 of the sketch width: each row's column takes this many bits of the hash.
const WIDTH_BITS: u32 = 10;
/// Counters per sketch row.
const WIDTH: usize = 1 << WIDTH_BITS;
/// Sketch rows; each row's column comes from its own bits of one 64-bit hash.
const DEPTH: usize = 4;
// The row columns are disjoint bit fields of one hash, so they must fit in 64 bits.
const _: () = assert!(DEPTH * WIDTH_BITS as usize <= 64);

/// Marks a free index cell.
const EMPTY: u32 = u32::MAX;

/// Multipliers of the hash (wyhash's secrets: odd, with balanced bits).
const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;

/// One tracked key.
#[derive(Clone)]
struct Slot {
    hash: u64,
    count: u64,
    /// Where this slot's id sits in `TopK::heap`, so an increment can fix the heap
    /// without searching it.
    heap_pos: usize,
    key: Box<[u8]>,
}

/// The hottest keys of one namespace, with estimated read counts.
#[derive(Clone)]
pub struct TopK {
    k: usize,
    seed: u64,
    sketch: Box<[[u32; WIDTH]; DEPTH]>,
    /// Tracked keys; at most `k`. A slot's id (its position) is stable until
    /// `resize`, so the heap and the index refer to slots by id.
    slots: Vec<Slot>,
    /// Slot ids as a min-heap on count: the root is the eviction candidate.
    heap: Vec<u32>,
    /// Open-addressing (linear probing) map from hash to slot id, at most half
    /// full so probes stay short and always find an `EMPTY` cell.
    index: Box<[u32]>,
}

impl fmt::Debug for TopK {
    // The sketch is 4096 numbers of no use in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopK")
            .field("k", &self.k)
            .field("tracked", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl TopK {
    /// An empty table tracking at most `k` keys (clamped to `1..=MAX_K`).
    pub fn new(k: usize) -> TopK {
        // A fresh seed per table: collisions found against one table (or one run)
        // do not carry over.
        TopK::with_seed(k, RandomState::new().hash_one(0x746f_706b_u64))
    }

    /// An empty table hashing with a chosen seed, so tests are reproducible.
    fn with_seed(k: usize, seed: u64) -> TopK {
        let k = clamp_k(k);
        TopK {
            k,
            seed,
            sketch: Box::new([[0; WIDTH]; DEPTH]),
            slots: Vec::with_capacity(k),
            heap: Vec::with_capacity(k),
            index: vec![EMPTY; index_len(k)].into_boxed_slice(),
        }
    }

    /// Counts one read of `key`.
    pub fn record(&mut self, key: &[u8]) {
        let hash = hash_key(self.seed, key);
        if let Some(id) = self.find(hash, key) {
            // Tracked keys bypass the sketch: their exact increments live in the
            // slot and reach the sketch only if they are evicted.
            let slot = &mut self.slots[id];
            slot.count = slot.count.saturating_add(1);
            let pos = slot.heap_pos;
            self.sift_down(pos);
            return;
        }
        let estimate = u64::from(self.sketch_add(hash));
        if self.slots.len() < self.k {
            self.admit(hash, key, estimate);
        } else if let Some(&root) = self.heap.first() {
            if estimate > self.slots[root as usize].count {
                self.replace(root, hash, key, estimate);
            }
        }
    }

    /// The `n` hottest tracked keys with their counts, hottest first, ties by key
    /// bytes ascending.
    pub fn top(&self, n: usize) -> Vec<(Vec<u8>, u64)> {
        if n == 0 {
            return Vec::new();
        }
        let mut order: Vec<&Slot> = self.slots.iter().collect();
        order.sort_unstable_by(|a, b| hotter_first(a, b));
        order
            .into_iter()
            .take(n)
            .map(|slot| (slot.key.to_vec(), slot.count))
            .collect()
    }

    /// How many keys the table may track.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Changes how many keys are tracked (clamped to `1..=MAX_K`), keeping the
    /// hottest ones.
    pub fn resize(&mut self, k: usize) {
        let k = clamp_k(k);
        if k == self.k {
            return;
        }
        let mut slots = std::mem::take(&mut self.slots);
        slots.sort_unstable_by(hotter_first);
        for slot in slots.drain(k.min(slots.len())..) {
            // Keep what the dropped keys counted, as an eviction would.
            self.sketch_raise(slot.hash, slot.count);
        }
        // Fresh vectors sized for the new k, so shrinking gives memory back.
        self.slots = Vec::with_capacity(k);
        self.slots.extend(slots);
        self.heap = Vec::with_capacity(k);
        self.index = vec![EMPTY; index_len(k)].into_boxed_slice();
        self.k = k;
        for id in 0..self.slots.len() {
            self.slots[id].heap_pos = id;
            self.heap.push(id as u32);
            self.index_insert(self.slots[id].hash, id as u32);
        }
        for pos in (0..self.heap.len() / 2).rev() {
            self.sift_down(pos);
        }
    }

    /// Forgets every key and count (`NSCACHE.RESETSTATS`); keeps K and the memory.
    pub fn clear(&mut self) {
        for row in self.sketch.iter_mut() {
            row.fill(0);
        }
        self.slots.clear();
        self.heap.clear();
        self.index.fill(EMPTY);
    }

    /// Approximate heap bytes held (allocator overhead aside).
    pub fn heap_bytes(&self) -> usize {
        let keys: usize = self.slots.iter().map(|slot| slot.key.len()).sum();
        std::mem::size_of::<[[u32; WIDTH]; DEPTH]>()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + keys
            + self.heap.capacity() * std::mem::size_of::<u32>()
            + self.index.len() * std::mem::size_of::<u32>()
    }

    /// The slot id tracking `key`, if any.
    fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let mask = self.index.len() - 1;
        let mut pos = home(hash, mask);
        loop {
            let id = self.index[pos];
            if id == EMPTY {
                return None;
            }
            let slot = &self.slots[id as usize];
            // The hash rejects almost every other key without touching its bytes.
            if slot.hash == hash && *slot.key == *key {
                return Some(id as usize);
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Tracks a new key in a free slot.
    fn admit(&mut self, hash: u64, key: &[u8], count: u64) {
        let id = self.slots.len();
        self.slots.push(Slot {
            hash,
            count,
            heap_pos: id,
            key: key.into(),
        });
        self.heap.push(id as u32);
        self.index_insert(hash, id as u32);
        self.sift_up(id);
    }

    /// Evicts the key in slot `id` (the heap root) in favour of `key`.
    fn replace(&mut self, id: u32, hash: u64, key: &[u8], count: u64) {
        let (old_hash, old_count) = {
            let slot = &self.slots[id as usize];
            (slot.hash, slot.count)
        };
        self.sketch_raise(old_hash, old_count);
        // Unlink under the old hash before the slot forgets it.
        self.index_remove(id);
        let slot = &mut self.slots[id as usize];
        slot.hash = hash;
        slot.count = count;
        if slot.key.len() == key.len() {
            // Same-length keys (typical within a namespace) reuse the buffer, so two
            // keys trading places at the threshold do not allocate.
            slot.key.copy_from_slice(key);
        } else {
            slot.key = key.into();
        }
        let pos = slot.heap_pos;
        self.index_insert(hash, id);
        self.sift_down(pos);
    }

    /// Conservative update: raises only the counters at the current minimum, to the
    /// minimum plus one. Returns the new estimate.
    fn sketch_add(&mut self, hash: u64) -> u32 {
        let cols = columns(hash);
        let mut estimate = u32::MAX;
        for (row, &col) in self.sketch.iter().zip(&cols) {
            estimate = estimate.min(row[col]);
        }
        let next = estimate.saturating_add(1);
        for (row, &col) in self.sketch.iter_mut().zip(&cols) {
            let cell = &mut row[col];
            *cell = (*cell).max(next);
        }
        next
    }

    /// Makes the sketch estimate of `hash` at least `count`. Each cell stays at most
    /// the sum of the true counts of the keys that map to it (the tracked count is
    /// itself bounded so), which is what the error bound rests on.
    fn sketch_raise(&mut self, hash: u64, count: u64) {
        let value = u32::try_from(count).unwrap_or(u32::MAX);
        for (row, col) in self.sketch.iter_mut().zip(columns(hash)) {
            let cell = &mut row[col];
            *cell = (*cell).max(value);
        }
    }

    /// Adds slot `id` under `hash` to the index.
    fn index_insert(&mut self, hash: u64, id: u32) {
        let mask = self.index.len() - 1;
        let mut pos = home(hash, mask);
        while self.index[pos] != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.index[pos] = id;
    }

    /// Removes slot `id` (still holding the hash it was inserted under) from the
    /// index by backward shifting, which keeps probe chains intact without
    /// tombstones that would lengthen every later lookup.
    fn index_remove(&mut self, id: u32) {
        let mask = self.index.len() - 1;
        let mut hole = home(self.slots[id as usize].hash, mask);
        while self.index[hole] != id {
            hole = (hole + 1) & mask;
        }
        let mut next = (hole + 1) & mask;
        loop {
            let moved = self.index[next];
            if moved == EMPTY {
                break;
            }
            // An entry may move back into the hole only if that does not put it
            // before its home cell, i.e. it has probed at least as far as the hole.
            let probed = next.wrapping_sub(home(self.slots[moved as usize].hash, mask)) & mask;
            if probed >= (next.wrapping_sub(hole) & mask) {
                self.index[hole] = moved;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.index[hole] = EMPTY;
    }

    /// Count of the slot at heap position `pos`.
    fn heap_count(&self, pos: usize) -> u64 {
        self.slots[self.heap[pos] as usize].count
    }

    /// Swaps two heap positions, keeping the slots' back-pointers right.
    fn heap_swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.slots[self.heap[a] as usize].heap_pos = a;
        self.slots[self.heap[b] as usize].heap_pos = b;
    }

    /// Moves a grown count towards the leaves; hot keys are already there, so
    /// their increments stop after one comparison.
    fn sift_down(&mut self, mut pos: usize) {
        let len = self.heap.len();
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                return;
            }
            let right = left + 1;
            let child = if right < len && self.heap_count(right) < self.heap_count(left) {
                right
            } else {
                left
            };
            if self.heap_count(child) >= self.heap_count(pos) {
                return;
            }
            self.heap_swap(pos, child);
            pos = child;
        }
    }

    /// Moves a new entry towards the root while it is colder than its parent.
    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heap_count(pos) >= self.heap_count(parent) {
                return;
            }
            self.heap_swap(pos, parent);
            pos = parent;
        }
    }
}

/// Hottest first, then key bytes ascending: the order `top` promises.
fn hotter_first(a: &Slot, b: &Slot) -> Ordering {
    b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key))
}

/// K within the supported range.
fn clamp_k(k: usize) -> usize {
    k.clamp(1, MAX_K)
}

/// Index cells for `k` slots: a power of two (for masking) at least twice `k`.
fn index_len(k: usize) -> usize {
    (2 * k).next_power_of_two().max(4)
}

/// First index cell to probe. Uses the hash bits above the sketch's, so keys that
/// share sketch columns do not also share probe chains.
fn home(hash: u64, mask: usize) -> usize {
    (hash >> 40) as usize & mask
}

/// The sketch column of `hash` in each row: disjoint bit fields of the hash.
fn columns(hash: u64) -> [usize; DEPTH] {
    std::array::from_fn(|row| (hash >> (row as u32 * WIDTH_BITS)) as usize & (WIDTH - 1))
}

/// Multiplies into 128 bits and folds the halves together: one multiplication
/// mixes every input bit into the middle bits of the product.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// A wyhash-style 64-bit hash: one folded multiplication per 8-byte word, then one
/// over the length so keys differing only by trailing NULs differ.
fn hash_key(seed: u64, key: &[u8]) -> u64 {
    let mut h = seed ^ P0;
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        h = fold_mul(h ^ u64::from_le_bytes(bytes), P1);
    }
    h = fold_mul(h ^ tail_word(words.remainder()), P1);
    fold_mul(h ^ key.len() as u64, P2)
}

/// The last 0 to 7 bytes as one word, read with fixed-size loads: copying a
/// variable-length tail into a buffer calls memcpy and stalls the load that
/// follows, which cost more than the rest of the hash. The reads overlap but
/// cover every byte, so for a given length distinct tails give distinct words
/// (the length itself is mixed in by the caller).
#[inline]
fn tail_word(tail: &[u8]) -> u64 {
    let len = tail.len();
    if len >= 4 {
        let low = read_u32(tail, 0);
        let high = read_u32(tail, len - 4);
        low | (high << 32)
    } else if len > 0 {
        u64::from(tail[0]) | (u64::from(tail[len / 2]) << 8) | (u64::from(tail[len - 1]) << 16)
    } else {
        0
    }
}

/// Four bytes at `at`, little-endian.
#[inline]
fn read_u32(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u64::from(u32::from_le_bytes(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SEED: u64 = 0x5eed_5eed_5eed_5eed;
    /// The overestimate bound ε·N for `n` reads.
    fn eps_n(n: u64) -> u64 {
        (std::f64::consts::E / WIDTH as f64 * n as f64).ceil() as u64
    }

    /// splitmix64: tiny, deterministic, good enough to drive test streams.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Checks every internal invariant: index finds each slot, heap order holds,
    /// back-pointers agree, nothing exceeds k.
    fn check(t: &TopK) {
        assert!(t.slots.len() <= t.k);
        assert_eq!(t.heap.len(), t.slots.len());
        let used = t.index.iter().filter(|&&id| id != EMPTY).count();
        assert_eq!(used, t.slots.len());
        for (id, slot) in t.slots.iter().enumerate() {
            assert_eq!(t.find(slot.hash, &slot.key), Some(id));
            assert_eq!(t.heap[slot.heap_pos] as usize, id);
        }
        for pos in 1..t.heap.len() {
            assert!(t.heap_count((pos - 1) / 2) <= t.heap_count(pos));
        }
    }

    /// Zipf(s) sampler over ranks 0..n by inverse CDF.
    fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
        let mut total = 0.0;
        (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(s);
                total
            })
            .collect()
    }

    #[test]
    fn zipf_top_ten_found_in_order() {
        const KEYS: usize = 100_000;
        const READS: u64 = 1_000_000;
        let cdf = zipf_cdf(KEYS, 1.0);
        let total = *cdf.last().unwrap();
        // A fixed permutation, so rank is unrelated to key bytes or hash.
        let keys: Vec<Vec<u8>> = (0..KEYS)
            .map(|rank| format!("user:{}", (rank * 7919 + 13) % KEYS).into_bytes())
            .collect();
        let mut rng = Rng(42);
        let mut truth = vec![0u64; KEYS];
        let mut t = TopK::with_seed(DEFAULT_K, SEED);
        for _ in 0..READS {
            let x = rng.unit() * total;
            let rank = cdf.partition_point(|&c| c <= x).min(KEYS - 1);
            truth[rank] += 1;
            t.record(&keys[rank]);
        }
        check(&t);
        let mut by_truth: Vec<usize> = (0..KEYS).collect();
        by_truth.sort_by(|&a, &b| truth[b].cmp(&truth[a]).then(keys[a].cmp(&keys[b])));
        let top = t.top(32);
        assert_eq!(top.len(), 32);
        for (i, &rank) in by_truth.iter().take(10).enumerate() {
            let pos = top
                .iter()
                .position(|(key, _)| *key == keys[rank])
                .unwrap_or_else(|| panic!("true #{i} missing from the top 32"));
            let count = top[pos].1;
            assert!(count >= truth[rank], "underestimate for #{i}");
            assert!(count <= truth[rank] + eps_n(READS), "#{i} beyond ε·N");
            assert!(pos.abs_diff(i) <= 1, "true #{i} reported at {pos}");
        }
        // The head of the distribution is far apart: exact order.
        for i in 0..5 {
            assert_eq!(top[i].0, keys[by_truth[i]]);
        }
    }

    #[test]
    fn uniform_cold_keys_never_evict_a_hot_key() {
        let mut t = TopK::with_seed(DEFAULT_K, SEED);
        let mut rng = Rng(7);
        let mut hot = 0u64;
        for i in 0..1_000_000u64 {
            if i % 200 == 0 {
                t.record(b"hot");
                hot += 1;
            } else {
                t.record(format!("cold:{}", rng.below(100_000)).as_bytes());
            }
            if i % 10_000 == 9_999 {
                let top = t.top(1);
                assert_eq!(top[0].0, b"hot", "after {} reads", i + 1);
                assert!(top[0].1 >= hot && top[0].1 <= hot + eps_n(i + 1));
            }
        }
        check(&t);
    }

    #[test]
    fn memory_is_independent_of_distinct_keys() {
        let fill = |distinct: u64| {
            let mut t = TopK::with_seed(DEFAULT_K, SEED);
            let mut rng = Rng(3);
            for _ in 0..200_000 {
                t.record(format!("k{:06}", rng.below(distinct)).as_bytes());
            }
            check(&t);
            t.heap_bytes()
        };
        let few = fill(1_000);
        let many = fill(100_000);
        assert!(few < 64 * 1024 && many < 64 * 1024, "{few} / {many}");
        // Same-length keys: exactly the same footprint.
        assert_eq!(few, many);
    }

    #[test]
    fn resize_down_keeps_the_hottest_and_shrinks() {
        let mut t = TopK::with_seed(40, SEED);
        for i in 1..=40u64 {
            for _ in 0..i {
                t.record(format!("key{i:02}").as_bytes());
            }
        }
        let before = t.heap_bytes();
        t.resize(5);
        check(&t);
        assert_eq!(t.k(), 5);
        assert!(t.heap_bytes() < before);
        let expect: Vec<(Vec<u8>, u64)> = (36..=40u64)
            .rev()
            .map(|i| (format!("key{i:02}").into_bytes(), i))
            .collect();
        assert_eq!(t.top(10), expect);
        // key35 was written back to the sketch on the way out: two more reads (37
        // in all) beat key36's 36 and bring it back with its full count.
        t.record(b"key35");
        t.record(b"key35");
        check(&t);
        let top = t.top(5);
        assert!(top.iter().any(|(k, c)| k == b"key35" && *c >= 37));
        assert!(!top.iter().any(|(k, _)| k == b"key36"));
        // Growing again keeps everything and admits new keys.
        t.resize(50);
        t.record(b"new");
        check(&t);
        assert_eq!(t.top(100).len(), 6);
    }

    #[test]
    fn clear_empties_and_k_is_clamped() {
        let mut t = TopK::new(0);
        assert_eq!(t.k(), 1);
        assert_eq!(TopK::new(usize::MAX).k(), MAX_K);
        t.record(b"a");
        t.record(b"a");
        assert_eq!(t.top(5), vec![(b"a".to_vec(), 2)]);
        t.clear();
        check(&t);
        assert!(t.top(5).is_empty());
        assert_eq!(t.k(), 1);
        // The sketch was cleared too: a new key starts from zero.
        t.record(b"b");
        assert_eq!(t.top(5), vec![(b"b".to_vec(), 1)]);
    }

    #[test]
    fn empty_and_binary_keys() {
        let mut t = TopK::with_seed(8, SEED);
        let keys: [&[u8]; 5] = [b"", b"\0", b"\0\0", b"a\0b", &[0xff; 100]];
        for (i, key) in keys.iter().enumerate() {
            for _ in 0..=i {
                t.record(key);
            }
        }
        check(&t);
        let top = t.top(10);
        let expect: Vec<(Vec<u8>, u64)> = keys
            .iter()
            .enumerate()
            .rev()
            .map(|(i, key)| (key.to_vec(), i as u64 + 1))
            .collect();
        assert_eq!(top, expect);
    }

    #[test]
    fn top_zero_is_empty_and_ties_sort_by_key() {
        let mut t = TopK::with_seed(4, SEED);
        assert!(t.top(3).is_empty());
        for key in [b"c", b"a", b"b"] {
            t.record(key);
        }
        assert!(t.top(0).is_empty());
        let keys: Vec<Vec<u8>> = t.top(2).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn heavy_churn_keeps_invariants() {
        // A tiny table under a skewed random stream exercises eviction, index
        // backward shifting and heap fix-ups on every path.
        let mut t = TopK::with_seed(8, SEED);
        let mut rng = Rng(11);
        let mut truth: HashMap<Vec<u8>, u64> = HashMap::new();
        for i in 0..50_000u64 {
            let n = rng.below(64) * rng.below(64) / 8;
            // Keys of varying length, so buffers are both reused and reallocated.
            let key = n.to_le_bytes()[..(n % 5) as usize + 1].to_vec();
            t.record(&key);
            *truth.entry(key).or_default() += 1;
            if i % 97 == 0 {
                check(&t);
            }
        }
        check(&t);
        let top = t.top(100);
        assert_eq!(top.len(), 8);
        for (key, count) in top {
            assert!(count >= truth[&key]);
        }
    }

    #[test]
    fn tracked_counts_never_underestimate() {
        let mut t = TopK::with_seed(16, SEED);
        let mut rng = Rng(5);
        let mut truth: HashMap<Vec<u8>, u64> = HashMap::new();
        let reads = 300_000u64;
        for _ in 0..reads {
            // Half the reads over 20 warm keys, half over 50,000 cold ones.
            let key = if rng.below(2) == 0 {
                format!("w{}", rng.below(20))
            } else {
                format!("c{}", rng.below(50_000))
            };
            *truth.entry(key.clone().into_bytes()).or_default() += 1;
            t.record(key.as_bytes());
        }
        for (key, count) in t.top(16) {
            let real = truth[&key];
            assert!(
                count >= real && count <= real + eps_n(reads),
                "{count} vs {real}"
            );
        }
    }

    #[test]
    fn hash_spreads_sequential_keys_over_columns() {
        let mut cells = vec![[0u32; WIDTH]; DEPTH];
        let n = 100 * WIDTH;
        for i in 0..n {
            let cols = columns(hash_key(SEED, format!("key:{i}").as_bytes()));
            for (row, col) in cols.into_iter().enumerate() {
                cells[row][col] += 1;
            }
        }
        // 100 expected per cell; Poisson spread puts the extremes of 4096 cells near
        // 100 ± 37.
        for row in &cells {
            assert!(row.iter().all(|&c| (50..160).contains(&c)));
        }
        assert_ne!(hash_key(SEED, b"a"), hash_key(SEED, b"a\0"));
        assert_ne!(hash_key(SEED, b""), hash_key(SEED, b"\0"));
        assert_ne!(hash_key(SEED, b"x"), hash_key(SEED + 1, b"x"));
    }

    #[test]
    #[ignore = "timing, run with --release -- --ignored --nocapture"]
    fn bench_record() {
        use std::hint::black_box;
        use std::time::Instant;
        const N: usize = 1 << 20;
        let cdf = zipf_cdf(100_000, 1.0);
        let total = *cdf.last().unwrap();
        let mut rng = Rng(1);
        let zipf: Vec<u32> = (0..N)
            .map(|_| {
                let x = rng.unit() * total;
                cdf.partition_point(|&c| c <= x).min(99_999) as u32
            })
            .collect();
        let uniform: Vec<u32> = (0..N).map(|_| rng.below(100_000) as u32).collect();
        let hot: Vec<u32> = vec![1; N];
        for (name, stream) in [("hot", &hot), ("zipf", &zipf), ("uniform", &uniform)] {
            // Each key is written into one stack buffer, as Redis hands the module
            // a key already in cache; `baseline` times that alone.
            for record in [false, true] {
                let mut t = TopK::new(DEFAULT_K);
                let mut buf = *b"user:000000";
                // Timed in chunks of a warm table; the fastest and the median
                // chunk, as the machine may be shared.
                let mut chunks: Vec<f64> = Vec::new();
                for _ in 0..3 {
                    for chunk in stream.chunks(16_384) {
                        let start = Instant::now();
                        for &i in chunk {
                            let mut i = i;
                            for digit in buf[5..].iter_mut().rev() {
                                *digit = b'0' + (i % 10) as u8;
                                i /= 10;
                            }
                            let key = black_box(&buf[..]);
                            if record {
                                t.record(key);
                            }
                        }
                        chunks.push(start.elapsed().as_nanos() as f64 / chunk.len() as f64);
                    }
                }
                black_box(&t);
                chunks.sort_by(f64::total_cmp);
                let (min, median) = (chunks[0], chunks[chunks.len() / 2]);
                let what = if record { "record" } else { "baseline" };
                println!("topk {name} {what}: min {min:.1} ns, median {median:.1} ns");
            }
        }
    }
}
