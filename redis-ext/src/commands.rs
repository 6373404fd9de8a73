//! Command handlers: parse, call the logic, reply. Nothing else lives here.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering};

use cachetx_shared::{
    validate_prefix, CacheInvalidation, Envelope, InvalidationScope, NamespaceStats, StatsReport,
    Timestamp, FORMAT_VERSION, INVALIDATED_EVENT_TYPE,
};
use redis_module::{raw, Context, ContextFlags, RedisString, RedisValue};

use crate::acl::{self, Access};
use crate::args::{
    expire_at_ms, parse_count, parse_set_options, parse_ttl, SetCondition, MAX_VALUE_LEN,
};
use crate::clock::Stopwatch;
use crate::datatype::charge_for;
use crate::dispatch::Args;
use crate::entry::{Entry, EntryRef};
use crate::error::{CacheError, CacheResult};
use crate::keyname::{key_form, stored_name_in, stored_name_into, KeyForm};
use crate::lease::{self, Acquire};
use crate::namespace::{registry, Namespace};
use crate::openkey::{Content, OpenKey};
use crate::{config, sweeper};

/// A parsed `(prefix, key)` pair and the Redis key that stores it.
///
/// Every keyed command makes its stored names here, once per key and call:
/// the place for any check that concerns the stored name.
struct Target<'a> {
    key: &'a [u8],
    form: KeyForm,
    stored: RedisString,
}

// The namespace of the previous command and the registry epoch it was
// looked up in: most commands hit the namespace their predecessor used. A
// namespace is freed only when forgotten, which bumps the epoch, so the
// pointer is never followed once it may dangle.
//
// Statics, not a thread-local (in a cdylib every thread-local access is a
// `__tls_get_addr` call): commands run one at a time under Redis's global
// lock, and only command handlers (through `namespace`) touch the pair.
static LAST_NAMESPACE: AtomicPtr<Namespace> = AtomicPtr::new(std::ptr::null_mut());
static LAST_EPOCH: AtomicU64 = AtomicU64::new(u64::MAX);

/// The previous command's namespace if it is called `prefix` and still exists.
fn cached_namespace(prefix: &[u8]) -> Option<&'static Namespace> {
    if LAST_EPOCH.load(Ordering::Relaxed) != crate::namespace::epoch() {
        return None;
    }
    let ns = LAST_NAMESPACE.load(Ordering::Relaxed);
    // SAFETY: stored by `namespace` from the registry in this epoch: the
    // namespace is not freed before the epoch changes.
    let ns = unsafe { ns.as_ref() }?;
    (ns.name().as_bytes() == prefix).then_some(ns)
}

/// Stored names up to this length are built on the stack.
const STACK_NAME: usize = 128;

fn target<'a>(ctx: &Context, prefix: &str, key: &'a [u8]) -> CacheResult<Target<'a>> {
    let form = key_form(key)?;
    // Keys are binary: `create_string` goes through a C string and stops at
    // NUL, `create_from_slice` copies the bytes.
    let mut buffer = [0u8; STACK_NAME];
    let stored = match stored_name_in(prefix, key, form, &mut buffer) {
        Some(name) => RedisString::create_from_slice(ctx.ctx, name),
        None => {
            let mut name = Vec::new();
            stored_name_into(prefix, key, form, &mut name);
            RedisString::create_from_slice(ctx.ctx, &name)
        }
    };
    Ok(Target { key, form, stored })
}

fn targets<'a>(ctx: &Context, prefix: &str, keys: Args<'a>) -> CacheResult<Vec<Target<'a>>> {
    keys.iter().map(|key| target(ctx, prefix, key)).collect()
}

fn prefix_arg(arg: &[u8]) -> CacheResult<&str> {
    if cached_namespace(arg).is_some() {
        // SAFETY: the bytes equal a namespace's name, a validated `str`.
        return Ok(unsafe { std::str::from_utf8_unchecked(arg) });
    }
    Ok(validate_prefix(arg)?)
}

fn arity(args: Args<'_>, min: usize, max: Option<usize>, name: &'static str) -> CacheResult<()> {
    if args.len() < min || max.is_some_and(|max| args.len() > max) {
        Err(CacheError::WrongArity(name))
    } else {
        Ok(())
    }
}

/// What a stored name holds, seen from one key of one namespace.
enum Slot<'a> {
    /// Nothing.
    Empty,
    /// A live entry of this key.
    Live(EntryRef<'a>),
    /// An entry of this namespace from an invalidated generation.
    Stale,
    /// Another key's entry under the same name (`a` vs `{a}`), or one moved
    /// here from another namespace by RENAME.
    Other,
}

