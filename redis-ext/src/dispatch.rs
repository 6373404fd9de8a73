//! The command entry point: Redis's argument vector read in place, every
//! handler run inside a panic guard, errors escaped into replies.
//!
//! The redis-module crate's command wrapper builds a `Vec<RedisString>` per
//! call, retaining every argument and releasing it again afterwards: an
//! allocation and two module API calls per argument on every read. Commands
//! are registered here with `RedisModule_CreateCommand` directly instead, and
//! handlers borrow the arguments as byte slices ([`Args`]).

use std::ffi::{c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::{raw, Context, RedisValue};

use crate::error::CacheResult;

/// The arguments of the running command, `argv[0]` being its name, borrowed
/// from Redis for the duration of the call.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    argv: &'a [*mut raw::RedisModuleString],
}

impl<'a> Args<'a> {
    /// Borrows Redis's argument vector.
    ///
    /// # Safety
    /// `argv` must point to `argc` valid strings that stay valid and unchanged
    /// for `'a`: a command callback's own `argv`, used within the callback.
    pub unsafe fn from_raw(argv: *mut *mut raw::RedisModuleString, argc: c_int) -> Args<'a> {
        let len = usize::try_from(argc).unwrap_or(0);
        let argv = if argv.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `argc` valid pointers at `argv`.
            unsafe { std::slice::from_raw_parts(argv, len) }
        };
        Args { argv }
    }

    /// Number of arguments, the command name included.
    pub fn len(&self) -> usize {
        self.argv.len()
    }

    /// Whether there are none at all (never true for a command call).
    pub fn is_empty(&self) -> bool {
        self.argv.is_empty()
    }

    /// The bytes of argument `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        self.argv.get(i).map(|&s| string_bytes(s))
    }

    /// The bytes of argument `i`. Callers check the arity first; an index out
    /// of range panics, which the dispatch guard turns into an error reply.
    pub fn at(&self, i: usize) -> &'a [u8] {
        string_bytes(self.argv[i])
    }

    /// Argument `i` as Redis's string (for replication and key names); same
    /// contract as [`Args::at`].
    pub fn raw(&self, i: usize) -> *mut raw::RedisModuleString {
        self.argv[i]
    }

    /// The arguments from `i` on (empty when there are fewer).
    pub fn from(&self, i: usize) -> Args<'a> {
        Args {
            argv: self.argv.get(i..).unwrap_or(&[]),
        }
    }

    /// The bytes of every argument, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + 'a {
        let argv = self.argv;
        argv.iter().map(|&s| string_bytes(s))
    }
}

/// The bytes of a Redis string, borrowed for as long as the string lives.
fn string_bytes<'a>(s: *mut raw::RedisModuleString) -> &'a [u8] {
    let mut len = 0usize;
    // SAFETY: `s` is a valid string of the running command (see Args::from_raw);
    // StringPtrLen only reads it.
    let ptr = match unsafe { raw::RedisModule_StringPtrLen } {
        Some(ptr_len) => unsafe { ptr_len(s, &mut len) },
        None => std::ptr::null(),
    };
    if ptr.is_null() {
        return &[];
    }
    // SAFETY: Redis returned `len` readable bytes owned by the string.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

/// A command handler: parse, act, and either return the reply or write it
/// itself and return [`RedisValue::NoReply`].
pub type Handler = fn(&Context, Args<'_>) -> CacheResult<RedisValue>;

/// Runs `handler` for a command callback so that a panic becomes an error
/// reply instead of aborting redis-server (an unwind into C aborts).
///
/// Error replies are written here, not by the crate: its conversion prefixes
/// every message with `ERR` and turns text into a C string with `unwrap()`,
/// which aborts the server on a NUL byte. Messages are escaped to printable
/// ASCII first, so no client-supplied byte reaches the wire raw.
///
/// # Safety
/// The arguments of a command callback, passed on unchanged from Redis.
pub unsafe fn guarded(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
    handler: Handler,
) -> c_int {
    let context = Context::new(ctx);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Redis's argv of this very callback.
        let args = unsafe { Args::from_raw(argv, argc) };
        match handler(&context, args) {
            // The crate would copy "OK" into a fresh C string on every write.
            Ok(RedisValue::SimpleStringStatic("OK")) => {
                raw::reply_with_simple_string(ctx, c"OK".as_ptr());
                Ok(())
            }
            Ok(value) => {
                // Inside the guard: the crate's reply conversions may panic.
                context.reply(Ok(value));
                Ok(())
            }
            Err(err) => Err(err),
        }
    }));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(err)) => reply_error(ctx, &err.to_string()),
        Err(_) => reply_error(
            ctx,
            "ERR nscache internal error (a bug; details in the server log)",
        ),
    }
    raw::Status::Ok as c_int
}

