//! Command handlers: parse, call the logic, reply. Nothing else lives here.

use std::panic::{catch_unwind, AssertUnwindSafe};

use cachetx_shared::{validate_prefix, NamespaceStats};
use redis_module::{raw, Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::args::{parse_set_options, parse_ttl, SetCondition, MAX_VALUE_LEN};
use crate::datatype::charge_for;
use crate::entry::{Entry, EntryRef};
use crate::error::{CacheError, CacheResult};
use crate::keyname::{key_form, stored_name, KeyForm};
use crate::namespace::{registry, Namespace};
use crate::openkey::{Content, OpenKey};

/// Runs a handler so that a panic becomes an error reply instead of aborting
/// redis-server (the macro's `extern "C"` wrapper would abort on unwind).
///
/// Errors are turned into replies here, with their own code (`ERR`, `WRONGTYPE`):
/// the crate's blanket conversion would prefix every message with `ERR`.
pub fn guarded(
    ctx: &Context,
    args: Vec<RedisString>,
    handler: fn(&Context, &[RedisString]) -> CacheResult<RedisValue>,
) -> RedisResult {
    match catch_unwind(AssertUnwindSafe(|| handler(ctx, &args))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(RedisError::String(err.to_string())),
        Err(_) => Err(RedisError::Str(
            "ERR nscache internal error (a bug; details in the server log)",
        )),
    }
}

/// A parsed `(prefix, key)` pair and the Redis key that stores it.
struct Target<'a> {
    key: &'a [u8],
    form: KeyForm,
    stored: RedisString,
}

fn target<'a>(ctx: &Context, prefix: &str, key: &'a RedisString) -> CacheResult<Target<'a>> {
    let key = key.as_slice();
    let form = key_form(key)?;
    // Keys are binary: `create_string` goes through a C string and stops at NUL.
    let stored = RedisString::create_from_slice(ctx.ctx, &stored_name(prefix, key, form));
    Ok(Target { key, form, stored })
}

fn prefix_arg(arg: &RedisString) -> CacheResult<&str> {
    Ok(validate_prefix(arg.as_slice())?)
}

fn arity(args: &[RedisString], min: usize, name: &'static str) -> CacheResult<()> {
    if args.len() < min {
        Err(CacheError::WrongArity(name))
    } else {
        Ok(())
    }
}

/// Whether an open key holds a live entry of `(ns, form)`, and whether it holds
/// anything at all (a stale entry still occupies the name).
fn liveness<'a>(
    key: &'a OpenKey,
    ns: &Namespace,
    form: KeyForm,
) -> CacheResult<(Option<EntryRef<'a>>, bool)> {
    Ok(match key.content()? {
        Content::Empty => (None, false),
        Content::Entry(entry) => {
            let live = std::ptr::eq(entry.namespace(), ns)
                && entry.form() == form
                && entry.is_current(ns.generation());
            (live.then_some(entry), true)
        }
    })
}

fn namespace(prefix: &str) -> CacheResult<&'static Namespace> {
    registry().get_or_create(prefix)
}

