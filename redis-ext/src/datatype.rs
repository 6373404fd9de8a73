//! The module data type `nscache-e`: Redis-facing callbacks of [`Entry`].
//!
//! RDB layout of one entry, encoding version 1: prefix (string), live (unsigned:
//! 1 if the entry was of its namespace's current generation when saved, else 0),
//! form (unsigned: 0 wrapped, 1 tagged), value (string).
//!
//! A live bit rather than the raw generation: generation numbers are local to a
//! server (a replica's, a MIGRATE target's and a restarted server's differ), so
//! a loaded entry takes the current generation of its namespace if it was live,
//! and one that is never current if it was not.
//!
//! Aux data (before the keys): the number of namespaces with a non-zero
//! generation, then (prefix, generation) for each, so generation numbers carry
//! on across restarts.

use std::ffi::{c_int, c_void};
use std::ptr;

use redis_module::native_types::RedisType;
use redis_module::raw;

use crate::entry::{Entry, EntryRef};
use crate::keyname::KeyForm;
use crate::namespace::registry;
use crate::{config, guard, memsize, removal, sweeper};

/// Encoding version written to RDB; [`rdb_load`] refuses any other.
pub const ENCODING_VERSION: i32 = 1;

/// The data type every cache entry has (`TYPE` answers `nscache-e`).
pub static ENTRY_TYPE: RedisType = RedisType::new(
    "nscache-e",
    ENCODING_VERSION,
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: Some(aof_rewrite),
        free: Some(free),
        mem_usage: Some(mem_usage),
        digest: Some(digest),
        aux_load: Some(aux_load),
        aux_save: Some(aux_save),
        aux_save2: None,
        aux_save_triggers: raw::REDISMODULE_AUX_BEFORE_RDB as i32,
        free_effort: None,
        unlink: None,
        copy: Some(copy),
        defrag: None,
        copy2: None,
        free_effort2: None,
        mem_usage2: None,
        unlink2: Some(unlink2),
    },
);

/// The raw type handle, for calls the safe API does not cover.
pub fn raw_type() -> *mut raw::RedisModuleType {
    *ENTRY_TYPE.raw_type.borrow()
}

/// The key form as stored in RDB and in `NSCACHE.RESTOREENTRY`.
pub fn form_code(form: KeyForm) -> u64 {
    match form {
        KeyForm::Wrapped => 0,
        KeyForm::Tagged => 1,
    }
}

/// Whether this server runs in cluster mode (its keys carry slot metadata).
static CLUSTER_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records whether the server runs in cluster mode; called once at load.
pub fn set_cluster_mode(cluster: bool) {
    CLUSTER_MODE.store(cluster, std::sync::atomic::Ordering::Relaxed);
}

/// Bytes charged to a namespace for one entry: what `MEMORY USAGE` will report.
pub fn charge_for(stored_key_len: usize, value_len: usize) -> u32 {
    let cluster = CLUSTER_MODE.load(std::sync::atomic::Ordering::Relaxed);
    let usage = memsize::key_usage(stored_key_len, Entry::alloc_len_for(value_len), cluster);
    u32::try_from(usage).unwrap_or(u32::MAX)
}

// Every callback runs inside `guard::catch`: an unwind into Redis's C frames
// would abort the server.

unsafe extern "C" fn free(value: *mut c_void) {
    // Dropping gives the entry's count and bytes back to its namespace; this may
    // run on the lazy-free thread, which the namespace's atomics allow. If it
    // panics the entry leaks rather than the server dying.
    guard::catch("free", (), || {
        // SAFETY: Redis hands back the pointer we gave it, once.
        let entry = unsafe { Entry::from_raw(value) };
        if let Some(entry) = &entry {
            guard::inject_fault("free", entry.view().value());
        }
        drop(entry);
    });
}

unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    guard::catch("mem_usage", 0, || {
        // SAFETY: a live value pointer of our type.
        // Computed, not measured, so it always agrees with what `charge_for` charged.
        match unsafe { EntryRef::from_raw(value) } {
            Some(entry) => {
                guard::inject_fault("mem_usage", entry.value());
                memsize::entry_mem_usage(entry.alloc_len())
            }
            None => 0,
        }
    })
}

unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    // A panic here leaves this entry's record short: the save fails its own
    // checks later or the RDB refuses to load; the server stays up either way.
    guard::catch("rdb_save", (), || save_entry(rdb, value));
}

fn save_entry(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    // SAFETY: a live value pointer of our type.
    let Some(entry) = (unsafe { EntryRef::from_raw(value) }) else {
        return;
    };
    guard::inject_fault("rdb_save", entry.value());
    let live = entry.is_current(entry.namespace().generation());
    raw::save_string(rdb, entry.namespace().name());
    raw::save_unsigned(rdb, u64::from(live));
    raw::save_unsigned(rdb, form_code(entry.form()));
    raw::save_slice(rdb, entry.value());
}

unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    // Null makes Redis fail the load (or the RESTORE) cleanly.
    guard::catch("rdb_load", ptr::null_mut(), || load(rdb, encver))
}

fn load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    if encver != ENCODING_VERSION {
        log_warning(&format!(
            "nscache: cannot load an entry of encoding version {encver}: this build reads version {ENCODING_VERSION}; upgrade the module"
        ));
        return ptr::null_mut();
    }
    // RESTORE and MIGRATE name the key: charge what MEMORY USAGE will report.
    // SAFETY: rdb is the IO context of this load; the name may be null (AOF
    // preamble or older servers), then the charge assumes a short name.
    let key_len = unsafe { raw::RedisModule_GetKeyNameFromIO.map(|f| f(rdb)) }
        .filter(|name| !name.is_null())
        .map(|name| redis_module::RedisString::string_as_slice(name).len())
        .unwrap_or(0);
    match load_entry(rdb, key_len, loads_existing_data(rdb)) {
        Ok(entry) => entry.into_raw(),
        Err(why) => {
            log_warning(&format!("nscache: {why}"));
            ptr::null_mut()
        }
    }
}

/// Whether this load brings data that already exists and must never be dropped
/// (an RDB or AOF being loaded, which includes a replica's full sync, or a
/// RESTORE/MIGRATE a replica receives from its primary), rather than a client's
/// RESTORE, which obeys the namespace cap like any write.
fn loads_existing_data(rdb: *mut raw::RedisModuleIO) -> bool {
    // SAFETY: rdb is the IO context of this load; Redis frees the context it
    // creates for it after the load.
    let ctx = unsafe { raw::RedisModule_GetContextFromIO.map(|f| f(rdb)) };
    let Some(ctx) = ctx.filter(|ctx| !ctx.is_null()) else {
        // Unknown origin: keeping data is the safe side.
        return true;
    };
    // SAFETY: a valid context; a plain query of server and client state.
    let flags = unsafe { raw::RedisModule_GetContextFlags.map(|f| f(ctx)) }.unwrap_or(0);
    // A replica (read-only to clients) only executes what its primary sends;
    // LOADING covers RDB/AOF loading and the replica's full sync. A writable
    // replica's own clients are treated as its primary's, which errs on keeping.
    let existing = raw::REDISMODULE_CTX_FLAGS_LOADING
        | raw::REDISMODULE_CTX_FLAGS_SLAVE
        | raw::REDISMODULE_CTX_FLAGS_REPLICATED;
    (flags as u32 & existing) != 0
}

