//! Leases of `NSCACHE.FETCH` (SPEC 2.4): single flight, stale-set protection
//! and early refresh, as plain Rust without Redis.
//!
//! A lease names one Redis key (database and stored name) and is held by
//! whoever got its token. At most one lease per key is outstanding; it ends
//! when its holder writes back with the token ([`Leases::complete`]), when its
//! time runs out, or when anything else writes the key ([`Leases::void`],
//! called for `NSCACHE.SET`/`NSCACHE.DEL` and for every keyspace event of the
//! stored name). A lease also records the namespace (its never-reused id) and
//! generation it was granted in: an `INVALIDATE`, a flush or a forgotten and
//! re-created namespace voids it without any lookup.
//!
//! Memory is bounded: a lease costs a fixed size whatever the key (the stored
//! name is kept as a keyed 128-bit SipHash digest, not as bytes), and at most
//! `max` leases exist. At the bound the lease that would expire first is
//! dropped to make room (its holder's write-back is then refused, costing one
//! extra recomputation), so a flood of distinct cold keys can neither grow
//! memory nor stop new leases from being granted. Expired leases are dropped
//! as soon as any lease operation runs.
//!
//! Tokens are 64-bit outputs of SipHash-2-4 under a 128-bit key drawn from
//! the operating system's CSPRNG, applied to a counter: unguessable without
//! the key, never zero, and checked against the key's current lease, so a
//! token of another key, an old token of this key or a used token is refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use siphasher::sip128::{Hasher128, SipHasher24};

use crate::error::{CacheError, CacheResult};

/// Longest lease a FETCH may ask for: one hour. A recomputation that takes
/// longer is no cache-aside read, and a crashed holder blocks its key (others
/// WAIT) for at most this long.
pub const MAX_LEASE_MS: i64 = 3_600_000;

/// Widest early-refresh window: the longest ttl NSCACHE.SET accepts.
pub const MAX_WINDOW_MS: i64 = crate::args::MAX_TTL_SECONDS * 1000;

/// Longest `retry_ms` a WAIT reply suggests: waiters poll about this often so
/// they see the holder's write-back soon after it lands, and never past the
/// lease's end.
pub const MAX_RETRY_MS: i64 = 50;

/// Default of `nscache.max-leases`.
pub const DEFAULT_MAX_LEASES: usize = 100_000;

/// Bytes a lease costs in the table and its expiry index, for INFO: an upper
/// estimate (a 72-byte hash map slot with its control byte at a load factor
/// down to 7/16 after growth, and a 48-byte B-tree element with node overhead).
pub const LEASE_BYTES: usize = 256;

/// Which Redis key a lease is for: the database and a digest of the stored name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    db: i32,
    name: u128,
}

/// The namespace state a lease was granted in; any change voids it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The namespace's id (never reused, so a forgotten namespace's leases
    /// cannot match a new namespace of the same name).
    pub namespace: u64,
    /// The namespace's generation (INVALIDATE and flushes bump it).
    pub generation: u64,
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    token: u64,
    expires_at: i64,
    owner: Owner,
    /// Tie-break of the expiry index: grant order.
    seq: u64,
}

/// What [`Leases::acquire`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The caller holds the key's lease now, with this token.
    Granted(u64),
    /// Another caller holds it; retry after about this many milliseconds.
    Held {
        /// Suggested wait, 1..=[`MAX_RETRY_MS`], never past the lease's end.
        retry_ms: i64,
    },
}

/// Why [`Leases::complete`] refused a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No lease of this key exists (never granted, used, voided or expired).
    NoLease,
    /// The key's lease has another token (forged, or an older lease's).
    WrongToken,
    /// The namespace was invalidated, flushed or re-created since the grant.
    OwnerChanged,
}

/// The lease table.
#[derive(Debug)]
pub struct Leases {
    by_key: HashMap<LeaseKey, Lease>,
    /// (expires_at, seq) → key: expired leases and the bound's victims in order.
    by_expiry: BTreeMap<(i64, u64), LeaseKey>,
    next_seq: u64,
    /// Leases dropped at the bound before they expired.
    evicted: u64,
}