fn slot<'a>(key: &'a OpenKey, ns: &Namespace, form: KeyForm) -> CacheResult<Slot<'a>> {
    Ok(match key.content()? {
        Content::Empty => Slot::Empty,
        Content::Entry(entry) if !std::ptr::eq(entry.namespace(), ns) => Slot::Other,
        Content::Entry(entry) if !entry.is_current(ns.generation()) => Slot::Stale,
        Content::Entry(entry) if entry.form() != form => Slot::Other,
        Content::Entry(entry) => Slot::Live(entry),
    })
}

/// The namespace called `prefix`, created if needed (SPEC 2.6). At the cap, the
/// least recently used empty namespace is forgotten to make room; the error
/// comes only when every namespace holds entries, and only for clients: a write
/// that comes from the primary or the AOF already happened there and must not
/// be dropped here (it still makes room from empty namespaces, so a replica's
/// namespaces stay bounded like its primary's).
fn namespace(ctx: &Context, prefix: &str) -> CacheResult<&'static Namespace> {
    if let Some(ns) = cached_namespace(prefix.as_bytes()) {
        return Ok(ns);
    }
    let flags = ctx.get_flags();
    let mut registry = registry();
    let ns = if flags.contains(ContextFlags::REPLICATED) || flags.contains(ContextFlags::LOADING) {
        registry.get_or_create_uncapped(prefix, config::max_namespaces(), config::topk())
    } else {
        registry.get_or_create(prefix, config::max_namespaces(), config::topk())?
    };
    // Making room may have forgotten a namespace: take the epoch after.
    LAST_NAMESPACE.store(std::ptr::from_ref(ns).cast_mut(), Ordering::Relaxed);
    LAST_EPOCH.store(crate::namespace::epoch(), Ordering::Relaxed);
    Ok(ns)
}

/// The namespace a read (or a command that can only remove) counts in: created
/// like a write's so that a cold namespace's misses count, but None instead of
/// an error when every namespace holds entries. A namespace this node does not
/// have holds no entry here, so such a command has nothing to find, and its
/// reply must not depend on the statistics' room.
fn read_namespace(ctx: &Context, prefix: &str) -> Option<&'static Namespace> {
    namespace(ctx, prefix).ok()
}

/// Whether a read may delete the stale entry it found: not on a replica (it
/// would diverge from its primary), not while loading, not inside a script
/// (which may be read-only), and not while writes are paused (CLIENT PAUSE
/// WRITE, FAILOVER: Redis asserts that nothing is propagated then); the
/// background sweep reclaims those later.
fn may_reclaim(ctx: &Context) -> bool {
    let flags = ctx.get_flags();
    !flags.contains(ContextFlags::SLAVE)
        && !flags.contains(ContextFlags::LOADING)
        && !flags.contains(ContextFlags::LUA)
        && !sweeper::replication_paused()
}

/// `NSCACHE.SET prefix key ttl value [NX|XX] [LEASE token]`
pub fn set(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    let started = Stopwatch::start();
    arity(args, 5, None, "nscache.set")?;
    let prefix = prefix_arg(args.at(1))?;
    let target = target(ctx, prefix, args.at(2))?;
    let ttl = parse_ttl(args.at(3))?;
    let value = args.at(4);
    if value.len() > MAX_VALUE_LEN {
        return Err(CacheError::ValueTooLarge(value.len(), MAX_VALUE_LEN));
    }
    let options = parse_set_options(args.from(5).iter())?;
    // Everything that can fail is computed before the keyspace is touched.
    let now = now_ms();
    let expire_at = expire_at_ms(now, ttl)?;
    acl::require_keys(ctx, prefix, [&target.stored], Access::Write)?;
    let ns = namespace(ctx, prefix)?;
    if let Some(token) = options.lease {
        return set_with_lease(ctx, args, &target, ns, token, now, expire_at, started);
    }

    let key = OpenKey::write(ctx, &target.stored);
    let found = slot(&key, ns, target.form)?;
    let live = matches!(found, Slot::Live(_));
    let occupied = !matches!(found, Slot::Empty);
    let proceed = match options.condition {
        SetCondition::Always => true,
        SetCondition::IfAbsent => !live,
        SetCondition::IfPresent => live,
    };
    if proceed {
        store_value(key, ns, &target, value, expire_at, occupied)?;
        // Another writer's value is in: a FETCH lease of this key no longer
        // describes what is stored (SPEC 2.4).
        if lease::any() {
            lease::void_key(selected_db(ctx), target.stored.as_slice());
        }
        // Replicas and the AOF get the write and then this node's absolute
        // expiry, so a replay does not restart the ttl and DEBUG DIGEST stays
        // equal. Verbatim and a typed PEXPIREAT avoid building argument strings.
        ctx.replicate_verbatim();
        replicate_pexpireat(ctx, &target.stored, expire_at);
    }
    let mut stats = ns.stats();
    if proceed {
        stats.counters.sets += 1;
    }
    stats.write_latency.record(started.elapsed_ns());
    Ok(if proceed {
        RedisValue::SimpleStringStatic("OK")
    } else {
        RedisValue::Null
    })
}

