//! nscache: a namespaced, self-monitoring cache as a Redis module (SPEC 2).
//!
//! Logic is plain Rust with unit tests: `acl` (its pure half), `args`,
//! `caller_cache`, `clock`, `entry`, `guard`, `histogram`, `keyname`, `lease`,
//! `lifecycle`, `memsize`, `namespace`, `removal`, `sweep`, `topk`. The FFI layer is thin: `commands`, `datatype`,
//! `dispatch` (the raw command callback), `openkey`, `sweeper`, and the
//! command table below.

pub mod acl;
pub mod args;
pub mod caller_cache;
pub mod clock;
pub mod commands;
pub mod config;
pub mod datatype;
pub mod dispatch;
pub mod entry;
pub mod error;
pub mod guard;
pub mod histogram;
pub mod keyname;
pub mod lease;
pub mod lifecycle;
pub mod log;
pub mod memsize;
pub mod namespace;
pub mod openkey;
pub mod removal;
pub mod sweep;
pub mod sweeper;
pub mod topk;

#[cfg(not(test))]
mod module {
    use std::sync::atomic::AtomicI64;

    use redis_module::configuration::{ConfigurationContext, ConfigurationFlags};
    use redis_module::server_events::ServerRole;
    use redis_module::ModuleOptions;
    use redis_module::{
        redis_module, Context, ContextFlags, InfoContext, NotifyEvent, RedisResult, RedisString,
        Status,
    };
    use redis_module_macros::{info_command_handler, role_changed_event_handler};

    use crate::commands;
    use crate::config;
    use crate::datatype::{self, ENTRY_TYPE};
    use crate::dispatch::{self, Command};
    use crate::guard;
    use crate::lease;
    use crate::namespace::{registry, try_registry};
    use crate::removal::{self, Removal};
    use crate::sweeper;

    fn init(ctx: &Context, _args: &[RedisString]) -> Status {
        // The default hook prints to stderr and may capture a backtrace (which
        // allocates through Redis's allocator); the Redis log is where operators look.
        std::panic::set_hook(Box::new(|info| {
            crate::log::warning(&format!("nscache: panic caught: {info}"));
        }));
        guard::catch("init", Status::Err, || {
            // SAFETY: init runs inside OnLoad, with the module's context.
            if let Err(name) = unsafe { dispatch::register(ctx.ctx, COMMANDS) } {
                crate::log::warning(&format!(
                    "nscache: could not register the command {}",
                    name.to_string_lossy()
                ));
                return Status::Err;
            }
            // ACL key patterns apply to stored names (issue 14).
            if let Err(why) = crate::acl::declare_key_specs(ctx) {
                crate::log::warning(&format!("nscache: cannot declare key specs: {why}"));
                return Status::Err;
            }
            // Keeps the remembered users of clients honest (caller_cache).
            let refused = crate::acl::check_data_commands(ctx);
            if !refused.is_empty() {
                crate::log::warning(&format!(
                    "nscache: these commands forget the remembered ACL users, as they are \
                     not the plain data commands of that name here: {}",
                    refused.join(" ")
                ));
            }
            for command in COMMANDS {
                let name = command.name.to_bytes().to_ascii_lowercase();
                if !crate::caller_cache::NSCACHE_COMMANDS.contains(&name.as_slice()) {
                    crate::log::warning(&format!(
                        "nscache: {} is missing from caller_cache::NSCACHE_COMMANDS",
                        command.name.to_string_lossy()
                    ));
                }
            }
            // SAFETY: a plain query of the server, from OnLoad.
            let version =
                unsafe { redis_module::raw::RedisModule_GetServerVersion.map_or(0, |f| f()) };
            crate::caller_cache::enable_for_server_version(version);
            if let Err(why) = crate::acl::register_command_filter(ctx) {
                crate::log::warning(&format!("nscache: {why}"));
                return Status::Err;
            }
            crate::clock::init();
            // A truncated RESTORE payload must fail the load, not crash the server.
            ctx.set_module_options(ModuleOptions::HANDLE_IO_ERRORS);
            datatype::set_cluster_mode(ctx.get_flags().contains(ContextFlags::CLUSTER));
            calibrate_allocator();
            sweeper::start(ctx);
            subscribe_to_flushes(ctx);
            Status::Ok
        })
    }