impl Default for Leases {
    fn default() -> Leases {
        Leases::new()
    }
}

impl Leases {
    /// An empty table.
    pub fn new() -> Leases {
        Leases {
            by_key: HashMap::new(),
            by_expiry: BTreeMap::new(),
            next_seq: 0,
            evicted: 0,
        }
    }

    /// Leases in the table (expired ones included until the next operation).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Leases dropped at the bound before they expired, since load.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Drops every lease whose time is up at `now`.
    pub fn expire(&mut self, now: i64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.by_key.remove(&key);
        }
    }

    fn remove(&mut self, key: &LeaseKey) -> Option<Lease> {
        let lease = self.by_key.remove(key)?;
        self.by_expiry.remove(&(lease.expires_at, lease.seq));
        Some(lease)
    }

    /// Takes `key`'s lease for `lease_ms` from `now` unless another valid
    /// lease holds it. A lease of an older owner state counts as void.
    /// `token` draws a fresh token; at most `max` leases stay in the table.
    pub fn acquire(
        &mut self,
        key: LeaseKey,
        owner: Owner,
        now: i64,
        lease_ms: i64,
        max: usize,
        token: impl FnMut() -> u64,
    ) -> Acquire {
        self.expire(now);
        if let Some(lease) = self.by_key.get(&key) {
            if lease.owner == owner {
                return Acquire::Held {
                    retry_ms: (lease.expires_at - now).clamp(1, MAX_RETRY_MS),
                };
            }
            self.remove(&key);
        }
        while self.by_key.len() >= max.max(1) {
            let Some((_, victim)) = self.by_expiry.pop_first() else {
                break;
            };
            self.by_key.remove(&victim);
            self.evicted += 1;
        }
        let token = fresh_token(token);
        let lease = Lease {
            token,
            expires_at: now.saturating_add(lease_ms.max(1)),
            owner,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.by_expiry.insert((lease.expires_at, lease.seq), key);
        self.by_key.insert(key, lease);
        Acquire::Granted(token)
    }

    /// Ends `key`'s lease if `token` is its current, unexpired token and the
    /// owner state is unchanged: the caller may write. A wrong token leaves
    /// the real holder's lease alone; a changed owner ends it.
    pub fn complete(
        &mut self,
        key: LeaseKey,
        token: u64,
        owner: Owner,
        now: i64,
    ) -> Result<(), Refusal> {
        self.expire(now);
        let lease = self.by_key.get(&key).ok_or(Refusal::NoLease)?;
        if lease.token != token {
            return Err(Refusal::WrongToken);
        }
        let same_owner = lease.owner == owner;
        self.remove(&key);
        if same_owner {
            Ok(())
        } else {
            Err(Refusal::OwnerChanged)
        }
    }

    /// Voids `key`'s lease (the key was written); true if there was one.
    pub fn void(&mut self, key: &LeaseKey) -> bool {
        self.remove(key).is_some()
    }

    /// Voids every lease.
    pub fn clear(&mut self) {
        self.by_key.clear();
        self.by_expiry.clear();
    }
}

fn fresh_token(mut token: impl FnMut() -> u64) -> u64 {
    // Zero is no token; the odds of drawing it twice in a row are 2^-128.
    loop {
        let t = token();
        if t != 0 {
            return t;
        }
    }
}

/// Formats a token as it goes on the wire: 16 lowercase hex digits.
pub fn format_token(token: u64) -> String {
    format!("{token:016x}")
}

/// Parses a token given to `NSCACHE.SET ... LEASE`: exactly 16 hex digits,
/// not all zero.
pub fn parse_token(raw: &[u8]) -> CacheResult<u64> {
    if raw.len() != 16 || !raw.iter().all(u8::is_ascii_hexdigit) {
        return Err(CacheError::BadToken);
    }
    let text = std::str::from_utf8(raw).map_err(|_| CacheError::BadToken)?;
    match u64::from_str_radix(text, 16) {
        Ok(0) | Err(_) => Err(CacheError::BadToken),
        Ok(token) => Ok(token),
    }
}