/// Stores `value` at the open `key` as an entry of `ns`'s current generation,
/// charged like every entry, and closes the key.
fn store_value(
    key: OpenKey,
    ns: &'static Namespace,
    target: &Target<'_>,
    value: &[u8],
    expire_at: i64,
    occupied: bool,
) -> CacheResult<()> {
    let charged = charge_for(target.stored.as_slice().len(), value.len());
    let entry = Entry::new(ns, ns.generation(), target.form, value, charged);
    key.store(entry, Some(expire_at), occupied)
}

/// `NSCACHE.SET prefix key ttl value LEASE token`: writes only if `token` is
/// the key's current FETCH lease and nothing wrote the key or invalidated its
/// namespace since; the write ends the lease. Otherwise nil, nothing written,
/// and `stale_sets_rejected` counts it.
#[allow(clippy::too_many_arguments)]
fn set_with_lease(
    ctx: &Context,
    args: Args<'_>,
    target: &Target<'_>,
    ns: &'static Namespace,
    token: u64,
    now: i64,
    expire_at: i64,
    started: Stopwatch,
) -> CacheResult<RedisValue> {
    let value = args.at(4);
    let key = OpenKey::write(ctx, &target.stored);
    // A FETCH grants no lease on a key of another type: finding one means a
    // plain command wrote the key since, which ends the lease like any write.
    let occupied = match key.content() {
        Ok(Content::Empty) => Some(false),
        Ok(Content::Entry(_)) => Some(true),
        Err(CacheError::WrongType) => None,
        Err(other) => return Err(other),
    };
    let held = {
        let mut leases = lease::state()?;
        let lease_key = leases.key(selected_db(ctx), target.stored.as_slice());
        match occupied {
            Some(_) => leases
                .complete(lease_key, token, ns.lease_owner(), now)
                .is_ok(),
            None => {
                leases.void_lease(&lease_key);
                false
            }
        }
    };
    let written = match occupied {
        Some(occupied) if held => {
            store_value(key, ns, target, value, expire_at, occupied)?;
            // Replicas and the AOF get a plain SET (a replica knows no lease)
            // and this node's absolute expiry.
            replicate_plain_set(ctx, args);
            replicate_pexpireat(ctx, &target.stored, expire_at);
            true
        }
        _ => false,
    };
    let mut stats = ns.stats();
    if written {
        stats.counters.sets += 1;
    } else {
        stats.counters.stale_sets_rejected += 1;
    }
    stats.write_latency.record(started.elapsed_ns());
    Ok(if written {
        RedisValue::SimpleStringStatic("OK")
    } else {
        RedisValue::Null
    })
}