    /// Subscribes to flushes with the raw API: the crate's flush handler does not
    /// say which database is flushed. (A module has one callback per event: a
    /// `#[flush_event_handler]` added later would replace this one.)
    fn subscribe_to_flushes(ctx: &Context) {
        subscribe(
            ctx,
            redis_module::raw::REDISMODULE_EVENT_FLUSHDB,
            on_flush,
            "flush",
        );
        // SWAPDB sends no per-key events either.
        subscribe(
            ctx,
            redis_module::raw::REDISMODULE_EVENT_SWAPDB,
            on_swapdb,
            "SWAPDB",
        );
    }

    /// Subscribes `callback` to the server event `id`, with a warning in the log
    /// (naming `what`) if Redis refuses.
    fn subscribe(
        ctx: &Context,
        id: u64,
        callback: unsafe extern "C" fn(
            *mut redis_module::raw::RedisModuleCtx,
            redis_module::raw::RedisModuleEvent,
            u64,
            *mut std::ffi::c_void,
        ),
        what: &str,
    ) {
        // SAFETY: called from init with the module's context.
        let status = unsafe {
            redis_module::raw::RedisModule_SubscribeToServerEvent.map(|f| {
                f(
                    ctx.ctx,
                    redis_module::raw::RedisModuleEvent { id, dataver: 1 },
                    Some(callback),
                )
            })
        };
        if status != Some(redis_module::raw::REDISMODULE_OK as i32) {
            crate::log::warning(&format!("nscache: could not subscribe to {what} events"));
        }
    }

    /// SWAPDB exchanges whole databases: every lease goes, like at a flush.
    unsafe extern "C" fn on_swapdb(
        _ctx: *mut redis_module::raw::RedisModuleCtx,
        _eid: redis_module::raw::RedisModuleEvent,
        _subevent: u64,
        _data: *mut std::ffi::c_void,
    ) {
        guard::catch("swapdb event", (), lease::void_all);
    }

    /// Before every database is emptied, no entry stays live: `live` (what
    /// INVALIDATE reports) starts again from zero, whenever the lazy-free
    /// thread gets to free the old entries. A single database's flush cannot
    /// be attributed per namespace without a scan, so it is left alone.
    unsafe extern "C" fn on_flush(
        _ctx: *mut redis_module::raw::RedisModuleCtx,
        _eid: redis_module::raw::RedisModuleEvent,
        subevent: u64,
        data: *mut std::ffi::c_void,
    ) {
        guard::catch("flush event", (), || {
            if subevent != redis_module::raw::REDISMODULE_SUBEVENT_FLUSHDB_START {
                return;
            }
            // Flushed keys send no per-key events: every lease goes (for a
            // single database's flush too; a few extra recomputations at most).
            lease::void_all();
            let info = data.cast::<redis_module::raw::RedisModuleFlushInfo>();
            // SAFETY: Redis passes a RedisModuleFlushInfo for this event.
            if info.is_null() || unsafe { (*info).dbnum } != -1 {
                return;
            }
            for ns in registry().all() {
                ns.all_flushed();
            }
        });
    }

    /// Learns the allocator's size classes, so `bytes` matches `MEMORY USAGE`.
    fn calibrate_allocator() {
        // SAFETY: the module API is initialised; the pointer is freed right away.
        unsafe {
            if let (Some(alloc), Some(size), Some(free)) = (
                redis_module::raw::RedisModule_Alloc,
                redis_module::raw::RedisModule_MallocSize,
                redis_module::raw::RedisModule_Free,
            ) {
                let ptr = alloc(17);
                if !ptr.is_null() {
                    crate::memsize::calibrate(size(ptr));
                    free(ptr);
                }
            }
        }
    }

    // Every callback below is called from C: `guard::catch` keeps a panic from
    // unwinding into Redis (which would abort the server).

    fn on_topk_changed(_ctx: &ConfigurationContext, _name: &str, _value: &'static AtomicI64) {
        guard::catch("config change", (), || {
            let k = config::topk();
            for ns in registry().all() {
                ns.stats().topk.resize(k);
            }
        });
    }