/// Parses `lease_ms`: whole milliseconds, 1..=[`MAX_LEASE_MS`].
pub fn parse_lease_ms(raw: &[u8]) -> CacheResult<i64> {
    parse_ms(raw, MAX_LEASE_MS).ok_or(CacheError::BadLeaseMs(MAX_LEASE_MS))
}

/// Parses `window_ms`: whole milliseconds, 1..=[`MAX_WINDOW_MS`].
pub fn parse_window_ms(raw: &[u8]) -> CacheResult<i64> {
    parse_ms(raw, MAX_WINDOW_MS).ok_or(CacheError::BadWindowMs(MAX_WINDOW_MS))
}

fn parse_ms(raw: &[u8], max: i64) -> Option<i64> {
    // Digits only (no sign, no spaces), folded by hand: FETCH parses one on
    // every read, and `str::parse` validates UTF-8 and signs first.
    if raw.is_empty() || raw.len() > 19 {
        return None;
    }
    let mut value: i64 = 0;
    for &b in raw {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    (1..=max).contains(&value).then_some(value)
}

/// Options of `NSCACHE.FETCH` after `lease_ms`: `[REFRESH window_ms]`.
pub fn parse_fetch_options(rest: &[&[u8]]) -> CacheResult<Option<i64>> {
    match rest {
        [] => Ok(None),
        [word, window] if word.eq_ignore_ascii_case(b"REFRESH") => {
            parse_window_ms(window).map(Some)
        }
        [word] if word.eq_ignore_ascii_case(b"REFRESH") => Err(CacheError::MissingArgument(
            "REFRESH needs a window_ms argument",
        )),
        [word, ..] if !word.eq_ignore_ascii_case(b"REFRESH") => {
            Err(CacheError::UnknownOption(crate::args::printable(word)))
        }
        [_, _, extra, ..] => Err(CacheError::UnknownOption(crate::args::printable(extra))),
        _ => Err(CacheError::WrongArity("nscache.fetch")),
    }
}

/// Keys of the digest and token functions, drawn once from the OS CSPRNG.
#[derive(Clone, Copy, Debug)]
pub struct Secrets {
    digest: (u64, u64),
    token: (u64, u64),
}

impl Secrets {
    /// Fresh secrets from the operating system.
    pub fn from_os() -> CacheResult<Secrets> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| CacheError::Internal("no OS randomness"))?;
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&seed[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        Ok(Secrets {
            digest: (word(0), word(1)),
            token: (word(2), word(3)),
        })
    }

    /// Fixed secrets, for tests.
    pub fn fixed(seed: u64) -> Secrets {
        Secrets {
            digest: (seed, seed ^ 0x5555),
            token: (seed.rotate_left(17), !seed),
        }
    }

    /// The lease key of stored name `name` in database `db`.
    pub fn key(&self, db: i32, name: &[u8]) -> LeaseKey {
        let mut hasher = SipHasher24::new_with_keys(self.digest.0, self.digest.1);
        std::hash::Hasher::write(&mut hasher, name);
        LeaseKey {
            db,
            name: hasher.finish128().as_u128(),
        }
    }

    /// The `n`th token.
    pub fn token(&self, n: u64) -> u64 {
        let hasher = SipHasher24::new_with_keys(self.token.0, self.token.1);
        hasher.hash(&n.to_le_bytes()).as_u64().0
    }
}

/// The module's lease state: the table, its secrets and a token counter.
#[derive(Debug)]
pub struct State {
    /// The table.
    pub leases: Leases,
    secrets: Secrets,
    counter: u64,
}

impl State {
    /// A state with these secrets.
    pub fn new(secrets: Secrets) -> State {
        State {
            leases: Leases::new(),
            secrets,
            counter: 0,
        }
    }