fn load_entry(
    rdb: *mut raw::RedisModuleIO,
    key_len: usize,
    existing: bool,
) -> Result<Entry, String> {
    let corrupt = |why: String| format!("corrupt entry in RDB: {why}");
    let io = |e: redis_module::error::Error| corrupt(format!("read error: {e}"));
    let prefix = raw::load_string_buffer(rdb).map_err(io)?;
    let prefix =
        cachetx_shared::validate_prefix(prefix.as_ref()).map_err(|e| corrupt(e.to_string()))?;
    let live = match raw::load_unsigned(rdb).map_err(io)? {
        0 => false,
        1 => true,
        other => return Err(corrupt(format!("bad live flag {other}"))),
    };
    let form = match raw::load_unsigned(rdb).map_err(io)? {
        0 => KeyForm::Wrapped,
        1 => KeyForm::Tagged,
        other => return Err(corrupt(format!("unknown key form {other}"))),
    };
    let value = raw::load_string_buffer(rdb).map_err(io)?;
    if value.as_ref().len() > crate::args::MAX_VALUE_LEN {
        return Err(corrupt("value over the size limit".to_string()));
    }
    guard::inject_fault("rdb_load", value.as_ref());
    // Loading never refuses a namespace over the cap: the data is already
    // there. A client's RESTORE creates data, like a write.
    let namespace = if existing {
        registry().get_or_create_uncapped(prefix, config::max_namespaces(), config::topk())
    } else {
        registry()
            .get_or_create(prefix, config::max_namespaces(), config::topk())
            .map_err(|e| format!("RESTORE of an entry of namespace '{prefix}' refused: {e}"))?
    };
    let generation = if live {
        namespace.generation()
    } else {
        // An invalidated entry stays invalidated; the sweep takes it.
        sweeper::request();
        crate::entry::NEVER_CURRENT
    };
    let charged = charge_for(key_len.max(prefix.len() + 3), value.as_ref().len());
    Ok(Entry::new(
        namespace,
        generation,
        form,
        value.as_ref(),
        charged,
    ))
}

unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    guard::catch("aof_rewrite", (), || rewrite_entry(aof, key, value));
}

fn rewrite_entry(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    // SAFETY: a live value pointer of our type.
    let Some(entry) = (unsafe { EntryRef::from_raw(value) }) else {
        return;
    };
    guard::inject_fault("aof_rewrite", entry.value());
    // An invalidated entry is logically gone: the rewritten AOF leaves it out.
    if !entry.is_current(entry.namespace().generation()) {
        return;
    }
    let Some(emit) = (unsafe { raw::RedisModule_EmitAOF }) else {
        return;
    };
    // The exact stored name, not `NSCACHE.SET prefix key`: after a RENAME the
    // name may not map back to a user key. Redis follows this with PEXPIREAT
    // when the key has an expiry (none after PERSIST).
    let prefix = entry.namespace().name();
    let form = if entry.form() == KeyForm::Tagged {
        c"1"
    } else {
        c"0"
    };
    // SAFETY: "sbcb" = a RedisModuleString, a (pointer, length) buffer, a C
    // string, and another buffer, all valid for the call.
    unsafe {
        emit(
            aof,
            c"NSCACHE.RESTOREENTRY".as_ptr(),
            c"sbcb".as_ptr(),
            key,
            prefix.as_ptr(),
            prefix.len(),
            form.as_ptr(),
            entry.value().as_ptr(),
            entry.len(),
        );
    }
}

unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    guard::catch("digest", (), || digest_entry(md, value));
}

fn digest_entry(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    // SAFETY: a live value pointer of our type.
    let Some(entry) = (unsafe { EntryRef::from_raw(value) }) else {
        return;
    };
    guard::inject_fault("digest", entry.value());
    let (Some(add), Some(end)) = (unsafe { raw::RedisModule_DigestAddStringBuffer }, unsafe {
        raw::RedisModule_DigestEndSequence
    }) else {
        return;
    };
    // What a client can observe, not the raw generation: a rewritten AOF
    // restarts generations, and equal data must digest equally.
    let name = entry.namespace().name();
    let live = entry.is_current(entry.namespace().generation());
    let meta = format!("{}:{}", u8::from(live), form_code(entry.form()));
    // SAFETY: buffers valid for the call.
    unsafe {
        add(md, name.as_ptr().cast_mut().cast(), name.len());
        add(md, meta.as_ptr().cast_mut().cast(), meta.len());
        add(md, entry.value().as_ptr().cast_mut().cast(), entry.len());
        end(md);
    }
}

unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    // Null makes COPY fail with an error and change nothing.
    guard::catch("copy", ptr::null_mut(), || {
        // SAFETY: a live value pointer of our type.
        let Some(entry) = (unsafe { EntryRef::from_raw(value) }) else {
            return ptr::null_mut();
        };
        guard::inject_fault("copy", entry.value());
        let to_len = redis_module::RedisString::string_as_slice(to).len();
        Entry::new(
            entry.namespace(),
            entry.generation(),
            entry.form(),
            entry.value(),
            charge_for(to_len, entry.len()),
        )
        .into_raw()
    })
}

unsafe extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, _when: c_int) {
    guard::catch("aux_save", (), || save_generations(rdb));
}

fn save_generations(rdb: *mut raw::RedisModuleIO) {
    let generations: Vec<(String, u64)> = registry()
        .all()
        .iter()
        .filter(|ns| ns.generation() > 0)
        .map(|ns| (ns.name().to_string(), ns.generation()))
        .collect();
    raw::save_unsigned(rdb, generations.len() as u64);
    for (name, generation) in generations {
        raw::save_string(rdb, &name);
        raw::save_unsigned(rdb, generation);
    }
}

unsafe extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, encver: c_int, _when: c_int) -> c_int {
    guard::catch("aux_load", raw::Status::Err as c_int, || {
        load_aux(rdb, encver)
    })
}

fn load_aux(rdb: *mut raw::RedisModuleIO, encver: c_int) -> c_int {
    if encver != ENCODING_VERSION {
        log_warning(&format!(
            "nscache: cannot load namespace data of encoding version {encver}: this build reads version {ENCODING_VERSION}"
        ));
        return raw::Status::Err as c_int;
    }
    match load_generations(rdb) {
        Ok(()) => {
            // Entries of older generations may come with the data: sweep them.
            sweeper::request();
            raw::Status::Ok as c_int
        }
        Err(why) => {
            log_warning(&format!("nscache: corrupt namespace data in RDB: {why}"));
            raw::Status::Err as c_int
        }
    }
}

fn load_generations(rdb: *mut raw::RedisModuleIO) -> Result<(), String> {
    let io = |e: redis_module::error::Error| format!("read error: {e}");
    let count = raw::load_unsigned(rdb).map_err(io)?;
    for _ in 0..count {
        let name = raw::load_string_buffer(rdb).map_err(io)?;
        let name = cachetx_shared::validate_prefix(name.as_ref()).map_err(|e| e.to_string())?;
        let generation = raw::load_unsigned(rdb).map_err(io)?;
        let ns = registry().get_or_create_uncapped(name, config::max_namespaces(), config::topk());
        // Loaded entries take the generation in force when they load (aux data
        // comes first), so live ones stay live whatever this number was.
        ns.restore_generation(generation);
    }
    Ok(())
}

unsafe extern "C" fn unlink2(ctx: *mut raw::RedisModuleKeyOptCtx, value: *const c_void) {
    guard::catch("unlink", (), || note_unlink(ctx, value));
}

fn note_unlink(ctx: *mut raw::RedisModuleKeyOptCtx, value: *const c_void) {
    // Called on the main thread as the key leaves the keyspace, before any
    // expired/evicted notification: remember whose entry it was.
    // SAFETY: a live value pointer of our type; ctx valid for the call.
    let Some(entry) = (unsafe { EntryRef::from_raw(value) }) else {
        return;
    };
    guard::inject_fault("unlink", entry.value());
    let Some(name) = (unsafe { raw::RedisModule_GetKeyNameFromOptCtx }).map(|f| unsafe { f(ctx) })
    else {
        return;
    };
    let name = redis_module::RedisString::string_as_slice(name);
    removal::entry_unlinked(entry.namespace(), name);
    // The entry leaves the keyspace (DEL, overwrite by a plain SET, RENAME,
    // MOVE, expiry, eviction...): a write of the key, which voids its FETCH
    // lease (SPEC 2.4). Keyspace events cover the same removals except an
    // overwrite; this covers that.
    if crate::lease::any() {
        // SAFETY: ctx is valid for the call.
        let db = unsafe { raw::RedisModule_GetDbIdFromOptCtx.map(|f| f(ctx)) }.unwrap_or(0);
        crate::lease::void_key(db, name);
    }
}

fn log_warning(message: &str) {
    crate::log::warning(message);
}