    fn on_key_event(ctx: &Context, event: NotifyEvent, _name: &str, key: &[u8]) {
        guard::catch("keyspace event", (), || {
            // Any generic event (DEL, UNLINK, EXPIRE, PERSIST, RENAME, MOVE,
            // COPY, RESTORE...), expiry or eviction of a stored name is a
            // write of it: its FETCH lease no longer holds (SPEC 2.4). The
            // context has the key's database selected.
            if lease::any() {
                lease::void_key(selected_db(ctx), key);
            }
            if event.contains(NotifyEvent::EVICTED) {
                removal::key_removed(Removal::Evicted, key);
            } else if event.contains(NotifyEvent::EXPIRED) {
                removal::key_removed(Removal::Expired, key);
            } else {
                // DEL, RENAME, MOVE...: the entry just unlinked neither expired
                // nor was evicted.
                removal::forget();
            }
        });
    }

    fn selected_db(ctx: &Context) -> i32 {
        // SAFETY: a plain query of the context's client.
        unsafe { redis_module::raw::RedisModule_GetSelectedDb.map(|f| f(ctx.ctx)) }.unwrap_or(0)
    }

    /// A replica promoted to primary sweeps what its old primary had not.
    #[role_changed_event_handler]
    fn on_role_changed(_ctx: &Context, role: ServerRole) {
        guard::catch("role change", (), || {
            if role == ServerRole::Primary {
                sweeper::request();
            }
        });
    }

    // The builder API would name the section itself; the older calls give the
    // module's own section with `nscache_<field>` lines, one per namespace.
    #[allow(deprecated)]
    #[info_command_handler]
    fn info(ctx: &InfoContext, for_crash_report: bool) -> RedisResult<()> {
        guard::catch("INFO", Ok(()), || info_section(ctx, for_crash_report))
    }

    #[allow(deprecated)]
    fn info_section(ctx: &InfoContext, for_crash_report: bool) -> RedisResult<()> {
        // A crash report may run while a command holds the registry lock.
        let Some(registry) = (if for_crash_report {
            try_registry()
        } else {
            Some(registry())
        }) else {
            return Ok(());
        };
        ctx.add_info_section(None);
        ctx.add_info_field_long_long("namespaces", registry.len() as i64);
        // Lease figures (SPEC 2.4): the bound and what it holds now.
        let now = unsafe { redis_module::raw::RedisModule_Milliseconds.map(|f| f()) }.unwrap_or(0);
        let (outstanding, evicted) = lease::figures(now, for_crash_report);
        ctx.add_info_field_long_long("leases_outstanding", outstanding as i64);
        ctx.add_info_field_long_long("leases_max", config::max_leases() as i64);
        ctx.add_info_field_long_long("leases_evicted", evicted as i64);
        ctx.add_info_field_long_long(
            "leases_bytes",
            (outstanding.saturating_mul(lease::LEASE_BYTES)) as i64,
        );
        if let Some(busy) = sweeper::busy() {
            ctx.add_info_field_long_long("sweep_pending", i64::from(busy));
        }
        for ns in registry.all() {
            let r = ns.report();
            let (rl, wl) = (&r.read_latency_us, &r.write_latency_us);
            let line = format!(
                "hits={},misses={},hit_ratio={:.4},sets={},deletes={},invalidations={},expired={},evicted={},entries={},bytes={},\
                 read_latency_us_p50={},read_latency_us_p90={},read_latency_us_p99={},read_latency_us_p999={},read_latency_us_max={},\
                 write_latency_us_p50={},write_latency_us_p90={},write_latency_us_p99={},write_latency_us_p999={},write_latency_us_max={},\
                 leases={},lease_waits={},refreshes={},stale_sets_rejected={}",
                r.hits, r.misses, r.hit_ratio, r.sets, r.deletes, r.invalidations, r.expired, r.evicted, r.entries, r.bytes,
                rl.p50, rl.p90, rl.p99, rl.p999, rl.max, wl.p50, wl.p90, wl.p99, wl.p999, wl.max,
                r.leases, r.lease_waits, r.refreshes, r.stale_sets_rejected,
            );
            ctx.add_info_field_str(&format!("ns_{}", r.prefix), &line);
        }
        Ok(())
    }

    crate::command_callbacks! {
        cmd_set => commands::set,
        cmd_get => commands::get,
        cmd_fetch => commands::fetch,
        cmd_mget => commands::mget,
        cmd_del => commands::del,
        cmd_ttl => commands::ttl,
        cmd_invalidate => commands::invalidate,
        cmd_stats => commands::stats,
        cmd_topkeys => commands::topkeys,
        cmd_resetstats => commands::resetstats,
        cmd_keyname => commands::keyname,
        cmd_restoreentry => commands::restoreentry,
        cmd_forget => commands::forget,
    }

