//! Remembers, per connected client, the ACL user its last nscache command
//! resolved, so the next one skips the lookup (issue 8).
//!
//! Resolving a client's user costs three module API calls, two allocations
//! and two radix-tree lookups on every command (`GetClientInfoById`,
//! `GetCurrentUserName`, `GetModuleUserFromUserName`): about 1,100
//! instructions, a quarter of a plain `GET`. What a client's user is, and
//! whether the user still exists, can only change through a command: `AUTH`,
//! `HELLO ... AUTH`, `RESET`, `ACL SETUSER/DELUSER/LOAD`, `EXEC` of queued
//! ones, or another module's command that authenticates its caller. So an
//! entry is valid for one *epoch*, and a command filter starts a new epoch on
//! every command other than nscache's own and a short list of core data
//! commands checked at load ([`keeps_epoch`]): any other command, from any
//! client, forgets every entry at once.
//!
//! Only the user *handle* is remembered, never a decision: each key is still
//! checked against the user's current patterns (an `ACL SETUSER` edits the
//! user in place, and starts a new epoch anyway).
//!
//! The table is direct-mapped on the client id, so its memory is fixed
//! ([`SLOTS`] entries) whatever the number of clients: two clients on the same
//! slot take turns, each falling back to the full lookup. Client ids are never
//! reused by Redis, so an entry of a disconnected client is never matched
//! again; it is dropped when its slot is taken.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Number of slots of the table (clients beyond it share slots).
pub const SLOTS: usize = 4096;

/// Whether users are remembered at all: only on servers older than 7.2, where
/// every module call's client carries DENY_BLOCKING (from 7.2 on, a call
/// with the `K` flag does not, and its pooled client may carry a connected
/// client's id; see `acl::Caller::current`). Decided at load.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether remembered users may be used (see [`ENABLED`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns remembering on or off, from the server's version (`0x00MMmmpp`).
pub fn enable_for_server_version(version: i32) {
    ENABLED.store(supports(version), Ordering::Relaxed);
}

/// Whether a server of `version` (`0x00MMmmpp`) allows remembering users.
pub fn supports(version: i32) -> bool {
    (0x00_07_00_00..0x00_07_02_00).contains(&version)
}

/// The current epoch: entries stored under an older one are ignored.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// The epoch entries are stored and looked up under now.
pub fn epoch() -> u64 {
    EPOCH.load(Ordering::Relaxed)
}

/// Starts a new epoch: every entry stored so far is ignored from now on.
pub fn bump_epoch() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// Whether a command leaves the epoch alone: nscache's own commands
/// ([`NSCACHE_COMMANDS`], exactly) and those of the core data commands of
/// [`DATA_COMMANDS`] that `allowed` has the bit of (see
/// [`is_plain_data_command`]), in any case. None of them can authenticate a
/// client or change, create or delete a user; every other command (`ACL`,
/// `AUTH`, `HELLO`, `RESET`, `EXEC`, `EVAL`, `CONFIG`, any other module's
/// command, an unknown name) starts a new epoch.
pub fn keeps_epoch(name: &[u8], allowed: u64) -> bool {
    // Runs for every command the server executes: no copy, no allocation;
    // a name of up to 8 bytes is compared as one lower-cased word.
    if let Some(word) = lower_word(name) {
        return DATA_WORDS
            .iter()
            .position(|&data| data == word)
            .is_some_and(|i| allowed & (1 << i) != 0);
    }
    let (Some(head), Some(rest)) = (name.get(..8), name.get(8..)) else {
        return false;
    };
    lower_word(head) == Some(NSCACHE_PREFIX)
        && NSCACHE_COMMANDS
            .iter()
            .any(|command| command[8..].eq_ignore_ascii_case(rest))
}

/// `nscache.` as a lower-cased word.
const NSCACHE_PREFIX: u64 = word_of(b"nscache.");

/// [`DATA_COMMANDS`] as lower-cased words, in the same order.
const DATA_WORDS: [u64; DATA_COMMANDS.len()] = {
    let mut words = [0u64; DATA_COMMANDS.len()];
    let mut i = 0;
    while i < DATA_COMMANDS.len() {
        words[i] = word_of(DATA_COMMANDS[i]);
        i += 1;
    }
    words
};

/// Up to 8 bytes, lower-cased, as one little-endian word (0-padded).
const fn word_of(bytes: &[u8]) -> u64 {
    let mut word = 0u64;
    let mut i = 0;
    while i < bytes.len() && i < 8 {
        word |= (bytes[i].to_ascii_lowercase() as u64) << (8 * i);
        i += 1;
    }
    word
}

/// [`word_of`] for names of 1 to 8 bytes; `None` for longer (or empty) ones.
fn lower_word(name: &[u8]) -> Option<u64> {
    (!name.is_empty() && name.len() <= 8).then(|| word_of(name))
}