    /// The lease key of a stored name.
    pub fn key(&self, db: i32, name: &[u8]) -> LeaseKey {
        self.secrets.key(db, name)
    }

    /// [`Leases::acquire`] with this state's tokens.
    pub fn acquire(
        &mut self,
        key: LeaseKey,
        owner: Owner,
        now: i64,
        lease_ms: i64,
        max: usize,
    ) -> Acquire {
        let (secrets, counter) = (self.secrets, &mut self.counter);
        let result = self.leases.acquire(key, owner, now, lease_ms, max, || {
            *counter += 1;
            secrets.token(*counter)
        });
        OUTSTANDING.store(self.leases.len(), Ordering::Relaxed);
        result
    }

    /// [`Leases::complete`].
    pub fn complete(
        &mut self,
        key: LeaseKey,
        token: u64,
        owner: Owner,
        now: i64,
    ) -> Result<(), Refusal> {
        let result = self.leases.complete(key, token, owner, now);
        OUTSTANDING.store(self.leases.len(), Ordering::Relaxed);
        result
    }

    /// Voids the lease of `key`.
    pub fn void_lease(&mut self, key: &LeaseKey) {
        self.leases.void(key);
        OUTSTANDING.store(self.leases.len(), Ordering::Relaxed);
    }

    /// Voids the lease of a stored name.
    pub fn void(&mut self, db: i32, name: &[u8]) {
        let key = self.key(db, name);
        self.leases.void(&key);
        OUTSTANDING.store(self.leases.len(), Ordering::Relaxed);
    }

    /// Voids every lease.
    pub fn clear(&mut self) {
        self.leases.clear();
        OUTSTANDING.store(0, Ordering::Relaxed);
    }

    /// Drops expired leases; returns how many remain.
    pub fn outstanding(&mut self, now: i64) -> usize {
        self.leases.expire(now);
        OUTSTANDING.store(self.leases.len(), Ordering::Relaxed);
        self.leases.len()
    }
}

/// Size of the module's table, for a lock-free early out: writes and keyspace
/// events of a server with no lease outstanding skip the table.
static OUTSTANDING: AtomicUsize = AtomicUsize::new(0);

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Whether any lease may be outstanding.
pub fn any() -> bool {
    OUTSTANDING.load(Ordering::Relaxed) > 0
}

/// The module's lease state, created (with fresh OS secrets) on first use.
pub fn state() -> CacheResult<StateGuard> {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(State::new(Secrets::from_os()?));
    }
    Ok(StateGuard(guard))
}

/// Runs `f` on the state if it exists (nothing to void before the first lease).
pub fn with_existing(f: impl FnOnce(&mut State)) {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(state) = guard.as_mut() {
        f(state);
    }
}

/// Voids the lease of stored name `name` in database `db`, if any may exist.
pub fn void_key(db: i32, name: &[u8]) {
    if any() {
        with_existing(|s| s.void(db, name));
    }
}

/// (outstanding, evicted at the bound) for INFO, after dropping expired
/// leases; zeros when the table is locked and `try_only` (crash reports).
pub fn figures(now: i64, try_only: bool) -> (usize, u64) {
    let mut guard = if try_only {
        match STATE.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return (0, 0),
        }
    } else {
        STATE.lock().unwrap_or_else(|p| p.into_inner())
    };
    match guard.as_mut() {
        Some(state) => {
            let outstanding = state.outstanding(now);
            (outstanding, state.leases.evicted())
        }
        None => (0, 0),
    }
}

/// Voids every lease (flushes, SWAPDB).
pub fn void_all() {
    if any() {
        with_existing(State::clear);
    }
}