    /// Builds a [`Command`] table entry.
    macro_rules! command {
        ($name:literal, $callback:ident, $flags:literal, $first:literal, $last:literal, $step:literal) => {
            Command {
                name: $name,
                callback: $callback,
                flags: $flags,
                first_key: $first,
                last_key: $last,
                key_step: $step,
            }
        };
    }

    /// Every command, registered at load with `RedisModule_CreateCommand`
    /// (dispatch.rs: no per-call argument vector). Columns: name, callback,
    /// flags, first key, last key, key step.
    #[rustfmt::skip]
    const COMMANDS: &[Command] = &[
        // `key` (argument 2) is the declared key: its slot equals the stored
        // name's slot, so cluster clients route on it (SPEC 2.2). `init`
        // re-declares it NOT_KEY: routed, but ACL patterns are checked
        // against the stored names by the module (`acl`).
        command!(c"nscache.set", cmd_set, c"write deny-oom", 2, 2, 1),
        // A read may delete the stale entry it finds and replicate an
        // UNLINK: `may-replicate` says so (Redis then holds it during
        // CLIENT PAUSE WRITE and refuses it in read-only scripts).
        command!(c"nscache.get", cmd_get, c"readonly may-replicate fast", 2, 2, 1),
        command!(c"nscache.mget", cmd_mget, c"readonly may-replicate fast", 2, -1, 1),
        // FETCH writes no keyspace data (leases are per-node memory, never
        // replicated); like GET it may reclaim the stale entry it finds.
        command!(c"nscache.fetch", cmd_fetch, c"readonly may-replicate fast", 2, 2, 1),
        command!(c"nscache.del", cmd_del, c"write", 2, -1, 1),
        command!(c"nscache.ttl", cmd_ttl, c"readonly fast", 2, 2, 1),
        // Namespace-wide commands are keyless: they act on the node that
        // receives them.
        command!(c"nscache.invalidate", cmd_invalidate, c"write fast", 0, 0, 0),
        command!(c"nscache.stats", cmd_stats, c"readonly", 0, 0, 0),
        command!(c"nscache.topkeys", cmd_topkeys, c"readonly", 0, 0, 0),
        command!(c"nscache.resetstats", cmd_resetstats, c"fast", 0, 0, 0),
        // Statistics are per node: FORGET changes no keyspace data and is
        // not replicated, so it is no `write` (and runs on replicas too).
        command!(c"nscache.forget", cmd_forget, c"fast", 0, 0, 0),
        command!(c"nscache.keyname", cmd_keyname, c"readonly fast", 0, 0, 0),
        // Internal: what AOF rewrites emit (the stored name is the key).
        // The handler refuses it unless it comes from AOF loading or the
        // replication link.
        command!(c"nscache.restoreentry", cmd_restoreentry, c"write deny-oom", 1, 1, 1),
    ];

    redis_module! {
        name: "nscache",
        version: 1,
        allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
        data_types: [ENTRY_TYPE],
        init: init,
        // Commands: COMMANDS above, registered by `init`.
        commands: [],
        event_handlers: [
            [@EXPIRED @EVICTED @GENERIC: on_key_event],
        ],
        configurations: [
            i64: [
                ["topk", &config::TOPK, 32, config::TOPK_RANGE.0, config::TOPK_RANGE.1, ConfigurationFlags::DEFAULT, Some(Box::new(on_topk_changed))],
                ["max-namespaces", &config::MAX_NAMESPACES, 1024, config::MAX_NAMESPACES_RANGE.0, config::MAX_NAMESPACES_RANGE.1, ConfigurationFlags::DEFAULT, None],
                ["sweep-budget", &config::SWEEP_BUDGET, 1000, config::SWEEP_BUDGET_RANGE.0, config::SWEEP_BUDGET_RANGE.1, ConfigurationFlags::DEFAULT, None],
                ["max-leases", &config::MAX_LEASES, crate::lease::DEFAULT_MAX_LEASES as i64, config::MAX_LEASES_RANGE.0, config::MAX_LEASES_RANGE.1, ConfigurationFlags::DEFAULT, None],
            ],
            string: [],
            bool: [
                ["publish-invalidations", &config::PUBLISH_INVALIDATIONS, false, ConfigurationFlags::DEFAULT, None],
            ],
            enum: [],
            module_args_as_configuration: true,
        ]
    }
}