/// `NSCACHE.FETCH prefix key lease_ms [REFRESH window_ms]` (SPEC 2.4): HIT with
/// the value, MISS with a lease token, WAIT with a retry hint, or (inside the
/// refresh window) REFRESH with the value and a token.
pub fn fetch(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    let started = Stopwatch::start();
    arity(args, 4, Some(6), "nscache.fetch")?;
    let prefix = prefix_arg(args.at(1))?;
    let target = target(ctx, prefix, args.at(2))?;
    let lease_ms = lease::parse_lease_ms(args.at(3))?;
    // At most two option words (the arity says so): no vector needed.
    let window = match (args.get(4), args.get(5)) {
        (None, _) => None,
        (Some(word), None) => lease::parse_fetch_options(&[word])?,
        (Some(word), Some(value)) => lease::parse_fetch_options(&[word, value])?,
    };
    // Reading needs read permission; a lease (MISS or REFRESH token) is the
    // right to write the key back, so it needs write permission too.
    // Asked only when a lease is due: a hit needs read permission alone.
    let caller = acl::Caller::current(ctx)?;
    caller.require(ctx, prefix, &target.stored, Access::Read)?;
    let may_lease = || caller.allows(&target.stored, Access::Write);
    let Some(ns) = read_namespace(ctx, prefix) else {
        // No namespace, no lease to name it: the write-back could not be
        // stored either. WRONGTYPE first, like GET.
        OpenKey::read(ctx, &target.stored).content()?;
        return Err(CacheError::TooManyNamespaces(config::max_namespaces()));
    };
    let key = OpenKey::read(ctx, &target.stored);
    let found = slot(&key, ns, target.form)?;
    let outcome = if let Slot::Live(entry) = &found {
        // A plain hit reads neither the expiry nor the clock.
        let refresh = match window.and_then(|window| Some((window, key.expire_ms()?))) {
            Some((window, left)) if left < window && may_lease() => {
                match acquire_lease(ctx, ns, &target.stored, now_ms(), lease_ms)? {
                    Acquire::Granted(token) => Some(token),
                    Acquire::Held { .. } => None,
                }
            }
            _ => None,
        };
        let value = entry.value();
        match refresh {
            Some(token) => {
                raw::reply_with_array(ctx.ctx, 3);
                raw::reply_with_simple_string(ctx.ctx, c"REFRESH".as_ptr());
                raw::reply_with_string_buffer(ctx.ctx, value.as_ptr().cast(), value.len());
                reply_str(ctx, &lease::format_token(token));
                Fetched::Refresh
            }
            None => {
                raw::reply_with_array(ctx.ctx, 2);
                raw::reply_with_simple_string(ctx.ctx, c"HIT".as_ptr());
                raw::reply_with_string_buffer(ctx.ctx, value.as_ptr().cast(), value.len());
                Fetched::Hit
            }
        }
    } else {
        let stale = matches!(found, Slot::Stale);
        drop(key);
        if !may_lease() {
            return Err(caller.deny(ctx, prefix, &target.stored));
        }
        // Reclaimed before the lease is taken: the deletion is a write of
        // the key and would void it.
        if stale && may_reclaim(ctx) {
            sweeper::reclaim(ctx, &target.stored);
        }
        match acquire_lease(ctx, ns, &target.stored, now_ms(), lease_ms)? {
            Acquire::Granted(token) => {
                raw::reply_with_array(ctx.ctx, 2);
                raw::reply_with_simple_string(ctx.ctx, c"MISS".as_ptr());
                reply_str(ctx, &lease::format_token(token));
                Fetched::Miss
            }
            Acquire::Held { retry_ms } => {
                raw::reply_with_array(ctx.ctx, 2);
                raw::reply_with_simple_string(ctx.ctx, c"WAIT".as_ptr());
                raw::reply_with_long_long(ctx.ctx, retry_ms);
                Fetched::Wait
            }
        }
    };
    let mut stats = ns.stats();
    match outcome {
        Fetched::Hit => stats.read(target.key, true),
        Fetched::Refresh => {
            stats.read(target.key, true);
            stats.counters.refreshes += 1;
        }
        Fetched::Miss => {
            stats.read(target.key, false);
            stats.counters.leases += 1;
        }
        // A WAIT is neither a hit nor a miss: the caller reads again.
        Fetched::Wait => stats.counters.lease_waits += 1,
    }
    stats.read_latency.record(started.elapsed_ns());
    Ok(RedisValue::NoReply)
}

/// Asks for the FETCH lease of `stored` in the selected database, for `ns`;
/// the lease table is unlocked again on return.
fn acquire_lease(
    ctx: &Context,
    ns: &Namespace,
    stored: &RedisString,
    now: i64,
    lease_ms: i64,
) -> CacheResult<Acquire> {
    let mut leases = lease::state()?;
    let lease_key = leases.key(selected_db(ctx), stored.as_slice());
    Ok(leases.acquire(
        lease_key,
        ns.lease_owner(),
        now,
        lease_ms,
        config::max_leases(),
    ))
}

/// What a FETCH replied.
enum Fetched {
    Hit,
    Refresh,
    Miss,
    Wait,
}

/// The database the running command works on.
fn selected_db(ctx: &Context) -> i32 {
    // SAFETY: a plain query of the context's client.
    unsafe { raw::RedisModule_GetSelectedDb.map(|f| f(ctx.ctx)) }.unwrap_or(0)
}

/// Replicates `NSCACHE.SET prefix key ttl value` (the arguments of this
/// command without its options).
fn replicate_plain_set(ctx: &Context, args: Args<'_>) {
    // SAFETY: "ssss" = four RedisModuleStrings, all arguments of the running
    // command and valid for the call.
    unsafe {
        if let Some(replicate) = raw::RedisModule_Replicate {
            replicate(
                ctx.ctx,
                c"NSCACHE.SET".as_ptr(),
                c"ssss".as_ptr(),
                args.raw(1),
                args.raw(2),
                args.raw(3),
                args.raw(4),
            );
        }
    }
}

/// Replies with a slot's value or nil; returns whether it hit.
fn reply_found(ctx: &Context, found: &Slot<'_>) -> bool {
    if let Slot::Live(entry) = found {
        // Reply straight from the entry: no copy of the value.
        let value = entry.value();
        raw::reply_with_string_buffer(ctx.ctx, value.as_ptr().cast(), value.len());
        true
    } else {
        raw::reply_with_null(ctx.ctx);
        false
    }
}

