//! `cachetx demo` (what `make demo` runs): the recruitment scenario of SPEC 5 on
//! private servers (or the configured ones), once with `NSCACHE.FETCH` leases and once
//! with plain cache-aside, through a relay started here.

mod ledger;
mod scenario;
mod servers;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::collect::{self, Section};
use crate::config::{PgArgs, RedisArgs};
use crate::pg;
use crate::redis_client::RedisHandle;
use crate::relay::{self, RelayArgs};
use crate::stats::{self, Report};
use ledger::Ledger;
use scenario::{lock, Mode, RunResult, Settings};

/// Options of `cachetx demo`.
#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub pg: PgArgs,
    /// Start private servers even when REDIS_HOST/REDIS_PORT or DATABASE_URL/PG* are set.
    #[arg(long)]
    pub private: bool,
    /// The nscache module for the private redis-server (default: $NSCACHE_MODULE, else
    /// libnscache.so next to this binary, else target/release/libnscache.so).
    #[arg(long, value_name = "PATH")]
    pub module: Option<PathBuf>,
    /// Bin directory of the Postgres to start privately (default: pg_config --bindir).
    #[arg(long, value_name = "DIR")]
    pub pg_bindir: Option<PathBuf>,
    /// Length of each of the two runs, in seconds.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Candidate profiles.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(i32).range(1..=1_000_000))]
    pub candidates: i32,
    /// Concurrent readers.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub readers: u64,
    /// Concurrent updaters (each its own Postgres connection).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub updaters: u64,
    /// Time the loader takes after reading the row (ms): the race window.
    #[arg(long, default_value_t = 40)]
    pub loader_ms: u64,
    /// Pause between one updater's transactions (ms).
    #[arg(long, default_value_t = 20)]
    pub update_pause_ms: u64,
}

