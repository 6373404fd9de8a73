//! nscache: a namespaced, self-monitoring cache as a Redis module (SPEC 2).
//!
//! The logic modules (`args`, `entry`, `keyname`, `namespace`) are plain Rust with
//! unit tests; `commands`, `datatype` and `openkey` are the thin FFI layer.

pub mod args;
pub mod commands;
pub mod datatype;
pub mod entry;
pub mod error;
pub mod keyname;
pub mod log;
pub mod namespace;
pub mod openkey;

#[cfg(not(test))]
mod module {
    use redis_module::{redis_module, Context, RedisResult, RedisString, Status};

    use crate::commands::{self, guarded};
    use crate::datatype::ENTRY_TYPE;

    fn init(_ctx: &Context, _args: &[RedisString]) -> Status {
        // The default hook prints to stderr and may capture a backtrace (which
        // allocates through Redis's allocator); the Redis log is where operators look.
        std::panic::set_hook(Box::new(|info| {
            crate::log::warning(&format!("nscache: panic caught: {info}"));
        }));
        Status::Ok
    }

    fn cmd_set(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
        guarded(ctx, args, commands::set)
    }
    fn cmd_get(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
        guarded(ctx, args, commands::get)
    }
    fn cmd_del(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
        guarded(ctx, args, commands::del)
    }
    fn cmd_stats(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
        guarded(ctx, args, commands::stats)
    }
    fn cmd_resetstats(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
        guarded(ctx, args, commands::resetstats)
    }
    fn cmd_keyname(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
        guarded(ctx, args, commands::keyname)
    }

    redis_module! {
        name: "nscache",
        version: 1,
        allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
        data_types: [ENTRY_TYPE],
        init: init,
        commands: [
            // `key` (argument 2) is the declared key: its slot equals the stored
            // name's slot, so cluster clients route on it (SPEC 2.2).
            ["nscache.set", cmd_set, "write deny-oom", 2, 2, 1, ""],
            ["nscache.get", cmd_get, "readonly fast", 2, 2, 1, ""],
            ["nscache.del", cmd_del, "write", 2, -1, 1, ""],
            ["nscache.stats", cmd_stats, "readonly", 0, 0, 0, ""],
            ["nscache.resetstats", cmd_resetstats, "fast", 0, 0, 0, ""],
            ["nscache.keyname", cmd_keyname, "readonly fast", 0, 0, 0, ""],
        ],
    }
}