/// `NSCACHE.GET prefix key`
pub fn get(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    let started = Stopwatch::start();
    arity(args, 3, Some(3), "nscache.get")?;
    let prefix = prefix_arg(args.at(1))?;
    let target = target(ctx, prefix, args.at(2))?;
    acl::require_keys(ctx, prefix, [&target.stored], Access::Read)?;
    let Some(ns) = read_namespace(ctx, prefix) else {
        // No room to count it; still a WRONGTYPE check, then a miss.
        OpenKey::read(ctx, &target.stored).content()?;
        raw::reply_with_null(ctx.ctx);
        return Ok(RedisValue::NoReply);
    };
    let key = OpenKey::read(ctx, &target.stored);
    let found = slot(&key, ns, target.form)?;
    let hit = reply_found(ctx, &found);
    let stale = matches!(found, Slot::Stale);
    drop(key);
    if stale && may_reclaim(ctx) {
        sweeper::reclaim(ctx, &target.stored);
    }
    let mut stats = ns.stats();
    stats.read(target.key, hit);
    stats.read_latency.record(started.elapsed_ns());
    Ok(RedisValue::NoReply)
}

/// `NSCACHE.MGET prefix key [key ...]`
pub fn mget(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    let started = Stopwatch::start();
    arity(args, 3, None, "nscache.mget")?;
    let prefix = prefix_arg(args.at(1))?;
    let targets = targets(ctx, prefix, args.from(2))?;
    acl::require_keys(ctx, prefix, targets.iter().map(|t| &t.stored), Access::Read)?;
    let Some(ns) = read_namespace(ctx, prefix) else {
        // No room to count them; still WRONGTYPE checks, then misses.
        for t in &targets {
            OpenKey::read(ctx, &t.stored).content()?;
        }
        raw::reply_with_array(ctx.ctx, targets.len() as i64);
        for _ in &targets {
            raw::reply_with_null(ctx.ctx);
        }
        return Ok(RedisValue::NoReply);
    };
    // Every key is checked before the first value is replied: a WRONGTYPE on
    // the third key cannot follow two values already sent.
    let keys: Vec<OpenKey> = targets
        .iter()
        .map(|t| OpenKey::read(ctx, &t.stored))
        .collect();
    let mut slots = Vec::with_capacity(keys.len());
    for (key, t) in keys.iter().zip(&targets) {
        slots.push(slot(key, ns, t.form)?);
    }
    raw::reply_with_array(ctx.ctx, targets.len() as i64);
    let mut outcomes = Vec::with_capacity(slots.len());
    let mut stale = Vec::new();
    for (i, found) in slots.iter().enumerate() {
        outcomes.push(reply_found(ctx, found));
        if matches!(found, Slot::Stale) {
            stale.push(i);
        }
    }
    drop(slots);
    drop(keys);
    if !stale.is_empty() && may_reclaim(ctx) {
        for i in stale {
            sweeper::reclaim(ctx, &targets[i].stored);
        }
    }
    let mut stats = ns.stats();
    for (t, hit) in targets.iter().zip(outcomes) {
        stats.read(t.key, hit);
    }
    stats.read_latency.record(started.elapsed_ns());
    Ok(RedisValue::NoReply)
}

/// `NSCACHE.DEL prefix key [key ...]`
pub fn del(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    let started = Stopwatch::start();
    arity(args, 3, None, "nscache.del")?;
    let prefix = prefix_arg(args.at(1))?;
    let targets = targets(ctx, prefix, args.from(2))?;
    acl::require_keys(
        ctx,
        prefix,
        targets.iter().map(|t| &t.stored),
        Access::Write,
    )?;
    // DEL only removes: an unknown namespace has nothing here to remove.
    let ns = read_namespace(ctx, prefix);

    // Check every key before deleting any, so a WRONGTYPE changes nothing.
    for t in &targets {
        OpenKey::read(ctx, &t.stored).content()?;
    }
    // An explicit invalidation voids the keys' FETCH leases whether or not an
    // entry is there: a reader that missed before this DEL must not write back
    // what it read before it (SPEC 2.4).
    let db = selected_db(ctx);
    for t in &targets {
        lease::void_key(db, t.stored.as_slice());
    }
    // Then one key at a time: a key named twice (or `a` and `{a}`, which share
    // a stored name) is deleted and counted once.
    let mut deleted = 0u64;
    let mut changed = false;
    if let Some(ns) = ns {
        for t in &targets {
            let key = OpenKey::write(ctx, &t.stored);
            let (live, remove) = match slot(&key, ns, t.form)? {
                Slot::Live(_) => (true, true),
                Slot::Stale => (false, true),
                Slot::Empty | Slot::Other => (false, false),
            };
            if remove {
                key.delete()?;
                changed = true;
                deleted += u64::from(live);
            }
        }
    }
    if changed {
        ctx.replicate_verbatim();
    }
    publish_invalidation(
        ctx,
        prefix,
        InvalidationScope::Keys(
            targets
                .iter()
                .map(|t| String::from_utf8_lossy(t.key).into_owned())
                .collect(),
        ),
    );
    if let Some(ns) = ns {
        let mut stats = ns.stats();
        stats.counters.deletes += deleted;
        stats.write_latency.record(started.elapsed_ns());
    }
    Ok(RedisValue::Integer(deleted as i64))
}

