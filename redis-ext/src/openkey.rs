//! An open Redis key seen as a cache slot: the raw module key API behind a guard.
//!
//! The crate's safe key wrappers hide the raw pointer that type checks and
//! `ModuleTypeSetValue` need, so this thin guard owns it instead.

use redis_module::{raw, Context, RedisString};

use crate::datatype::raw_type;
use crate::entry::{Entry, EntryRef};
use crate::error::{CacheError, CacheResult};

/// An open key, closed on drop.
pub struct OpenKey {
    raw: *mut raw::RedisModuleKey,
}

/// What an open key holds.
pub enum Content<'a> {
    /// No key.
    Empty,
    /// A cache entry.
    Entry(EntryRef<'a>),
}

impl OpenKey {
    /// Opens `name` for reading.
    pub fn read(ctx: &Context, name: &RedisString) -> OpenKey {
        OpenKey {
            raw: raw::open_key(ctx.ctx, name.inner, raw::KeyMode::READ),
        }
    }

    /// Opens `name` for reading and writing.
    pub fn write(ctx: &Context, name: &RedisString) -> OpenKey {
        OpenKey {
            raw: raw::open_key(
                ctx.ctx,
                name.inner,
                raw::KeyMode::READ | raw::KeyMode::WRITE,
            ),
        }
    }

    /// The key's content; `WRONGTYPE` when it holds anything but an entry.
    pub fn content(&self) -> CacheResult<Content<'_>> {
        if self.raw.is_null() {
            return Ok(Content::Empty);
        }
        // The common case first: a key of our type (GetType is null for an
        // empty key and for keys of other types).
        let ours = raw_type();
        // SAFETY: `raw` is an open key of the running command.
        if ours.is_null() || unsafe { call(raw::RedisModule_ModuleTypeGetType)?(self.raw) } != ours
        {
            // SAFETY: as above.
            let key_type = unsafe { call(raw::RedisModule_KeyType)?(self.raw) };
            return if key_type == raw::REDISMODULE_KEYTYPE_EMPTY as i32 {
                Ok(Content::Empty)
            } else {
                Err(CacheError::WrongType)
            };
        }
        // SAFETY: a key of our type holds a pointer made by Entry::into_raw.
        let value = unsafe { call(raw::RedisModule_ModuleTypeGetValue)?(self.raw) };
        unsafe { EntryRef::from_raw(value) }
            .map(Content::Entry)
            .ok_or(CacheError::Internal("cache entry without a value"))
    }

    /// Stores `entry` (replacing whatever was there) and sets its absolute expiry,
    /// all or nothing: if the expiry cannot be set, the key is put back as it
    /// was (the previous entry swapped back in, or a new key deleted again).
    ///
    /// An existing entry is swapped in place, as SET overwrites a string: setting
    /// a new value would delete the key and add it again (two dict operations).
    /// `replace` says the key holds an entry now (the caller looked already).
    /// With no expiry the key keeps the one it had, if any.
    pub fn store(&self, entry: Entry, expire_at_ms: Option<i64>, replace: bool) -> CacheResult<()> {
        let raw_entry = entry.into_raw();
        let mut old = std::ptr::null_mut();
        let status = if replace {
            // SAFETY: the key holds a value of our type; the new entry passes to
            // Redis and the old one comes back to us.
            unsafe {
                call(raw::RedisModule_ModuleTypeReplaceValue)?(
                    self.raw,
                    raw_type(),
                    raw_entry,
                    &mut old,
                )
            }
        } else {
            // SAFETY: key open for writing; Redis owns the entry from now on and
            // frees it through the type's free callback.
            unsafe { call(raw::RedisModule_ModuleTypeSetValue)?(self.raw, raw_type(), raw_entry) }
        };
        if status != raw::Status::Ok as i32 {
            // SAFETY: Redis did not take the entry: free it, and its charge.
            drop(unsafe { Entry::from_raw(raw_entry) });
            return Err(CacheError::Internal("could not store the entry"));
        }
        // SAFETY: Redis handed the previous value back; nothing else owns it.
        // Kept until the expiry is set, to put it back if that fails.
        let previous = unsafe { Entry::from_raw(old) };
        if let Some(at) = expire_at_ms {
            // SAFETY: the key now holds a value.
            let status = unsafe { call(raw::RedisModule_SetAbsExpire)?(self.raw, at) };
            if status != raw::Status::Ok as i32 {
                self.undo_store(previous);
                return Err(CacheError::Internal("could not set the expiry"));
            }
        }
        drop(previous);
        Ok(())
    }

    /// Takes back a store whose expiry failed: the previous entry goes back in
    /// (its expiry was never touched), or the new key goes away.
    fn undo_store(&self, previous: Option<Entry>) {
        if let Some(previous) = previous {
            let previous = previous.into_raw();
            let mut new = std::ptr::null_mut();
            // SAFETY: the key holds our new entry; the previous one goes back to
            // Redis and the new one comes back to be freed.
            let status = unsafe {
                raw::RedisModule_ModuleTypeReplaceValue
                    .map(|f| f(self.raw, raw_type(), previous, &mut new))
            };
            if status == Some(raw::Status::Ok as i32) {
                // SAFETY: handed back by Redis; nothing else owns it.
                drop(unsafe { Entry::from_raw(new) });
                return;
            }
            // SAFETY: Redis did not take it back.
            drop(unsafe { Entry::from_raw(previous) });
        }
        // A new key, or one that could not be swapped back: delete it rather
        // than leave an entry without its expiry.
        if self.delete().is_err() {
            crate::log::warning("nscache: could not remove an entry whose expiry failed");
        }
    }

    /// Milliseconds until the key expires, or None when it has no expiry.
    pub fn expire_ms(&self) -> Option<i64> {
        if self.raw.is_null() {
            return None;
        }
        // SAFETY: `raw` is an open, non-null key.
        let ms = unsafe { raw::RedisModule_GetExpire.map(|f| f(self.raw)) }?;
        (ms >= 0).then_some(ms)
    }

    /// Deletes the key.
    pub fn delete(&self) -> CacheResult<()> {
        // SAFETY: key open for writing.
        let status = unsafe { call(raw::RedisModule_DeleteKey)?(self.raw) };
        // The unlink callback left a note for an expired/evicted event that a
        // module deletion never sends.
        crate::removal::forget();
        if status != raw::Status::Ok as i32 {
            return Err(CacheError::Internal("could not delete the key"));
        }
        Ok(())
    }
}

impl Drop for OpenKey {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            raw::close_key(self.raw);
        }
    }
}

fn call<F>(f: Option<F>) -> CacheResult<F> {
    f.ok_or(CacheError::Internal("Redis module API function missing"))
}