/// `NSCACHE.SET prefix key ttl value [NX|XX]`
pub fn set(ctx: &Context, args: &[RedisString]) -> CacheResult<RedisValue> {
    arity(args, 5, "nscache.set")?;
    let prefix = prefix_arg(&args[1])?;
    let target = target(ctx, prefix, &args[2])?;
    let ttl = parse_ttl(args[3].as_slice())?;
    let value = args[4].as_slice();
    if value.len() > MAX_VALUE_LEN {
        return Err(CacheError::ValueTooLarge(value.len(), MAX_VALUE_LEN));
    }
    let options = parse_set_options(args[5..].iter().map(RedisString::as_slice))?;
    let ns = namespace(prefix)?;

    let key = OpenKey::write(ctx, &target.stored);
    let live = liveness(&key, ns, target.form)?.0.is_some();
    let proceed = match options.condition {
        SetCondition::Always => true,
        SetCondition::IfAbsent => !live,
        SetCondition::IfPresent => live,
    };
    if !proceed {
        return Ok(RedisValue::Null);
    }

    let entry = Entry::new(
        ns,
        ns.generation(),
        target.form,
        value,
        charge_for(target.stored.as_slice().len(), value.len()),
    );
    let expire_at = now_ms().saturating_add(ttl * 1000);
    key.store(entry, expire_at)?;
    ns.counters().sets += 1;

    // Replicas and the AOF get the write and the absolute expiry of this node,
    // so a replay does not restart the ttl and DEBUG DIGEST stays equal.
    let expire_at = expire_at.to_string();
    ctx.replicate(
        "NSCACHE.SET",
        &[prefix.as_bytes(), target.key, args[3].as_slice(), value][..],
    );
    ctx.replicate(
        "PEXPIREAT",
        &[target.stored.as_slice(), expire_at.as_bytes()][..],
    );
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// `NSCACHE.GET prefix key`
pub fn get(ctx: &Context, args: &[RedisString]) -> CacheResult<RedisValue> {
    if args.len() != 3 {
        return Err(CacheError::WrongArity("nscache.get"));
    }
    let prefix = prefix_arg(&args[1])?;
    let target = target(ctx, prefix, &args[2])?;
    let ns = namespace(prefix)?;
    let key = OpenKey::read(ctx, &target.stored);
    match liveness(&key, ns, target.form)?.0 {
        Some(entry) => {
            ns.counters().hits += 1;
            let value = entry.value();
            // Reply straight from the entry: no copy of the value.
            raw::reply_with_string_buffer(ctx.ctx, value.as_ptr().cast(), value.len());
            Ok(RedisValue::NoReply)
        }
        None => {
            ns.counters().misses += 1;
            Ok(RedisValue::Null)
        }
    }
}

/// `NSCACHE.DEL prefix key [key ...]`
pub fn del(ctx: &Context, args: &[RedisString]) -> CacheResult<RedisValue> {
    arity(args, 3, "nscache.del")?;
    let prefix = prefix_arg(&args[1])?;
    let targets = args[2..]
        .iter()
        .map(|key| target(ctx, prefix, key))
        .collect::<CacheResult<Vec<_>>>()?;
    let ns = namespace(prefix)?;

    // Check every key before deleting any, so a WRONGTYPE changes nothing.
    let keys: Vec<OpenKey> = targets
        .iter()
        .map(|t| OpenKey::write(ctx, &t.stored))
        .collect();
    let mut slots = Vec::with_capacity(keys.len());
    for (key, t) in keys.iter().zip(&targets) {
        let (live, occupied) = liveness(key, ns, t.form)?;
        slots.push((live.is_some(), occupied));
    }
    let mut deleted = 0;
    let mut changed = false;
    for (key, (live, occupied)) in keys.iter().zip(slots) {
        if occupied {
            key.delete()?;
            changed = true;
        }
        if live {
            deleted += 1;
        }
    }
    if changed {
        ns.counters().deletes += deleted;
        ctx.replicate_verbatim();
    }
    Ok(RedisValue::Integer(deleted as i64))
}

/// `NSCACHE.STATS prefix`
pub fn stats(ctx: &Context, args: &[RedisString]) -> CacheResult<RedisValue> {
    if args.len() != 2 {
        return Err(CacheError::WrongArity("nscache.stats"));
    }
    let prefix = prefix_arg(&args[1])?;
    let report = match registry().get(prefix) {
        Some(ns) => ns.report(),
        None => Namespace::new(prefix).report(),
    };
    reply_stats(ctx, &report);
    Ok(RedisValue::NoReply)
}

/// Writes a report as a map (RESP3) or flat field/value array (RESP2), fields in
/// SPEC 2.5 order; the crate's map values would sort or shuffle them.
fn reply_stats(ctx: &Context, r: &NamespaceStats) {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let counters = [("hits", r.hits), ("misses", r.misses)];
    let rest = [
        ("sets", r.sets),
        ("deletes", r.deletes),
        ("invalidations", r.invalidations),
        ("expired", r.expired),
        ("evicted", r.evicted),
        ("entries", r.entries),
        ("bytes", r.bytes),
    ];
    let field =
        |name: &str| raw::reply_with_string_buffer(ctx.ctx, name.as_ptr().cast(), name.len());
    raw::reply_with_map(ctx.ctx, (counters.len() + 1 + rest.len()) as i64);
    for (name, value) in counters {
        field(name);
        raw::reply_with_long_long(ctx.ctx, int(value));
    }
    field("hit_ratio");
    raw::reply_with_double(ctx.ctx, r.hit_ratio);
    for (name, value) in rest {
        field(name);
        raw::reply_with_long_long(ctx.ctx, int(value));
    }
}

/// `NSCACHE.RESETSTATS [prefix]`
pub fn resetstats(_ctx: &Context, args: &[RedisString]) -> CacheResult<RedisValue> {
    match args.len() {
        1 => registry().all().iter().for_each(|ns| ns.reset_counters()),
        2 => {
            let prefix = prefix_arg(&args[1])?;
            if let Some(ns) = registry().get(prefix) {
                ns.reset_counters();
            }
        }
        _ => return Err(CacheError::WrongArity("nscache.resetstats")),
    }
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// `NSCACHE.KEYNAME prefix key`
pub fn keyname(ctx: &Context, args: &[RedisString]) -> CacheResult<RedisValue> {
    if args.len() != 3 {
        return Err(CacheError::WrongArity("nscache.keyname"));
    }
    let prefix = prefix_arg(&args[1])?;
    let target = target(ctx, prefix, &args[2])?;
    Ok(RedisValue::StringBuffer(target.stored.as_slice().to_vec()))
}

fn now_ms() -> i64 {
    // SAFETY: the module API is initialised before any command runs.
    unsafe { raw::RedisModule_Milliseconds.map(|f| f()) }.unwrap_or(0)
}