/// `NSCACHE.TTL prefix key`
pub fn ttl(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    arity(args, 3, Some(3), "nscache.ttl")?;
    let prefix = prefix_arg(args.at(1))?;
    let target = target(ctx, prefix, args.at(2))?;
    acl::require_keys(ctx, prefix, [&target.stored], Access::Read)?;
    let Some(ns) = registry().get(prefix) else {
        OpenKey::read(ctx, &target.stored).content()?;
        return Ok(RedisValue::Integer(-2));
    };
    let key = OpenKey::read(ctx, &target.stored);
    Ok(RedisValue::Integer(match slot(&key, ns, target.form)? {
        Slot::Live(_) => match key.expire_ms() {
            Some(ms) => (ms + 500) / 1000,
            None => -1,
        },
        _ => -2,
    }))
}

/// `NSCACHE.INVALIDATE prefix`
pub fn invalidate(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    let started = Stopwatch::start();
    arity(args, 2, Some(2), "nscache.invalidate")?;
    let prefix = prefix_arg(args.at(1))?;
    acl::require_namespace(ctx, prefix, Access::Write)?;
    // A namespace this node does not have holds nothing here to invalidate; L1
    // caches are still told (they may hold entries from other nodes).
    let Some(ns) = read_namespace(ctx, prefix) else {
        publish_invalidation(ctx, prefix, InvalidationScope::Namespace);
        return Ok(RedisValue::Integer(0));
    };
    let invalidated = ns.invalidate();
    sweeper::request();
    ctx.replicate_verbatim();
    publish_invalidation(ctx, prefix, InvalidationScope::Namespace);
    ns.stats().write_latency.record(started.elapsed_ns());
    Ok(RedisValue::Integer(
        i64::try_from(invalidated).unwrap_or(i64::MAX),
    ))
}

/// `NSCACHE.STATS [prefix] [JSON]`
pub fn stats(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    arity(args, 1, Some(3), "nscache.stats")?;
    let words: Vec<&[u8]> = args.from(1).iter().collect();
    let mut rest = &words[..];
    let json = rest.last().is_some_and(|a| a.eq_ignore_ascii_case(b"JSON"));
    if json {
        rest = &rest[..rest.len() - 1];
    }
    match rest {
        [] => {
            // Only the namespaces the user may read (all of them for `~*`).
            let caller = acl::Caller::current(ctx)?;
            let reports: Vec<NamespaceStats> = registry()
                .all()
                .iter()
                .filter(|ns| caller.allows_namespace(ctx, ns.name(), Access::Read))
                .map(|ns| ns.report())
                .collect();
            if json {
                return Ok(RedisValue::BulkString(StatsReport::new(reports).to_json()));
            }
            raw::reply_with_map(ctx.ctx, reports.len() as i64);
            for report in &reports {
                reply_str(ctx, &report.prefix);
                reply_stats(ctx, report);
            }
        }
        [prefix] => {
            let prefix = prefix_arg(prefix)?;
            acl::require_namespace(ctx, prefix, Access::Read)?;
            let report = match registry().get(prefix) {
                Some(ns) => ns.report(),
                None => Namespace::new(prefix, 1).report(),
            };
            if json {
                return Ok(RedisValue::BulkString(report.to_json()));
            }
            reply_stats(ctx, &report);
        }
        [_, other] => return Err(CacheError::UnknownOption(crate::args::printable(other))),
        _ => return Err(CacheError::WrongArity("nscache.stats")),
    }
    Ok(RedisValue::NoReply)
}

fn reply_str(ctx: &Context, s: &str) {
    raw::reply_with_string_buffer(ctx.ctx, s.as_ptr().cast(), s.len());
}

fn reply_int(ctx: &Context, v: u64) {
    raw::reply_with_long_long(ctx.ctx, i64::try_from(v).unwrap_or(i64::MAX));
}

