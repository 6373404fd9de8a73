//! Namespace-scoped access control (issue 14): Redis ACL key patterns apply to
//! the stored names (`prefix:{key}`, `prefix:key`), not to the bare `key`.
//!
//! Redis 7.0 checks a command's declared keys against the user's patterns
//! before the command runs, with the literal argument: `~tenantA:*` would be
//! matched against `1`, not against `tenantA:{1}`. So the keyed commands
//! declare `key` with a `NOT_KEY` key spec: Redis still routes on it in a
//! cluster (MOVED/ASK and `COMMAND INFO`'s first/last/step come from the same
//! range), but skips it in its own ACL check, and the module checks the stored
//! names itself with `RedisModule_ACLCheckKeyPermissions`.
//!
//! Namespace-wide commands check the name `prefix:*` (see [`namespace_name`]).
//! Denials reply `NOPERM` and are added to `ACL LOG` (reason `key`, context
//! `module`, object the stored name or `prefix:*`).
//!
//! The pure parts (what is checked, with which permission, for whom) are unit
//! tested; [`Caller`] and [`declare_key_specs`] are the thin FFI.

use std::ffi::CStr;
use std::ptr;
use std::sync::{Arc, Mutex};

use redis_module::{raw, Context, ContextFlags, RedisString, RedisValue};

use crate::caller_cache::{self, Table};
use crate::error::{CacheError, CacheResult};

/// What a command does to the entries (or the namespace) it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads values or metadata: GET, MGET, FETCH (hit), TTL, STATS, TOPKEYS.
    /// A read-only pattern (`%R~`) allows it.
    Read,
    /// Writes or removes: SET, DEL, INVALIDATE, RESETSTATS, FORGET, and the
    /// lease a FETCH hands out. Needs write permission (`~` or `%W~`/`%RW~`).
    Write,
}

impl Access {
    /// The `REDISMODULE_CMD_KEY_*` flags that make
    /// `RedisModule_ACLCheckKeyPermissions` ask for this permission (ACCESS
    /// maps to read, UPDATE to write).
    pub fn key_flags(self) -> i32 {
        let flags = match self {
            Access::Read => raw::REDISMODULE_CMD_KEY_ACCESS,
            Access::Write => raw::REDISMODULE_CMD_KEY_UPDATE,
        };
        // Both constants are small bit flags (16 and 32).
        i32::try_from(flags).unwrap_or(i32::MAX)
    }
}

/// The name a namespace-wide command checks for namespace `prefix`:
/// `prefix:*`, the literal text of the pattern that grants a whole namespace.
///
/// A user pattern allows the command when it matches this string, so
/// `prefix:*`, `pre*` and `*` do, while patterns for part of a namespace
/// (`prefix:{1}`, `prefix:user:*`) do not. No entry is ever stored under this
/// name: a stored name with a `*` after the colon always carries braces.
pub fn namespace_name(prefix: &str) -> String {
    format!("{prefix}:*")
}

/// A keyed command's declared key range: `key` arguments from index 2 up to
/// `last_key` (0: just one; -1: to the end), every argument.
#[derive(Clone, Copy, Debug)]
pub struct KeyedCommand {
    /// The command name, as registered.
    pub name: &'static CStr,
    /// `last_key` of the key spec's range, relative to index 2 (-1: the last argument).
    pub last_key: i32,
    /// `REDISMODULE_CMD_KEY_*` flags: always `NOT_KEY`, plus what the
    /// command does to the entry (shown by `COMMAND INFO`).
    pub flags: u64,
}

const NOT_KEY: u64 = raw::REDISMODULE_CMD_KEY_NOT_KEY as u64;
const RO_ACCESS: u64 = (raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS) as u64;

