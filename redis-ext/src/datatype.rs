//! The module data type `nscache-e`: Redis-facing callbacks of [`Entry`].
//!
//! RDB layout of one entry, encoding version 1: prefix (string), generation
//! (unsigned), form (unsigned: 0 wrapped, 1 tagged), charged bytes (unsigned),
//! value (string).

use std::ffi::{c_int, c_void};
use std::ptr;

use redis_module::native_types::RedisType;
use redis_module::raw;

use crate::entry::{Entry, EntryRef};
use crate::keyname::KeyForm;
use crate::namespace::registry;

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
        aux_load: None,
        aux_save: None,
        aux_save2: None,
        aux_save_triggers: 0,
        free_effort: None,
        unlink: None,
        copy: Some(copy),
        defrag: None,
        copy2: None,
        free_effort2: None,
        mem_usage2: None,
        unlink2: None,
    },
);

/// The raw type handle, for calls the safe API does not cover.
pub fn raw_type() -> *mut raw::RedisModuleType {
    *ENTRY_TYPE.raw_type.borrow()
}

fn form_code(form: KeyForm) -> u64 {
    match form {
        KeyForm::Wrapped => 0,
        KeyForm::Tagged => 1,
    }
}

/// Bytes charged to a namespace for one entry: the stored key, the value and
/// the fixed per-key cost (entry header, robj, module value, dict entries).
pub fn charge_for(stored_key_len: usize, value_len: usize) -> u32 {
    const PER_KEY_OVERHEAD: usize = 24 + 16 + 16 + 24 + 24 + 4;
    u32::try_from(stored_key_len + value_len + PER_KEY_OVERHEAD).unwrap_or(u32::MAX)
}

unsafe extern "C" fn free(value: *mut c_void) {
    // Dropping gives the entry's count and bytes back to its namespace; this may
    // run on the lazy-free thread, which the namespace's atomics allow.
    // SAFETY: Redis hands back the pointer we gave it, once.
    drop(unsafe { Entry::from_raw(value) });
}

unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    // SAFETY: a live value pointer of our type.
    match unsafe { EntryRef::from_raw(value) } {
        Some(entry) => {
            let alloc = entry.alloc_len();
            // SAFETY: the module API is initialised before any key exists.
            let usable = unsafe { raw::RedisModule_MallocSize }
                .map(|size| unsafe { size(value.cast_mut()) })
                .unwrap_or(alloc);
            usable.max(alloc)
        }
        None => 0,
    }
}

unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    // SAFETY: a live value pointer of our type.
    let Some(entry) = (unsafe { EntryRef::from_raw(value) }) else {
        return;
    };
    raw::save_string(rdb, entry.namespace().name());
    raw::save_unsigned(rdb, entry.generation());
    raw::save_unsigned(rdb, form_code(entry.form()));
    raw::save_unsigned(rdb, u64::from(entry.charged()));
    raw::save_slice(rdb, entry.value());
}

unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    if encver != ENCODING_VERSION {
        log_warning(&format!(
            "nscache: cannot load an entry of encoding version {encver}: this build reads version {ENCODING_VERSION}; upgrade the module"
        ));
        return ptr::null_mut();
    }
    match load_entry(rdb) {
        Ok(entry) => entry.into_raw(),
        Err(why) => {
            log_warning(&format!("nscache: corrupt entry in RDB: {why}"));
            ptr::null_mut()
        }
    }
}

fn load_entry(rdb: *mut raw::RedisModuleIO) -> Result<Entry, String> {
    let io = |e: redis_module::error::Error| format!("read error: {e}");
    let prefix = raw::load_string_buffer(rdb).map_err(io)?;
    let prefix = cachetx_shared::validate_prefix(prefix.as_ref()).map_err(|e| e.to_string())?;
    let generation = raw::load_unsigned(rdb).map_err(io)?;
    let form = match raw::load_unsigned(rdb).map_err(io)? {
        0 => KeyForm::Wrapped,
        1 => KeyForm::Tagged,
        other => return Err(format!("unknown key form {other}")),
    };
    let charged = u32::try_from(raw::load_unsigned(rdb).map_err(io)?).unwrap_or(u32::MAX);
    let value = raw::load_string_buffer(rdb).map_err(io)?;
    // Loading never refuses a namespace over the cap: the data is already there.
    let namespace = registry().get_or_create_uncapped(prefix);
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
    // SAFETY: a live value pointer of our type.
    let Some(entry) = (unsafe { EntryRef::from_raw(value) }) else {
        return;
    };
    let stored = redis_module::RedisString::string_as_slice(key);
    let prefix = entry.namespace().name();
    let Some(user_key) = crate::keyname::user_key(prefix, stored, entry.form()) else {
        return;
    };
    let Some(emit) = (unsafe { raw::RedisModule_EmitAOF }) else {
        return;
    };
    // A ttl of 1 is a placeholder: Redis appends PEXPIREAT with the real
    // absolute expiry right after this command.
    // SAFETY: "bbcb" = four (pointer, length) buffers then one C string.
    unsafe {
        emit(
            aof,
            c"NSCACHE.SET".as_ptr(),
            c"bbcb".as_ptr(),
            prefix.as_ptr(),
            prefix.len(),
            user_key.as_ptr(),
            user_key.len(),
            c"1".as_ptr(),
            entry.value().as_ptr(),
            entry.len(),
        );
    }
}

unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    // SAFETY: a live value pointer of our type.
    let Some(entry) = (unsafe { EntryRef::from_raw(value) }) else {
        return;
    };
    let (Some(add), Some(end)) = (unsafe { raw::RedisModule_DigestAddStringBuffer }, unsafe {
        raw::RedisModule_DigestEndSequence
    }) else {
        return;
    };
    let name = entry.namespace().name();
    // SAFETY: buffers valid for the call.
    unsafe {
        add(md, name.as_ptr().cast_mut().cast(), name.len());
        add(md, entry.value().as_ptr().cast_mut().cast(), entry.len());
        end(md);
    }
}

unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    // SAFETY: a live value pointer of our type.
    let Some(entry) = (unsafe { EntryRef::from_raw(value) }) else {
        return ptr::null_mut();
    };
    let to_len = redis_module::RedisString::string_as_slice(to).len();
    Entry::new(
        entry.namespace(),
        entry.generation(),
        entry.form(),
        entry.value(),
        charge_for(to_len, entry.len()),
    )
    .into_raw()
}

fn log_warning(message: &str) {
    crate::log::warning(message);
}