/// Writes a report as a map (RESP3) or flat field/value array (RESP2), fields in
/// SPEC 2.5 order; the crate's map values would sort or shuffle them.
fn reply_stats(ctx: &Context, r: &NamespaceStats) {
    raw::reply_with_map(ctx.ctx, 16);
    for (name, value) in [("hits", r.hits), ("misses", r.misses)] {
        reply_str(ctx, name);
        reply_int(ctx, value);
    }
    reply_str(ctx, "hit_ratio");
    raw::reply_with_double(ctx.ctx, r.hit_ratio);
    for (name, value) in [
        ("sets", r.sets),
        ("deletes", r.deletes),
        ("invalidations", r.invalidations),
        ("expired", r.expired),
        ("evicted", r.evicted),
        ("entries", r.entries),
        ("bytes", r.bytes),
    ] {
        reply_str(ctx, name);
        reply_int(ctx, value);
    }
    for (name, l) in [
        ("read_latency_us", &r.read_latency_us),
        ("write_latency_us", &r.write_latency_us),
    ] {
        reply_str(ctx, name);
        raw::reply_with_map(ctx.ctx, 5);
        for (field, value) in [
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p999", l.p999),
            ("max", l.max),
        ] {
            reply_str(ctx, field);
            reply_int(ctx, value);
        }
    }
    for (name, value) in [
        ("leases", r.leases),
        ("lease_waits", r.lease_waits),
        ("refreshes", r.refreshes),
        ("stale_sets_rejected", r.stale_sets_rejected),
    ] {
        reply_str(ctx, name);
        reply_int(ctx, value);
    }
}

/// `NSCACHE.TOPKEYS prefix [count]`
pub fn topkeys(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    arity(args, 2, Some(3), "nscache.topkeys")?;
    let prefix = prefix_arg(args.at(1))?;
    acl::require_namespace(ctx, prefix, Access::Read)?;
    let count = match args.get(2) {
        Some(raw) => parse_count(raw)?,
        None => config::topk(),
    };
    let top = registry()
        .get(prefix)
        .map(|ns| ns.stats().topk.top(count))
        .unwrap_or_default();
    raw::reply_with_array(ctx.ctx, 2 * top.len() as i64);
    for (key, hits) in &top {
        raw::reply_with_string_buffer(ctx.ctx, key.as_ptr().cast(), key.len());
        reply_int(ctx, *hits);
    }
    Ok(RedisValue::NoReply)
}