/// Every command whose `key` arguments route it in a cluster (SPEC 2.2), with
/// the same positions as their legacy (first, last, step) declaration.
pub const KEYED_COMMANDS: [KeyedCommand; 6] = [
    KeyedCommand {
        name: c"nscache.set",
        last_key: 0,
        flags: NOT_KEY | (raw::REDISMODULE_CMD_KEY_OW | raw::REDISMODULE_CMD_KEY_UPDATE) as u64,
    },
    KeyedCommand {
        name: c"nscache.get",
        last_key: 0,
        flags: NOT_KEY | RO_ACCESS,
    },
    KeyedCommand {
        name: c"nscache.mget",
        last_key: -1,
        flags: NOT_KEY | RO_ACCESS,
    },
    KeyedCommand {
        name: c"nscache.fetch",
        last_key: 0,
        flags: NOT_KEY | RO_ACCESS,
    },
    KeyedCommand {
        name: c"nscache.del",
        last_key: -1,
        flags: NOT_KEY | (raw::REDISMODULE_CMD_KEY_RM | raw::REDISMODULE_CMD_KEY_DELETE) as u64,
    },
    KeyedCommand {
        name: c"nscache.ttl",
        last_key: 0,
        flags: NOT_KEY | RO_ACCESS,
    },
];

/// Index of the first `key` argument of every keyed command.
pub const FIRST_KEY: i32 = 2;

/// Whose permissions apply to a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Nobody's: Redis runs it unrestricted (AOF loading, the replication
    /// link, a module call without a user).
    Unrestricted,
    /// The user attached to the client: a script runs as its caller, a
    /// module call with the `C` flag as the user it names.
    AttachedUser,
}

/// Decides [`Identity`] for a client that is not a connected one (a script's
/// client, a module's `RedisModule_Call` client, the AOF loader): commands
/// `replayed` from the AOF or the primary were checked where they ran;
/// otherwise whoever the client carries.
pub fn identity(replayed: bool, has_user: bool) -> Identity {
    if replayed || !has_user {
        Identity::Unrestricted
    } else {
        Identity::AttachedUser
    }
}

/// The user a command runs as, resolved once per command.
pub struct Caller(Who);

enum Who {
    /// Redis's own clients, which have no ACL user: everything is allowed.
    Unrestricted,
    /// A handle of the client's ACL user (shared with the caller cache).
    User(Arc<UserHandle>),
    /// The client names a user that no longer exists: nothing is allowed.
    Gone,
}

/// A handle of an ACL user from `RedisModule_GetModuleUserFromUserName`,
/// freed when the last reference goes. Freeing it frees the handle only,
/// never the user, so it is safe even after the user was deleted. The handle
/// is then never used again: the `ACL DELUSER` started a new epoch (see
/// [`caller_cache`]), except inside `EXEC`, where no filter runs between the
/// queued commands, which is why the cache is not used there at all: a
/// handle remembered earlier in the same `EXEC` would point to freed memory.
pub struct UserHandle(*mut raw::RedisModuleUser);

// SAFETY: handles are created, used and freed only by commands, which Redis
// runs one at a time under its global lock; the pointer is never touched
// concurrently.
unsafe impl Send for UserHandle {}
// SAFETY: as above.
unsafe impl Sync for UserHandle {}

impl Drop for UserHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from RedisModule_GetModuleUserFromUserName
        // and is freed once (this frees the handle, not the ACL user).
        unsafe {
            if let Some(free) = raw::RedisModule_FreeModuleUser {
                free(self.0);
            }
        }
    }
}

/// The users of connected clients, as resolved by their last command (see
/// [`caller_cache`] for when an entry is valid).
static CALLERS: Mutex<Table<Arc<UserHandle>>> = Mutex::new(Table::new());

/// The remembered user of `client` in `epoch`.
fn remembered(client: u64, epoch: u64) -> Option<Arc<UserHandle>> {
    let table = CALLERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    table.get(client, epoch)
}

/// Remembers the user of `client` for the rest of `epoch`.
fn remember(client: u64, epoch: u64, user: Arc<UserHandle>) {
    let replaced = {
        let mut table = CALLERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        table.put(client, epoch, user)
    };
    // Freed outside the lock.
    drop(replaced);
}