/// nscache's commands (a command of another module whose name merely starts
/// with `nscache.` is not one of them).
pub const NSCACHE_COMMANDS: [&[u8]; 13] = [
    b"nscache.set",
    b"nscache.get",
    b"nscache.mget",
    b"nscache.fetch",
    b"nscache.del",
    b"nscache.ttl",
    b"nscache.invalidate",
    b"nscache.stats",
    b"nscache.topkeys",
    b"nscache.resetstats",
    b"nscache.forget",
    b"nscache.keyname",
    b"nscache.restoreentry",
];

/// Core commands that only read or write data (at most 8 bytes long), so a
/// workload mixing them with nscache commands keeps its remembered users.
/// Scripts, transactions and connection commands are left out on purpose
/// (`EXEC` may run a queued `AUTH`), as is every administrative command. At
/// load, each name is kept only if the command Redis has under it still is a
/// data command (`rename-command` could have put `AUTH` there).
pub const DATA_COMMANDS: [&[u8]; 39] = [
    b"get",
    b"set",
    b"setex",
    b"psetex",
    b"setnx",
    b"getex",
    b"getdel",
    b"mget",
    b"mset",
    b"del",
    b"unlink",
    b"exists",
    b"expire",
    b"pexpire",
    b"ttl",
    b"pttl",
    b"incr",
    b"incrby",
    b"decr",
    b"decrby",
    b"hget",
    b"hset",
    b"hmget",
    b"hgetall",
    b"hdel",
    b"hincrby",
    b"lpush",
    b"rpush",
    b"lpop",
    b"rpop",
    b"lrange",
    b"sadd",
    b"srem",
    b"smembers",
    b"zadd",
    b"zrange",
    b"zrem",
    b"zincrby",
    b"publish",
];

/// Whether what `COMMAND INFO` says of a command makes it a plain data
/// command: no subcommands, in `@read`, `@write` or `@pubsub`, and in none of
/// the categories of commands that touch connections, users, scripts,
/// transactions or the server (`@connection`, `@admin`, `@dangerous`,
/// `@scripting`, `@transaction`).
pub fn is_plain_data_command(categories: &[&str], has_subcommands: bool) -> bool {
    const REFUSED: [&str; 5] = [
        "@connection",
        "@admin",
        "@dangerous",
        "@scripting",
        "@transaction",
    ];
    const DATA: [&str; 3] = ["@read", "@write", "@pubsub"];
    !has_subcommands
        && categories.iter().any(|c| DATA.contains(c))
        && !categories.iter().any(|c| REFUSED.contains(c))
}

/// The bits of [`DATA_COMMANDS`] checked at load (none before: every command
/// starts a new epoch until then).
static DATA_ALLOWED: AtomicU64 = AtomicU64::new(0);

/// The data commands that keep the epoch, as checked at load.
pub fn allowed_data_commands() -> u64 {
    DATA_ALLOWED.load(Ordering::Relaxed)
}

/// Sets which data commands keep the epoch (bit `i`: `DATA_COMMANDS[i]`).
pub fn allow_data_commands(mask: u64) {
    DATA_ALLOWED.store(mask, Ordering::Relaxed);
}

/// One remembered client.
struct Slot<H> {
    client: u64,
    epoch: u64,
    handle: H,
}

/// A direct-mapped table from client id to a handle `H`, valid for one epoch.
pub struct Table<H> {
    slots: Vec<Option<Slot<H>>>,
}

impl<H: Clone> Table<H> {
    /// An empty table; its slots are allocated by the first [`Table::put`].
    pub const fn new() -> Table<H> {
        Table { slots: Vec::new() }
    }

    /// The handle stored for `client` in `epoch`, if it is there.
    pub fn get(&self, client: u64, epoch: u64) -> Option<H> {
        match self.slots.get(slot_of(client)) {
            Some(Some(slot)) if slot.client == client && slot.epoch == epoch => {
                Some(slot.handle.clone())
            }
            _ => None,
        }
    }

    /// Stores `handle` for `client` in `epoch`; returns the entry it replaced
    /// (another client's, or an older epoch's), for the caller to drop.
    pub fn put(&mut self, client: u64, epoch: u64, handle: H) -> Option<H> {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        let slot = self.slots.get_mut(slot_of(client))?;
        slot.replace(Slot {
            client,
            epoch,
            handle,
        })
        .map(|old| old.handle)
    }

    /// Number of entries stored (of any epoch).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<H: Clone> Default for Table<H> {
    fn default() -> Self {
        Table::new()
    }
}