/// `NSCACHE.RESETSTATS [prefix]`
pub fn resetstats(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    arity(args, 1, Some(2), "nscache.resetstats")?;
    match args.get(1) {
        None => {
            // All or nothing: every namespace is checked before any is reset.
            let caller = acl::Caller::current(ctx)?;
            let all = registry().all();
            for ns in &all {
                caller.require_namespace(ctx, ns.name(), Access::Write)?;
            }
            all.iter().for_each(|ns| ns.reset_stats());
        }
        Some(prefix) => {
            let prefix = prefix_arg(prefix)?;
            acl::require_namespace(ctx, prefix, Access::Write)?;
            if let Some(ns) = registry().get(prefix) {
                ns.reset_stats();
            }
        }
    }
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// Whether the running command comes from AOF loading or the replication link
/// rather than from a client.
fn from_loading_or_primary(ctx: &Context) -> bool {
    let flags = ctx.get_flags();
    flags.contains(ContextFlags::LOADING) || flags.contains(ContextFlags::REPLICATED)
}

/// `NSCACHE.RESTOREENTRY stored prefix form value`: recreates an entry under an
/// exact stored name, without expiry. Emitted by AOF rewrites (followed by the
/// key's PEXPIREAT), where a renamed key has no `prefix key` to SET it by.
///
/// Only AOF loading and a primary's stream may run it: from a client it would
/// create an entry that never expires, which NSCACHE.SET cannot.
pub fn restoreentry(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    arity(args, 5, Some(5), "nscache.restoreentry")?;
    if args.at(1).is_empty() {
        return Err(CacheError::EmptyKey);
    }
    let prefix = prefix_arg(args.at(2))?;
    let form = match args.at(3) {
        b"0" => KeyForm::Wrapped,
        b"1" => KeyForm::Tagged,
        _ => return Err(CacheError::BadForm),
    };
    let value = args.at(4);
    if value.len() > MAX_VALUE_LEN {
        return Err(CacheError::ValueTooLarge(value.len(), MAX_VALUE_LEN));
    }
    // Checked after the arguments, so a malformed line names its problem.
    if !from_loading_or_primary(ctx) {
        return Err(CacheError::InternalCommand);
    }
    let ns = namespace(ctx, prefix)?;
    // The argument itself names the key (retained while it is in use here).
    let stored = RedisString::new(NonNull::new(ctx.ctx), args.raw(1));
    let key = OpenKey::write(ctx, &stored);
    let occupied = matches!(key.content()?, Content::Entry(_));
    let charged = charge_for(stored.as_slice().len(), value.len());
    let entry = Entry::new(ns, ns.generation(), form, value, charged);
    key.store(entry, None, occupied)?;
    drop(key);
    lease::void_key(selected_db(ctx), args.at(1));
    ctx.replicate_verbatim();
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// `NSCACHE.FORGET prefix`: drops an empty namespace's statistics (SPEC 2.6).
/// OK when forgotten and when no such namespace exists (nothing to forget);
/// an error, and no change, while it holds entries of any kind. Statistics are
/// per node, so it is not replicated.
pub fn forget(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    arity(args, 2, Some(2), "nscache.forget")?;
    let prefix = prefix_arg(args.at(1))?;
    acl::require_namespace(ctx, prefix, Access::Write)?;
    registry().forget(prefix)?;
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// `NSCACHE.KEYNAME prefix key`
pub fn keyname(ctx: &Context, args: Args<'_>) -> CacheResult<RedisValue> {
    arity(args, 3, Some(3), "nscache.keyname")?;
    let prefix = prefix_arg(args.at(1))?;
    let target = target(ctx, prefix, args.at(2))?;
    Ok(RedisValue::StringBuffer(target.stored.as_slice().to_vec()))
}

/// Ids of published envelopes: start from the load time in microseconds so they
/// keep increasing across restarts of one server.
static NEXT_EVENT_ID: AtomicI64 = AtomicI64::new(0);

fn next_event_id() -> i64 {
    let _ = NEXT_EVENT_ID.compare_exchange(
        0,
        Timestamp::now().unix_micros().max(1),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    NEXT_EVENT_ID.fetch_add(1, Ordering::Relaxed)
}

/// PUBLISHes a `cache.invalidated` envelope on `nscache:events` when enabled,
/// from the node that ran the client's command only (not replicas, not AOF).
fn publish_invalidation(ctx: &Context, prefix: &str, scope: InvalidationScope) {
    if !config::publish_invalidations() {
        return;
    }
    let flags = ctx.get_flags();
    if flags.contains(ContextFlags::REPLICATED) || flags.contains(ContextFlags::LOADING) {
        return;
    }
    let invalidation = CacheInvalidation {
        prefix: prefix.to_string(),
        scope,
    };
    let serde_json::Value::Object(payload) = invalidation.to_value() else {
        return;
    };
    let envelope = Envelope {
        v: FORMAT_VERSION,
        id: next_event_id(),
        event_type: INVALIDATED_EVENT_TYPE.to_string(),
        aggregate_type: Some("namespace".to_string()),
        aggregate_id: Some(prefix.to_string()),
        payload,
        headers: serde_json::Map::new(),
        occurred_at: Timestamp::now(),
        txid: None,
    };
    let channel = RedisString::create_from_slice(ctx.ctx, b"nscache:events");
    let message = RedisString::create_from_slice(ctx.ctx, envelope.to_json().as_bytes());
    // SAFETY: both strings live for the call.
    unsafe {
        if let Some(publish) = raw::RedisModule_PublishMessage {
            publish(ctx.ctx, channel.inner, message.inner);
        }
    }
}

fn replicate_pexpireat(ctx: &Context, stored: &RedisString, at_ms: i64) {
    // The time as decimal digits in a buffer ("b"): Redis turns an "l"
    // argument into a string through an sds and a second allocation.
    let mut digits = [0u8; 20];
    let time = decimal(at_ms, &mut digits);
    // SAFETY: "sb" = one RedisModuleString, then a buffer and its length, all
    // valid for the call (Redis copies the buffer).
    unsafe {
        if let Some(replicate) = raw::RedisModule_Replicate {
            replicate(
                ctx.ctx,
                c"PEXPIREAT".as_ptr(),
                c"sb".as_ptr(),
                stored.inner,
                time.as_ptr().cast::<std::ffi::c_char>(),
                time.len(),
            );
        }
    }
}

/// Writes `value` in decimal at the end of `out` and returns the digits (two
/// digits per division: a 13-digit time costs seven).
fn decimal(value: i64, out: &mut [u8; 20]) -> &[u8] {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
                                2021222324252627282930313233343536373839\
                                4041424344454647484950515253545556575859\
                                6061626364656667686970717273747576777879\
                                8081828384858687888990919293949596979899";
    let mut rest = value.unsigned_abs();
    let mut at = out.len();
    while rest >= 100 {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        at -= 2;
        out[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if rest >= 10 {
        let pair = rest as usize * 2;
        at -= 2;
        out[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        out[at] = b'0' + rest as u8;
    }
    if value < 0 {
        at -= 1;
        out[at] = b'-';
    }
    &out[at..]
}

fn now_ms() -> i64 {
    // SAFETY: the module API is initialised before any command runs.
    unsafe { raw::RedisModule_Milliseconds.map(|f| f()) }.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::decimal;

    #[test]
    fn decimal_matches_display() {
        for value in [
            0,
            7,
            -7,
            10,
            99,
            100,
            101,
            -100,
            1_800_000_000_123,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = [0u8; 20];
            assert_eq!(decimal(value, &mut out), value.to_string().as_bytes());
        }
    }
}