/// Replies with an error, escaped to printable ASCII.
fn reply_error(ctx: *mut raw::RedisModuleCtx, message: &str) {
    // The guard's last step: nothing here may unwind into C.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let escaped = crate::args::ascii_escape(message.as_bytes());
        // ascii_escape never yields NUL, so this cannot fail; keep a fallback anyway.
        let text =
            std::ffi::CString::new(escaped).unwrap_or_else(|_| c"ERR nscache error".to_owned());
        // SAFETY: a valid C string for the duration of the call.
        unsafe {
            if let Some(reply) = raw::RedisModule_ReplyWithError {
                reply(ctx, text.as_ptr());
            }
        }
    }));
}

/// One entry of the command table.
pub struct Command {
    /// The command's name.
    pub name: &'static CStr,
    /// Its callback: a `guarded` call of its handler.
    pub callback: unsafe extern "C" fn(
        *mut raw::RedisModuleCtx,
        *mut *mut raw::RedisModuleString,
        c_int,
    ) -> c_int,
    /// Command flags, as `RedisModule_CreateCommand` takes them.
    pub flags: &'static CStr,
    /// First key argument (0: keyless).
    pub first_key: c_int,
    /// Last key argument (-1: the last argument).
    pub last_key: c_int,
    /// Step between key arguments.
    pub key_step: c_int,
}

/// Registers every command of `table`; the name of the first Redis refused
/// (at module load, the load then fails).
///
/// # Safety
/// `ctx` is the context of the module's OnLoad.
pub unsafe fn register(
    ctx: *mut raw::RedisModuleCtx,
    table: &[Command],
) -> Result<(), &'static CStr> {
    // SAFETY: called from the module's OnLoad with its context.
    let Some(create) = (unsafe { raw::RedisModule_CreateCommand }) else {
        return Err(c"(RedisModule_CreateCommand missing)");
    };
    for command in table {
        // SAFETY: NUL-terminated static strings and a callback that lives as
        // long as the module.
        let status = unsafe {
            create(
                ctx,
                command.name.as_ptr(),
                Some(command.callback),
                command.flags.as_ptr(),
                command.first_key,
                command.last_key,
                command.key_step,
            )
        };
        if status != raw::Status::Ok as c_int {
            return Err(command.name);
        }
    }
    Ok(())
}

/// Defines one `extern "C"` command callback per handler, each a
/// [`guarded`] call (a callback has no user data pointer to say which
/// handler it is).
#[macro_export]
macro_rules! command_callbacks {
    ($($callback:ident => $handler:path),* $(,)?) => {$(
        unsafe extern "C" fn $callback(
            ctx: *mut redis_module::raw::RedisModuleCtx,
            argv: *mut *mut redis_module::raw::RedisModuleString,
            argc: std::ffi::c_int,
        ) -> std::ffi::c_int {
            // SAFETY: Redis's own arguments of this callback.
            unsafe { $crate::dispatch::guarded(ctx, argv, argc, $handler) }
        }
    )*};
}