/// The command filter that keeps the caller cache honest: every command that
/// could change a client's user starts a new epoch (see [`caller_cache`]).
///
/// # Safety
/// Called by Redis with a valid filter context.
pub unsafe extern "C" fn on_any_command(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    // Nothing may unwind into Redis; on any doubt, forget everything.
    let keep = std::panic::catch_unwind(|| {
        // SAFETY: a valid filter context; argument 0 is the command name.
        let name =
            unsafe { raw::RedisModule_CommandFilterArgGet.map_or(ptr::null_mut(), |f| f(fctx, 0)) };
        if name.is_null() {
            return false;
        }
        let mut len = 0usize;
        // SAFETY: a valid string of the command; only read here.
        let bytes =
            unsafe { raw::RedisModule_StringPtrLen.map_or(ptr::null(), |f| f(name, &mut len)) };
        if bytes.is_null() {
            return false;
        }
        // SAFETY: Redis returned `len` readable bytes.
        caller_cache::keeps_epoch(
            unsafe { std::slice::from_raw_parts(bytes.cast::<u8>(), len) },
            caller_cache::allowed_data_commands(),
        )
    })
    .unwrap_or(false);
    if !keep {
        caller_cache::bump_epoch();
    }
}

/// Registers [`on_any_command`]; the module must not load without it, or the
/// cache could outlive a change of user. `NOSELF`: nscache's own internal call
/// (the probe of [`has_attached_user`]) changes no user, and would otherwise
/// forget every remembered user whenever a script runs an nscache command.
pub fn register_command_filter(ctx: &Context) -> Result<(), String> {
    let noself = i32::try_from(raw::REDISMODULE_CMDFILTER_NOSELF).unwrap_or(1);
    // SAFETY: called from OnLoad with its context; the callback lives as long
    // as the module.
    let filter = unsafe {
        raw::RedisModule_RegisterCommandFilter.map_or(ptr::null_mut(), |f| {
            f(ctx.ctx, Some(on_any_command), noself)
        })
    };
    if filter.is_null() {
        Err("RedisModule_RegisterCommandFilter failed".into())
    } else {
        Ok(())
    }
}

/// Decides, at load, which of [`caller_cache::DATA_COMMANDS`] keep the epoch:
/// those whose name still belongs to a plain data command, as `COMMAND INFO`
/// describes it (`rename-command` could have put `AUTH` under `get`).
/// Returns the names refused.
pub fn check_data_commands(ctx: &Context) -> Vec<String> {
    let mut allowed = 0u64;
    let mut refused = Vec::new();
    for (i, name) in caller_cache::DATA_COMMANDS.iter().enumerate() {
        let name = String::from_utf8_lossy(name).into_owned();
        let plain = match ctx.call("COMMAND", &["INFO", name.as_str()]) {
            Ok(RedisValue::Array(infos)) => match infos.first() {
                Some(RedisValue::Array(info)) => describes_data_command(info),
                _ => false,
            },
            _ => false,
        };
        if plain {
            allowed |= 1 << i;
        } else {
            refused.push(name);
        }
    }
    caller_cache::allow_data_commands(allowed);
    refused
}

/// Whether one `COMMAND INFO` entry (name, arity, flags, first, last, step,
/// categories, tips, key specs, subcommands) is a plain data command.
fn describes_data_command(info: &[RedisValue]) -> bool {
    let categories: Vec<&str> = match info.get(6) {
        Some(RedisValue::Array(items)) => items.iter().filter_map(value_str).collect(),
        _ => return false,
    };
    let has_subcommands = match info.get(9) {
        Some(RedisValue::Array(items)) => !items.is_empty(),
        None => false,
        Some(_) => true,
    };
    caller_cache::is_plain_data_command(&categories, has_subcommands)
}