/// A locked, initialised lease state.
pub struct StateGuard(MutexGuard<'static, Option<State>>);

impl std::ops::Deref for StateGuard {
    type Target = State;
    fn deref(&self) -> &State {
        // Filled by `state()` before the guard is handed out.
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for StateGuard {
    fn deref_mut(&mut self) -> &mut State {
        self.0.as_mut().unwrap_or_else(|| unreachable!())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Owner = Owner {
        namespace: 1,
        generation: 0,
    };

    fn key(n: u8) -> LeaseKey {
        Secrets::fixed(7).key(0, &[b'k', n])
    }

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0;
        move || {
            n += 1;
            n * 1000
        }
    }

    #[test]
    fn one_lease_per_key_until_it_expires() {
        let mut t = Leases::new();
        let mut tokens = counter();
        assert_eq!(
            t.acquire(key(1), OWNER, 100, 500, 10, &mut tokens),
            Acquire::Granted(1000)
        );
        for now in [100, 300, 599] {
            assert!(matches!(
                t.acquire(key(1), OWNER, now, 500, 10, &mut tokens),
                Acquire::Held { .. }
            ));
        }
        assert_eq!(
            t.acquire(key(2), OWNER, 120, 500, 10, &mut tokens),
            Acquire::Granted(2000),
            "another key has its own lease"
        );
        assert_eq!(
            t.acquire(key(1), OWNER, 600, 500, 10, &mut tokens),
            Acquire::Granted(3000),
            "an expired lease lets the next caller take a new one"
        );
        assert_eq!(
            t.complete(key(1), 1000, OWNER, 601),
            Err(Refusal::WrongToken),
            "the expired lease's token is refused"
        );
        assert_eq!(t.complete(key(1), 3000, OWNER, 601), Ok(()));
    }

    #[test]
    fn retry_hint_is_short_and_within_the_lease() {
        let mut t = Leases::new();
        let mut tokens = counter();
        t.acquire(key(1), OWNER, 0, 10_000, 10, &mut tokens);
        assert_eq!(
            t.acquire(key(1), OWNER, 0, 10_000, 10, &mut tokens),
            Acquire::Held {
                retry_ms: MAX_RETRY_MS
            }
        );
        assert_eq!(
            t.acquire(key(1), OWNER, 9_990, 10_000, 10, &mut tokens),
            Acquire::Held { retry_ms: 10 }
        );
    }

    #[test]
    fn completion_ends_the_lease_and_a_token_works_once() {
        let mut t = Leases::new();
        let mut tokens = counter();
        let Acquire::Granted(tok) = t.acquire(key(1), OWNER, 0, 100, 10, &mut tokens) else {
            panic!("granted")
        };
        assert_eq!(t.complete(key(2), tok, OWNER, 1), Err(Refusal::NoLease));
        assert_eq!(
            t.complete(key(1), tok + 1, OWNER, 1),
            Err(Refusal::WrongToken)
        );
        assert_eq!(t.len(), 1, "a forged token leaves the holder's lease");
        assert_eq!(t.complete(key(1), tok, OWNER, 1), Ok(()));
        assert_eq!(t.complete(key(1), tok, OWNER, 2), Err(Refusal::NoLease));
        assert!(t.is_empty());
    }

    #[test]
    fn a_changed_owner_voids() {
        let mut t = Leases::new();
        let mut tokens = counter();
        let Acquire::Granted(tok) = t.acquire(key(1), OWNER, 0, 100, 10, &mut tokens) else {
            panic!("granted")
        };
        let invalidated = Owner {
            generation: 1,
            ..OWNER
        };
        // The next FETCH after INVALIDATE gets a new lease at once.
        let Acquire::Granted(tok2) = t.acquire(key(1), invalidated, 1, 100, 10, &mut tokens) else {
            panic!("a lease of an older generation is void")
        };
        assert_eq!(
            t.complete(key(1), tok, invalidated, 2),
            Err(Refusal::WrongToken)
        );
        // A lease whose namespace changed under it is refused and ended.
        let recreated = Owner {
            namespace: 2,
            generation: 0,
        };
        assert_eq!(
            t.complete(key(1), tok2, recreated, 3),
            Err(Refusal::OwnerChanged)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn voiding_ends_a_lease() {
        let mut t = Leases::new();
        let mut tokens = counter();
        let Acquire::Granted(tok) = t.acquire(key(1), OWNER, 0, 100, 10, &mut tokens) else {
            panic!("granted")
        };
        assert!(t.void(&key(1)));
        assert!(!t.void(&key(1)));
        assert_eq!(t.complete(key(1), tok, OWNER, 1), Err(Refusal::NoLease));
        assert!(matches!(
            t.acquire(key(1), OWNER, 1, 100, 10, &mut tokens),
            Acquire::Granted(_)
        ));
        t.clear();
        assert!(t.is_empty());
    }

    #[test]
    fn the_bound_drops_the_lease_expiring_first() {
        let mut t = Leases::new();
        let mut tokens = counter();
        t.acquire(key(1), OWNER, 0, 300, 2, &mut tokens);
        t.acquire(key(2), OWNER, 0, 100, 2, &mut tokens);
        t.acquire(key(3), OWNER, 0, 200, 2, &mut tokens);
        assert_eq!((t.len(), t.evicted()), (2, 1));
        assert!(
            matches!(
                t.acquire(key(2), OWNER, 1, 100, 2, &mut tokens),
                Acquire::Granted(_)
            ),
            "key 2's lease expired first and went"
        );
        assert_eq!(t.len(), 2);
        for i in 10..250 {
            t.acquire(key(i), OWNER, 5, 1000, 2, &mut tokens);
            assert!(t.len() <= 2);
        }
        t.expire(10_000);
        assert!(t.is_empty() && t.by_expiry.is_empty());
    }

    #[test]
    fn tokens_parse_and_format() {
        assert_eq!(format_token(0xab), "00000000000000ab");
        assert_eq!(parse_token(b"00000000000000ab"), Ok(0xab));
        assert_eq!(parse_token(b"FFFFFFFFFFFFFFFF"), Ok(u64::MAX));
        for bad in [
            &b""[..],
            b"0000000000000000",
            b"ab",
            b"00000000000000abc",
            b"000000000000000g",
            b"+00000000000000a",
            b"-1",
            b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        ] {
            assert_eq!(parse_token(bad), Err(CacheError::BadToken), "{bad:?}");
        }
    }

    #[test]
    fn durations_are_bounded_whole_milliseconds() {
        assert_eq!(parse_lease_ms(b"1"), Ok(1));
        assert_eq!(parse_lease_ms(b"3600000"), Ok(MAX_LEASE_MS));
        for bad in [
            &b"0"[..],
            b"-5",
            b"3600001",
            b"99999999999999999999",
            b"1.5",
            b"abc",
            b"",
            b" 1",
        ] {
            assert!(parse_lease_ms(bad).is_err(), "{bad:?}");
            assert!(
                parse_window_ms(bad).is_err() || bad == b"3600001",
                "{bad:?}"
            );
        }
        assert_eq!(parse_window_ms(b"3600001"), Ok(3_600_001));
        assert!(parse_window_ms(b"9223372036854775807").is_err());
    }

    #[test]
    fn fetch_options() {
        let p = |w: &[&[u8]]| parse_fetch_options(w);
        assert_eq!(p(&[]), Ok(None));
        assert_eq!(p(&[b"refresh", b"250"]), Ok(Some(250)));
        assert!(matches!(
            p(&[b"REFRESH"]),
            Err(CacheError::MissingArgument(_))
        ));
        assert!(matches!(
            p(&[b"REFRESH", b"0"]),
            Err(CacheError::BadWindowMs(_))
        ));
        assert!(matches!(
            p(&[b"LATER", b"5"]),
            Err(CacheError::UnknownOption(_))
        ));
        assert!(matches!(p(&[b"NX"]), Err(CacheError::UnknownOption(_))));
        assert!(matches!(
            p(&[b"REFRESH", b"5", b"NX"]),
            Err(CacheError::UnknownOption(_))
        ));
    }

    #[test]
    fn secrets_separate_keys_databases_and_tokens() {
        let s = Secrets::fixed(1);
        assert_eq!(s.key(0, b"p:{a}"), s.key(0, b"p:{a}"));
        assert_ne!(s.key(0, b"p:{a}"), s.key(1, b"p:{a}"));
        assert_ne!(s.key(0, b"p:{a}"), s.key(0, b"p:{b}"));
        assert_ne!(
            Secrets::fixed(2).key(0, b"p:{a}"),
            s.key(0, b"p:{a}"),
            "the digest depends on the secret"
        );
        let tokens: std::collections::HashSet<u64> = (0..10_000).map(|n| s.token(n)).collect();
        assert_eq!(tokens.len(), 10_000);
        let os = Secrets::from_os().expect("OS randomness");
        assert_ne!(os.token(1), Secrets::fixed(0).token(1));
    }

    /// A small deterministic generator for the property test.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Property: against a model of the rules (one lease per key, expiry,
    /// voiding, owner changes, single use), random operations on a few keys
    /// always agree; the table never exceeds its bound; a completion succeeds
    /// only for the token most recently granted for that key, unexpired,
    /// unvoided, in the same owner state.
    #[test]
    fn random_operations_follow_the_model() {
        for seed in 1..=200u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut t = Leases::new();
            let max = 1 + rng.below(6) as usize;
            let mut next_token = 0u64;
            // Model: key → (token, expires_at, owner), plus every token ever granted.
            let mut model: HashMap<u8, (u64, i64, Owner)> = HashMap::new();
            let mut granted: Vec<(u8, u64)> = Vec::new();
            let mut now = 0i64;
            let mut generation = 0u64;
            for _ in 0..400 {
                now += rng.below(40) as i64;
                model.retain(|_, (_, exp, _)| *exp > now);
                let k = rng.below(8) as u8;
                let owner = Owner {
                    namespace: 1,
                    generation,
                };
                match rng.below(6) {
                    0 | 1 => {
                        let lease_ms = 1 + rng.below(200) as i64;
                        let got = t.acquire(key(k), owner, now, lease_ms, max, || {
                            next_token += 1;
                            next_token
                        });
                        match (got, model.get(&k)) {
                            (Acquire::Held { retry_ms }, Some((_, exp, o))) if *o == owner => {
                                assert!(retry_ms >= 1 && retry_ms <= (exp - now).max(1));
                            }
                            (Acquire::Granted(tok), existing) => {
                                assert!(
                                    existing.is_none_or(|(_, _, o)| *o != owner),
                                    "seed {seed}: a second lease while one holds"
                                );
                                // At the bound, the model forgets the soonest-expiring lease.
                                model.insert(k, (tok, now + lease_ms, owner));
                                granted.push((k, tok));
                            }
                            (got, existing) => {
                                // Held while the model has none: only if the
                                // model lost a lease the table kept, impossible.
                                panic!("seed {seed}: {got:?} vs model {existing:?}")
                            }
                        }
                        if model.len() > t.len() {
                            // The table evicted at its bound: keep the model in step.
                            model.retain(|mk, (tok, _, _)| {
                                t.by_key.get(&key(*mk)).is_some_and(|l| l.token == *tok)
                            });
                        }
                    }
                    2 => {
                        let tok = if granted.is_empty() || rng.below(4) == 0 {
                            rng.next()
                        } else {
                            granted[rng.below(granted.len() as u64) as usize].1
                        };
                        let want = model
                            .get(&k)
                            .is_some_and(|(mt, _, o)| *mt == tok && *o == owner);
                        let got = t.complete(key(k), tok, owner, now);
                        assert_eq!(got.is_ok(), want, "seed {seed}: complete {k} {tok}");
                        if got.is_ok() || got == Err(Refusal::OwnerChanged) {
                            model.remove(&k);
                        }
                    }
                    3 => {
                        t.void(&key(k));
                        model.remove(&k);
                    }
                    4 if rng.below(10) == 0 => generation += 1,
                    _ => t.expire(now),
                }
                assert!(t.len() <= max, "seed {seed}: over the bound");
                assert_eq!(t.by_key.len(), t.by_expiry.len());
            }
        }
    }
}