/// Connections for the loaders.
const LOADER_CONNECTIONS: usize = 8;
/// How long to wait for the relay to confirm the last invalidations of a run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the demo.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> Result<()> {
    let work = servers::WorkDir::new()?;
    let env_set = |names: &[&str]| names.iter().any(|n| std::env::var_os(n).is_some());
    let (redis_args, _redis_server) =
        if !args.private && env_set(&["REDIS_HOST", "REDIS_PORT", "REDIS_CLUSTER"]) {
            println!("==> using Redis at {}", args.redis.display());
            (args.redis.clone(), None)
        } else {
            let module = args.module.clone().unwrap_or_else(servers::default_module);
            let server = servers::PrivateRedis::start(&module, work.path())?;
            println!(
                "==> started redis-server with nscache on 127.0.0.1:{}",
                server.port
            );
            let redis = RedisArgs {
                host: "127.0.0.1".into(),
                port: server.port,
                db: 0,
                password: None,
                cluster: false,
            };
            (redis, Some(server))
        };
    let (pg_args, _pg_server) =
        if !args.private && env_set(&["DATABASE_URL", "PGHOST", "PGPORT", "PGDATABASE"]) {
            println!("==> using the configured Postgres (DATABASE_URL / PG*)");
            (args.pg.clone(), None)
        } else {
            let bindir = match &args.pg_bindir {
                Some(dir) => dir.clone(),
                None => servers::default_pg_bindir()?,
            };
            let server = servers::PrivatePostgres::start(&bindir, work.path())?;
            println!(
                "==> started Postgres ({}) with txevents preloaded, socket in {}",
                bindir.display(),
                server.socket_dir.display()
            );
            let pg = PgArgs {
                database_url: Some(server.conninfo()),
            };
            (pg, Some(server))
        };
    let pg_config = pg_args.config()?;
    let admin_conn = pg::connect(&pg_config).await?;
    let admin = &admin_conn.client;
    admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS txevents")
        .await
        .map_err(|e| anyhow::anyhow!("CREATE EXTENSION txevents: {}", pg::message(&e)))?;
    scenario::seed(admin, args.candidates).await?;

    // The relay, in this process, so the checker learns when each invalidation was
    // confirmed by Redis.
    let relay_args = RelayArgs {
        redis: redis_args.clone(),
        pg: pg_args.clone(),
        group: "relay".into(),
        channel: "txevents".into(),
        batch: 500,
        poll_interval_ms: 1000,
        lease_secs: 30,
        max_backoff_ms: 2000,
        streams: false,
        stream_name: relay::DEFAULT_STREAM.into(),
        stream_maxlen: 100_000,
    };
    relay::ensure_group(admin, &relay_args).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel::<Vec<i64>>();
    let acks_ledger = ledger.clone();
    tokio::spawn(async move {
        while let Some(ids) = acks_rx.recv().await {
            lock(&acks_ledger).acked(&ids, Instant::now());
        }
    });
    let relay_stop = CancellationToken::new();
    let relay_task = tokio::spawn(relay::run(relay_args, relay_stop.clone(), Some(acks_tx)));
    println!("==> relay running (consumer group \"relay\")");

    let settings = Settings {
        candidates: args.candidates,
        readers: usize::try_from(args.readers).unwrap_or(1),
        updaters: usize::try_from(args.updaters).unwrap_or(1),
        loader_delay: Duration::from_millis(args.loader_ms),
        update_pause: Duration::from_millis(args.update_pause_ms),
        ttl: 3600,
    };
    println!(
        "==> {} candidates, {} readers, {} updaters, loader {} ms, {} s per run\n",
        settings.candidates, settings.readers, settings.updaters, args.loader_ms, args.seconds
    );
    let mut redis = RedisHandle::connect(&redis_args).await?;
    let mut results = Vec::new();
    for (mode, prefix) in [
        (Mode::Leases, "demo.leases"),
        (Mode::CacheAside, "demo.aside"),
    ] {
        if shutdown.is_cancelled() {
            break;
        }
        let result = one_run(
            mode, prefix, &settings, &args, &pg_config, &mut redis, admin, &ledger, &shutdown,
        )
        .await?;
        results.push((mode, result));
    }
    relay_stop.cancel();
    match relay_task.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("relay: {e:#}"),
        Err(e) => eprintln!("relay task: {e}"),
    }

    print_summary(&results);
    let report = Report {
        redis: match collect::cache(&mut redis, 3).await {
            Ok(figures) => Section::Available(figures),
            Err(e) => Section::Unavailable(format!("Redis: {e:#}")),
        },
        postgres: Section::Available(collect::transactions(admin).await),
    };
    admin_conn.close().await;
    println!("{}", stats::render(&report));
    match results.iter().find(|(mode, _)| *mode == Mode::Leases) {
        Some((_, leases)) if leases.stale_reads > 0 || leases.stale_entries > 0 => bail!(
            "with leases, {} stale reads and {} stale entries: the invalidation pipeline let stale data through",
            leases.stale_reads,
            leases.stale_entries
        ),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_run(
    mode: Mode,
    prefix: &str,
    settings: &Settings,
    args: &DemoArgs,
    pg_config: &tokio_postgres::Config,
    redis: &mut RedisHandle,
    admin: &tokio_postgres::Client,
    ledger: &Arc<Mutex<Ledger>>,
    shutdown: &CancellationToken,
) -> Result<RunResult> {
    // A clean namespace on configured servers too.
    for command in ["NSCACHE.INVALIDATE", "NSCACHE.RESETSTATS"] {
        let mut cmd = redis::cmd(command);
        cmd.arg(prefix);
        redis
            .each_primary(cmd)
            .await
            .with_context(|| format!("{command} {prefix}"))?;
    }
    let mut loaders = Vec::new();
    for _ in 0..LOADER_CONNECTIONS {
        loaders.push(pg::client(pg_config).await?);
    }
    let mut updaters = Vec::new();
    for _ in 0..settings.updaters {
        updaters.push(pg::client(pg_config).await?);
    }
    let (reads_before, stale_before) = {
        let l = lock(ledger);
        (l.reads, l.stale_reads)
    };

    let stop = CancellationToken::new();
    let bar = ProgressBar::new(args.seconds * 10);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:30} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(mode.name());
    let timer = {
        let (stop, shutdown, bar) = (stop.clone(), shutdown.clone(), bar.clone());
        let seconds = args.seconds;
        tokio::spawn(async move {
            let started = Instant::now();
            let total = Duration::from_secs(seconds);
            while started.elapsed() < total && !shutdown.is_cancelled() {
                bar.set_position((started.elapsed().as_millis() / 100) as u64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stop.cancel();
        })
    };
    let progress_bar = bar.clone();
    let started = Instant::now();
    let progress = move |reads: u64| {
        let secs = started.elapsed().as_secs_f64().max(0.001);
        progress_bar.set_message(format!("{reads} reads ({:.0}/s)", reads as f64 / secs));
    };
    let mut result = scenario::run(
        mode,
        prefix,
        settings,
        redis.clone(),
        loaders,
        updaters,
        ledger.clone(),
        stop.clone(),
        progress,
    )
    .await?;
    // The timer only sleeps; it has finished or is cancelled with the run.
    timer.abort();
    bar.finish_and_clear();

    // Let the relay confirm the last commits before judging what is left in Redis.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while lock(ledger).unconfirmed() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let l = lock(ledger);
        result.reads = l.reads - reads_before;
        result.stale_reads = l.stale_reads - stale_before;
        result.unconfirmed = l.unconfirmed();
    }
    result.stale_entries =
        scenario::stale_entries(prefix, settings.candidates, redis, admin).await?;
    println!(
        "{}: {} reads, {} loader calls, {} updates, {} stale reads, {} entries left stale",
        mode.name(),
        result.reads,
        result.loader_calls,
        result.updates,
        result.stale_reads,
        result.stale_entries
    );
    Ok(result)
}

/// One line of the summary: a run's figure as text.
type Figure = fn(&RunResult) -> String;

fn print_summary(results: &[(Mode, RunResult)]) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec![Cell::new("")];
    header.extend(results.iter().map(|(mode, _)| Cell::new(mode.name())));
    table.set_header(header);
    let rows: [(&str, Figure); 7] = [
        ("reads", |r| r.reads.to_string()),
        ("loader calls", |r| r.loader_calls.to_string()),
        ("loader calls per 1000 reads", |r| {
            format!(
                "{:.1}",
                r.loader_calls as f64 * 1000.0 / r.reads.max(1) as f64
            )
        }),
        ("status updates committed", |r| r.updates.to_string()),
        ("stale reads (after the invalidation was applied)", |r| {
            r.stale_reads.to_string()
        }),
        ("entries left stale at the end (until TTL)", |r| {
            r.stale_entries.to_string()
        }),
        ("invalidations not confirmed by the relay", |r| {
            r.unconfirmed.to_string()
        }),
    ];
    for (name, value) in rows {
        let mut line = vec![Cell::new(name)];
        line.extend(
            results
                .iter()
                .map(|(_, r)| Cell::new(value(r)).set_alignment(CellAlignment::Right)),
        );
        table.add_row(line);
    }
    println!("\n{table}\n");
    println!(
        "A stale read began after the relay had applied the invalidation of a newer version\n\
         in Redis and still returned an older one. Cache-aside lets a slow loader write back a\n\
         row it read before the commit (the stale set); a lease is voided by the invalidation,\n\
         so that write is refused.\n"
    );
}
