//! `cachetx stats`: the figures of both servers as terminal tables, or as JSON.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::collect::{self, CacheFigures, Rows, Section, TxFigures};
use crate::config::{PgArgs, RedisArgs};
use crate::pg;
use crate::redis_client::RedisHandle;

/// Options of `cachetx stats`.
#[derive(Args, Clone, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub pg: PgArgs,
    /// Redraw every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub watch: Option<u64>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Hottest keys shown per namespace.
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    /// Skip Redis.
    #[arg(long)]
    pub no_redis: bool,
    /// Skip Postgres.
    #[arg(long)]
    pub no_postgres: bool,
}

/// Everything `stats` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Redis namespaces.
    pub redis: Section<CacheFigures>,
    /// txevents views.
    pub postgres: Section<TxFigures>,
}

/// Runs `cachetx stats`.
pub async fn run(args: StatsArgs, shutdown: CancellationToken) -> Result<()> {
    loop {
        let report = gather(&args).await;
        let text = if args.json {
            format!("{}\n", serde_json::to_string(&report)?)
        } else if args.watch.is_some() {
            // Clear the screen and go home, like `watch`.
            format!("\x1b[2J\x1b[H{}", render(&report))
        } else {
            render(&report)
        };
        if !write_stdout(&text)? {
            return Ok(());
        }
        let Some(secs) = args.watch else {
            return Ok(());
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Collects both servers' figures; a server that cannot be read becomes a one-line
/// reason in its section.
pub async fn gather(args: &StatsArgs) -> Report {
    let redis = if args.no_redis {
        Section::Unavailable("Redis skipped (--no-redis)".into())
    } else {
        match RedisHandle::connect(&args.redis).await {
            Ok(mut handle) => match collect::cache(&mut handle, args.top).await {
                Ok(figures) => Section::Available(figures),
                Err(e) => Section::Unavailable(format!("Redis: {e:#}")),
            },
            Err(e) => Section::Unavailable(format!("Redis: {e:#}")),
        }
    };
    let postgres = if args.no_postgres {
        Section::Unavailable("Postgres skipped (--no-postgres)".into())
    } else {
        match args.pg.config() {
            Ok(config) => match pg::connect(&config).await {
                Ok(conn) => {
                    let figures = collect::transactions(&conn.client).await;
                    conn.close().await;
                    Section::Available(figures)
                }
                Err(e) => Section::Unavailable(format!(
                    "Postgres: {e:#} (set DATABASE_URL or PG*, or pass --no-postgres)"
                )),
            },
            Err(e) => Section::Unavailable(format!("Postgres: {e:#}")),
        }
    };
    Report { redis, postgres }
}

/// The report as text tables, each section titled.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    out.push_str("== Cache namespaces (nscache) ==\n");
    match &report.redis {
        Section::Available(figures) if figures.namespaces.is_empty() => {
            out.push_str("no namespaces yet\n");
        }
        Section::Available(figures) => {
            out.push_str(&namespace_table(figures).to_string());
            out.push('\n');
            if figures.nodes > 1 {
                out.push_str(&format!(
                    "summed over {} primaries; latency percentiles are the worst node's\n",
                    figures.nodes
                ));
            }
        }
        Section::Unavailable(why) => out.push_str(&format!("{why}\n")),
    }
    match &report.postgres {
        Section::Available(tx) => {
            for (title, section) in [
                ("Transactions (txevents.metrics)", &tx.metrics),
                ("Errors by SQLSTATE (txevents.errors)", &tx.errors),
                ("Consumer lag (txevents.consumer_lag)", &tx.consumer_lag),
            ] {
                out.push_str(&format!("\n== {title} ==\n"));
                match section {
                    Section::Available(rows) if rows.rows.is_empty() => out.push_str("none\n"),
                    Section::Available(rows) => {
                        out.push_str(&rows_table(rows).to_string());
                        out.push('\n');
                    }
                    Section::Unavailable(why) => out.push_str(&format!("{why}\n")),
                }
            }
        }
        Section::Unavailable(why) => out.push_str(&format!("\n== Postgres (txevents) ==\n{why}\n")),
    }
    out
}

/// Writes to stdout; false when the reader went away (`| head`), which ends the
/// command quietly instead of with an error.
pub fn write_stdout(text: &str) -> Result<bool> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn namespace_table(figures: &CacheFigures) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "namespace",
        "hit ratio",
        "hits",
        "misses",
        "entries",
        "memory",
        "p99 read",
        "p99 write",
        "leases",
        "waits",
        "stale sets refused",
        "hottest keys",
    ]);
    for ns in &figures.namespaces {
        let hottest = figures
            .top_keys
            .get(&ns.prefix)
            .map(|top| {
                top.iter()
                    .map(|(k, n)| format!("{k} ({n})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        table.add_row(vec![
            Cell::new(&ns.prefix),
            right(format!("{:.1}%", ns.hit_ratio * 100.0)),
            right(ns.hits),
            right(ns.misses),
            right(ns.entries),
            right(human_bytes(ns.bytes)),
            right(human_micros(ns.read_latency_us.p99)),
            right(human_micros(ns.write_latency_us.p99)),
            right(ns.leases),
            right(ns.lease_waits),
            right(ns.stale_sets_rejected),
            Cell::new(hottest),
        ]);
    }
    table
}

/// A table of a view's rows, columns in the view's order; a view with many columns
/// (txevents.metrics) is shown turned, one column per row of the view.
fn rows_table(rows: &Rows) -> Table {
    if rows.columns.len() > WIDE {
        return turned_table(rows);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(rows.columns.clone());
    for row in &rows.rows {
        let cells = rows.columns.iter().map(|c| match row.get(c) {
            Some(Value::Number(n)) => right(n),
            Some(Value::String(s)) => Cell::new(s),
            Some(Value::Null) | None => Cell::new(""),
            Some(other) => Cell::new(other),
        });
        table.add_row(cells.collect::<Vec<_>>());
    }
    table
}

/// Most columns shown side by side.
const WIDE: usize = 8;

fn turned_table(rows: &Rows) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let mut columns = rows.columns.iter();
    // The first column (e.g. datname) names the rows.
    let Some(first) = columns.next() else {
        return table;
    };
    let mut header = vec![Cell::new(first)];
    header.extend(rows.rows.iter().map(|r| Cell::new(text(r.get(first)))));
    table.set_header(header);
    for column in columns {
        let mut line = vec![Cell::new(column)];
        line.extend(rows.rows.iter().map(|r| right(text(r.get(column)))));
        table.add_row(line);
    }
    table
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn right(value: impl ToString) -> Cell {
    Cell::new(value).set_alignment(CellAlignment::Right)
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Microseconds as `850 µs` or `12.3 ms`.
pub fn human_micros(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else {
        format!("{:.1} ms", us as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn micros_in_human_units() {
        assert_eq!(human_micros(850), "850 µs");
        assert_eq!(human_micros(12_345), "12.3 ms");
    }

    #[test]
    fn unavailable_sections_print_their_reason() {
        let report = Report {
            redis: Section::Unavailable("Redis: cannot connect".into()),
            postgres: Section::Available(TxFigures {
                metrics: Section::Unavailable(
                    "txevents metrics need shared_preload_libraries = 'txevents'".into(),
                ),
                errors: Section::Available(Rows::default()),
                latency_buckets: Section::Available(Rows::default()),
                consumer_lag: Section::Available(Rows {
                    columns: vec!["consumer".into(), "pending".into()],
                    rows: vec![serde_json::json!({"consumer": "relay", "pending": 3})],
                }),
            }),
        };
        let text = render(&report);
        assert!(text.contains("Redis: cannot connect"));
        assert!(text.contains("need shared_preload_libraries"));
        assert!(text.contains("relay"));
        assert!(text.contains("pending"));
    }
}