/// The slot of a client id (ids are sequential, so the low bits spread them).
fn slot_of(client: u64) -> usize {
    // SLOTS is a power of two; the remainder fits in usize.
    usize::try_from(client % SLOTS as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_found_only_by_its_client_in_its_epoch() {
        let mut table = Table::new();
        assert_eq!(table.get(7, 1), None);
        assert_eq!(table.put(7, 1, "alice"), None);
        assert_eq!(table.get(7, 1), Some("alice"));
        // Another epoch: the user may have changed or been deleted.
        assert_eq!(table.get(7, 2), None);
        // Another client on the same slot is not this one.
        assert_eq!(table.get(7 + SLOTS as u64, 1), None);
    }

    #[test]
    fn a_client_on_a_taken_slot_replaces_the_entry_and_hands_it_back() {
        let mut table = Table::new();
        table.put(3, 1, "alice");
        assert_eq!(table.put(3 + SLOTS as u64, 1, "bob"), Some("alice"));
        assert_eq!(table.get(3, 1), None);
        assert_eq!(table.get(3 + SLOTS as u64, 1), Some("bob"));
        // A newer epoch's entry replaces an older one of the same client.
        assert_eq!(table.put(3 + SLOTS as u64, 2, "carol"), Some("bob"));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn memory_is_bounded_whatever_the_number_of_clients() {
        let mut table = Table::new();
        for client in 0..(10 * SLOTS as u64) {
            table.put(client, 1, client);
        }
        assert_eq!(table.len(), SLOTS);
        // The last client of each slot is the one remembered.
        let last = 10 * SLOTS as u64 - 1;
        assert_eq!(table.get(last, 1), Some(last));
        assert_eq!(table.get(last - SLOTS as u64, 1), None);
    }

    #[test]
    fn users_are_remembered_on_redis_7_0_and_7_1_only() {
        assert!(supports(0x00_07_00_0f)); // 7.0.15
        assert!(supports(0x00_07_01_ff));
        assert!(!supports(0x00_07_02_00)); // RedisModule_Call's K flag
        assert!(!supports(0x00_08_00_00));
        assert!(!supports(0x00_06_02_00));
    }

    #[test]
    fn a_bump_moves_to_a_new_epoch() {
        let before = epoch();
        bump_epoch();
        assert!(epoch() > before);
    }

    const ALL: u64 = (1 << DATA_COMMANDS.len()) - 1;

    #[test]
    fn commands_that_can_change_a_user_start_a_new_epoch() {
        for name in [
            &b"nscache.get"[..],
            b"NSCACHE.FETCH",
            b"NsCache.Set",
            b"GET",
            b"hset",
        ] {
            assert!(keeps_epoch(name, ALL), "{name:?}");
        }
        for name in [
            &b"acl"[..],
            b"AUTH",
            b"hello",
            b"RESET",
            b"exec",
            b"eval",
            b"evalsha",
            b"fcall",
            b"client",
            b"config",
            b"module",
            b"ping",
            b"select",
            b"nscache.",
            b"nscache",
            b"nscachexget",
            b"nscache.other_module_auth",
            b"nscache|no-such-command",
            b"mymodule.auth",
            b"getxxxxxx",
            b"a name longer than the buffer",
            b"",
        ] {
            assert!(!keeps_epoch(name, ALL), "{name:?}");
        }
    }

    #[test]
    fn a_data_command_not_checked_at_load_starts_a_new_epoch() {
        let get = DATA_COMMANDS
            .iter()
            .position(|&c| c == b"get")
            .unwrap_or(usize::MAX);
        assert!(!keeps_epoch(b"get", 0));
        assert!(!keeps_epoch(b"get", ALL & !(1 << get)));
        assert!(keeps_epoch(b"get", 1 << get));
        assert!(!keeps_epoch(b"set", 1 << get));
        // nscache's own commands need no check.
        assert!(keeps_epoch(b"nscache.get", 0));
    }

    #[test]
    fn only_plain_data_commands_pass_the_load_check() {
        // What Redis 7.0 says of GET, SET, PUBLISH.
        assert!(is_plain_data_command(&["@read", "@string", "@fast"], false));
        assert!(is_plain_data_command(
            &["@write", "@string", "@slow"],
            false
        ));
        assert!(is_plain_data_command(&["@pubsub", "@fast"], false));
        // AUTH, SELECT, EXEC, EVAL, CONFIG, FLUSHALL renamed to a data name.
        assert!(!is_plain_data_command(&["@fast", "@connection"], false));
        assert!(!is_plain_data_command(&["@fast", "@connection"], false));
        assert!(!is_plain_data_command(&["@slow", "@transaction"], false));
        assert!(!is_plain_data_command(&["@slow", "@scripting"], false));
        assert!(!is_plain_data_command(
            &["@admin", "@slow", "@dangerous"],
            false
        ));
        assert!(!is_plain_data_command(
            &["@keyspace", "@write", "@slow", "@dangerous"],
            false
        ));
        // A container (ACL, CLIENT, ...) says little of its subcommands.
        assert!(!is_plain_data_command(&["@slow"], true));
        assert!(!is_plain_data_command(&["@write"], true));
        // Nothing known: refused.
        assert!(!is_plain_data_command(&[], false));
    }

    #[test]
    fn the_command_lists_are_lower_case_and_fit_their_buffers() {
        assert!(DATA_COMMANDS.len() <= 64, "one bit each in a u64");
        for name in DATA_COMMANDS {
            assert!(name.len() <= 8 && !name.is_empty(), "{name:?}");
            assert!(name.iter().all(u8::is_ascii_lowercase), "{name:?}");
        }
        for name in NSCACHE_COMMANDS {
            assert!(name.len() > 8 && name.len() <= 20, "{name:?}");
            assert!(name.starts_with(b"nscache."), "{name:?}");
            assert!(!name.iter().any(u8::is_ascii_uppercase), "{name:?}");
        }
    }
}