/// The text of a string reply, whichever way the crate converted it.
fn value_str(value: &RedisValue) -> Option<&str> {
    match value {
        RedisValue::SimpleString(s) | RedisValue::BulkString(s) => Some(s),
        RedisValue::SimpleStringStatic(s) => Some(s),
        RedisValue::StringBuffer(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

impl Caller {
    /// The user of the running command's client.
    ///
    /// `RedisModule_GetCurrentUserName` dereferences the client's user, which
    /// Redis's own clients do not have, so it is called only when the client
    /// has one: a connected client other than the primary's replication link
    /// always does (Redis gives every connection a user, and moves the
    /// clients of a deleted user to `default`); any other client is asked with
    /// [`has_attached_user`] first.
    ///
    /// A connected client's user is remembered for its next commands
    /// ([`caller_cache`]), except inside `MULTI`/`EXEC`: no filter runs between
    /// the queued commands, so a queued `AUTH` or `ACL DELUSER` would go
    /// unnoticed until the `EXEC` ends.
    pub fn current(ctx: &Context) -> CacheResult<Caller> {
        let (Some(client_id), Some(client_info)) = (
            // SAFETY: reading initialised API pointers.
            unsafe { raw::RedisModule_GetClientId },
            unsafe { raw::RedisModule_GetClientInfoById },
        ) else {
            return Err(CacheError::Internal("the ACL module API is missing"));
        };
        // SAFETY: a command's context.
        let client = unsafe { client_id(ctx.ctx) };
        let flags = ctx.get_flags();
        let replayed =
            flags.contains(ContextFlags::LOADING) || flags.contains(ContextFlags::REPLICATED);
        // Redis runs a module's RedisModule_Call (and EXEC's queued commands)
        // on clients with DENY_BLOCKING. A module call's client comes from a
        // pool and may carry a connected client's id: a thread-safe context
        // of a blocked client copies the id into it, and the pool never
        // resets it. Its id proves nothing, so it is neither remembered nor
        // taken for that connection.
        let borrowed = flags.contains(ContextFlags::DENY_BLOCKING);
        let cacheable = caller_cache::enabled()
            && !replayed
            && !borrowed
            && !flags.contains(ContextFlags::MULTI);
        let epoch = caller_cache::epoch();
        if cacheable {
            if let Some(user) = remembered(client, epoch) {
                return Ok(Caller(Who::User(user)));
            }
        }
        // SAFETY: a null info pointer only asks whether the client is
        // connected (no allocation). Only connected clients running their own
        // command are remembered (a script's or a module call's client runs
        // as whoever calls it).
        let connected = !borrowed
            && unsafe { client_info(ptr::null_mut(), client) } == raw::REDISMODULE_OK as i32;
        let decision = if connected && !replayed {
            Identity::AttachedUser
        } else {
            // The probe only when needed: a replayed command has no user to find.
            identity(replayed, replayed || has_attached_user(ctx))
        };
        match decision {
            Identity::Unrestricted => Ok(Caller(Who::Unrestricted)),
            Identity::AttachedUser => {
                // SAFETY: the client has a user (see above).
                let name = unsafe {
                    raw::RedisModule_GetCurrentUserName.map_or(ptr::null_mut(), |f| f(ctx.ctx))
                };
                if name.is_null() {
                    return Err(CacheError::Internal("the current ACL user is unknown"));
                }
                let caller = Self::named(ctx, name)?;
                if let (true, true, Who::User(user)) = (connected, cacheable, &caller.0) {
                    remember(client, epoch, Arc::clone(user));
                }
                Ok(caller)
            }
        }
    }

    /// Looks up the ACL user called `name` (a string this takes and frees).
    fn named(ctx: &Context, name: *mut raw::RedisModuleString) -> CacheResult<Caller> {
        let name = RedisString::from_redis_module_string(ctx.ctx, name);
        // SAFETY: a valid string for the call; the handle is freed in Drop.
        let user = unsafe {
            raw::RedisModule_GetModuleUserFromUserName.map_or(ptr::null_mut(), |f| f(name.inner))
        };
        Ok(Caller(if user.is_null() {
            // The client's user was deleted under it: refuse, as Redis would.
            Who::Gone
        } else {
            Who::User(Arc::new(UserHandle(user)))
        }))
    }

    /// Whether the user's key patterns allow `access` to `name`.
    pub fn allows(&self, name: &RedisString, access: Access) -> bool {
        let user = match &self.0 {
            Who::Unrestricted => return true,
            Who::Gone => return false,
            Who::User(user) => user.0,
        };
        // SAFETY: user and name are valid for the call.
        let status = unsafe {
            raw::RedisModule_ACLCheckKeyPermissions.map(|f| f(user, name.inner, access.key_flags()))
        };
        status == Some(raw::REDISMODULE_OK as i32)
    }

    /// Whether every check passes without asking Redis.
    fn unrestricted(&self) -> bool {
        matches!(self.0, Who::Unrestricted)
    }

    /// Checks `access` to `name`; a denial is logged in `ACL LOG` and
    /// becomes the NOPERM error naming namespace `prefix`.
    pub fn require(
        &self,
        ctx: &Context,
        prefix: &str,
        name: &RedisString,
        access: Access,
    ) -> CacheResult<()> {
        if self.allows(name, access) {
            Ok(())
        } else {
            Err(self.deny(ctx, prefix, name))
        }
    }

    /// Logs a denial of `name` in `ACL LOG` and returns the NOPERM error.
    pub fn deny(&self, ctx: &Context, prefix: &str, name: &RedisString) -> CacheError {
        if let Who::User(user) = &self.0 {
            let user = user.0;
            // SAFETY: all pointers valid for the call; Redis copies the name.
            unsafe {
                if let Some(log) = raw::RedisModule_ACLAddLogEntry {
                    log(
                        ctx.ctx,
                        user,
                        name.inner,
                        raw::RedisModuleACLLogEntryReason_REDISMODULE_ACL_LOG_KEY,
                    );
                }
            }
        }
        CacheError::NoPermission(prefix.to_string())
    }

    /// Checks `access` to the whole namespace `prefix` ([`namespace_name`]).
    pub fn require_namespace(
        &self,
        ctx: &Context,
        prefix: &str,
        access: Access,
    ) -> CacheResult<()> {
        if self.unrestricted() {
            return Ok(());
        }
        let name = RedisString::create_from_slice(ctx.ctx, namespace_name(prefix).as_bytes());
        self.require(ctx, prefix, &name, access)
    }

    /// Whether `access` to the whole namespace `prefix` is allowed (nothing logged).
    pub fn allows_namespace(&self, ctx: &Context, prefix: &str, access: Access) -> bool {
        if self.unrestricted() {
            return true;
        }
        let name = RedisString::create_from_slice(ctx.ctx, namespace_name(prefix).as_bytes());
        self.allows(&name, access)
    }
}

/// Checks `access` to every stored name of a keyed command (before anything
/// is read or written, so a refused call changes nothing).
pub fn require_keys<'a>(
    ctx: &Context,
    prefix: &str,
    names: impl IntoIterator<Item = &'a RedisString>,
    access: Access,
) -> CacheResult<()> {
    let caller = Caller::current(ctx)?;
    for name in names {
        caller.require(ctx, prefix, name, access)?;
    }
    Ok(())
}

/// Checks `access` to the whole namespace `prefix` for the running command.
pub fn require_namespace(ctx: &Context, prefix: &str, access: Access) -> CacheResult<()> {
    Caller::current(ctx)?.require_namespace(ctx, prefix, access)
}

/// Whether the running command's client has an ACL user, asked without
/// touching it: `RedisModule_Call` with the `C` flag (run as the context's
/// user) fails with ENOTSUP before anything else when there is none, and a
/// command name no command can have (`|` is not allowed in names) then stops
/// it with ENOENT, before any ACL check, log entry or side effect.
fn has_attached_user(ctx: &Context) -> bool {
    // SAFETY: a valid context and C strings; no arguments follow the format.
    let reply = unsafe {
        raw::RedisModule_Call.map_or(ptr::null_mut(), |call| {
            call(ctx.ctx, c"nscache|no-such-command".as_ptr(), c"C".as_ptr())
        })
    };
    if !reply.is_null() {
        // Cannot happen (no such command); free it and assume a user.
        // SAFETY: a reply of RedisModule_Call, freed once.
        unsafe {
            if let Some(free) = raw::RedisModule_FreeCallReply {
                free(reply);
            }
        }
        return true;
    }
    std::io::Error::last_os_error().kind() != std::io::ErrorKind::Unsupported
}

/// Declares the `key` arguments of [`KEYED_COMMANDS`] with `NOT_KEY` key
/// specs (`RedisModule_SetCommandInfo`), replacing the (first, last, step)
/// declaration they were created with. Fails when Redis refuses, so the
/// module does not load with patterns checked against the wrong names.
pub fn declare_key_specs(ctx: &Context) -> Result<(), String> {
    let (Some(get_command), Some(set_info)) = (
        // SAFETY: reading initialised API pointers.
        unsafe { raw::RedisModule_GetCommand },
        unsafe { raw::RedisModule_SetCommandInfo },
    ) else {
        return Err("RedisModule_SetCommandInfo is missing (Redis 7.0 or later needed)".into());
    };
    let version = raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
    };
    for command in KEYED_COMMANDS {
        // SAFETY: a valid context and C string.
        let handle = unsafe { get_command(ctx.ctx, command.name.as_ptr()) };
        if handle.is_null() {
            return Err(format!("{command:?} is not registered"));
        }
        // The array ends with an all-zero spec (begin_search_type INVALID).
        let mut specs = [key_spec(command), unsafe { std::mem::zeroed() }];
        // SAFETY: an all-zero RedisModuleCommandInfo is "nothing set".
        let mut info: raw::RedisModuleCommandInfo = unsafe { std::mem::zeroed() };
        info.version = &version;
        info.key_specs = specs.as_mut_ptr();
        // SAFETY: info and specs outlive the call; Redis copies what it keeps.
        if unsafe { set_info(handle, &info) } != raw::REDISMODULE_OK as i32 {
            return Err(format!("Redis refused the key spec of {command:?}"));
        }
    }
    Ok(())
}

/// The key spec of `command`: a range from [`FIRST_KEY`].
fn key_spec(command: KeyedCommand) -> raw::RedisModuleCommandKeySpec {
    // SAFETY: an all-zero key spec is valid C data (null notes, zero fields).
    let mut spec: raw::RedisModuleCommandKeySpec = unsafe { std::mem::zeroed() };
    spec.flags = command.flags;
    spec.begin_search_type = raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX;
    spec.bs.index.pos = FIRST_KEY;
    spec.find_keys_type = raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE;
    spec.fk.range.lastkey = command.last_key;
    spec.fk.range.keystep = 1;
    spec.fk.range.limit = 0;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_name_is_the_pattern_that_grants_it() {
        assert_eq!(namespace_name("tenantA"), "tenantA:*");
        // No stored name can equal it: wrapped names carry braces.
        let mut stored = Vec::new();
        crate::keyname::stored_name_into(
            "tenantA",
            b"*",
            crate::keyname::KeyForm::Wrapped,
            &mut stored,
        );
        assert_ne!(stored, namespace_name("tenantA").as_bytes());
    }

    #[test]
    fn read_and_write_ask_for_different_acl_permissions() {
        assert_eq!(Access::Read.key_flags(), 16);
        assert_eq!(Access::Write.key_flags(), 32);
        let allowed = (raw::REDISMODULE_CMD_KEY_ACCESS
            | raw::REDISMODULE_CMD_KEY_INSERT
            | raw::REDISMODULE_CMD_KEY_DELETE
            | raw::REDISMODULE_CMD_KEY_UPDATE) as i32;
        for access in [Access::Read, Access::Write] {
            // RedisModule_ACLCheckKeyPermissions refuses any other flag.
            assert_eq!(access.key_flags() & !allowed, 0);
        }
    }

    #[test]
    fn every_keyed_command_is_routed_but_not_checked_by_redis() {
        let kind = (raw::REDISMODULE_CMD_KEY_RO
            | raw::REDISMODULE_CMD_KEY_RW
            | raw::REDISMODULE_CMD_KEY_OW
            | raw::REDISMODULE_CMD_KEY_RM) as u64;
        for command in KEYED_COMMANDS {
            assert_ne!(command.flags & NOT_KEY, 0, "{command:?}");
            // Redis requires exactly one of RO, RW, OW, RM.
            assert_eq!((command.flags & kind).count_ones(), 1, "{command:?}");
            let spec = key_spec(command);
            // SAFETY: reading the union members just written.
            let (pos, last, step) = unsafe {
                (
                    spec.bs.index.pos,
                    spec.fk.range.lastkey,
                    spec.fk.range.keystep,
                )
            };
            assert_eq!((pos, step), (2, 1), "{command:?}");
            assert!(last == 0 || last == -1, "{command:?}");
        }
        // The multi-key commands reach the last argument, the others one key.
        let multi: Vec<&CStr> = KEYED_COMMANDS
            .iter()
            .filter(|c| c.last_key == -1)
            .map(|c| c.name)
            .collect();
        assert_eq!(multi, [c"nscache.mget", c"nscache.del"]);
    }

    #[test]
    fn replayed_commands_and_userless_clients_are_unrestricted() {
        assert_eq!(identity(true, true), Identity::Unrestricted);
        assert_eq!(identity(false, false), Identity::Unrestricted);
        // A script runs as its caller.
        assert_eq!(identity(false, true), Identity::AttachedUser);
    }
}
