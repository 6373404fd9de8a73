//! `cachetx`: the post-commit invalidation relay, stats, a Prometheus exporter and the
//! demo (SPEC 5). `main` only parses and dispatches; the work is in the modules.

mod backoff;
mod collect;
mod config;
mod demo;
mod exporter;
mod metrics;
mod pg;
mod plan;
mod redis_client;
mod relay;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// cachetx: post-commit cache invalidation between Postgres (txevents) and Redis (nscache).
#[derive(Parser, Debug)]
#[command(name = "cachetx", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply committed cache.invalidate events to Redis (consumer group `relay`).
    Relay(relay::RelayArgs),
    /// Print the figures of both servers: namespaces, transactions, errors, consumer lag.
    Stats(stats::StatsArgs),
    /// Run the recruitment scenario on private (or configured) servers: leases vs cache-aside.
    Demo(demo::DemoArgs),
    /// Serve both servers' figures on /metrics for Prometheus.
    Exporter(exporter::ExporterArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own report; the relay inside it only speaks up on trouble.
    init_tracing(match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cachetx: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cachetx: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Relay(args) => {
            let shutdown = shutdown_on_signals()?;
            relay::run(args, shutdown, None).await.map(drop)
        }
        Command::Demo(args) => {
            let shutdown = shutdown_on_signals()?;
            demo::run(args, shutdown).await
        }
        Command::Exporter(args) => {
            let shutdown = shutdown_on_signals()?;
            exporter::run(args, shutdown).await
        }
        Command::Stats(args) => {
            let shutdown = shutdown_on_signals()?;
            stats::run(args, shutdown).await
        }
    }
}

/// Logs to stderr; `RUST_LOG` sets the level (default `default_level`).
fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A token cancelled on the first SIGTERM or SIGINT.
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received: finishing the batch in hand");
        cancel.cancel();
    });
    Ok(token)
}
