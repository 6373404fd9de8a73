//! Reads the figures both servers keep (SPEC 2.5, 3.4) for `stats`, the exporter and
//! the demo: `NSCACHE.STATS JSON` and `NSCACHE.TOPKEYS` from every primary, the
//! txevents metric views from Postgres. Read-only and cheap: no SCAN, no table reads.

use std::collections::BTreeMap;

use cachetx_shared::{LatencySummary, NamespaceStats, StatsReport};
use serde::Serialize;
use serde_json::Value;

use crate::pg;
use crate::redis_client::{text_of, RedisHandle};

/// A section of the report: the data, or why it is not there. In JSON, the data
/// itself, or `{"unavailable": "<reason>"}`.
#[derive(Clone, Debug)]
pub enum Section<T> {
    /// The data.
    Available(T),
    /// A one-line reason (server not configured, needs preload, ...).
    Unavailable(String),
}

impl<T: Serialize> Serialize for Section<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Section::Available(data) => data.serialize(serializer),
            Section::Unavailable(why) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("unavailable", why)?;
                map.end()
            }
        }
    }
}

/// Namespaces of Redis, summed over the primaries that answered.
#[derive(Clone, Debug, Serialize)]
pub struct CacheFigures {
    /// Primaries asked.
    pub nodes: usize,
    /// One entry per namespace (counters summed, latency percentiles the worst node's).
    pub namespaces: Vec<NamespaceStats>,
    /// Hottest keys per namespace, `(key, count)`, hottest first.
    pub top_keys: BTreeMap<String, Vec<(String, u64)>>,
}

/// The rows of one view: column names in the view's order, each row a JSON object.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rows {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// One JSON object per row (column name → value, as `row_to_json` writes it).
    pub rows: Vec<Value>,
}

/// The txevents views.
#[derive(Clone, Debug, Serialize)]
pub struct TxFigures {
    /// `txevents.metrics`.
    pub metrics: Section<Rows>,
    /// `txevents.errors`.
    pub errors: Section<Rows>,
    /// `txevents.latency_buckets`.
    pub latency_buckets: Section<Rows>,
    /// `txevents.consumer_lag`.
    pub consumer_lag: Section<Rows>,
}

/// Reads the namespaces of every primary; `top` hottest keys per namespace (0: none).
pub async fn cache(redis: &mut RedisHandle, top: usize) -> anyhow::Result<CacheFigures> {
    let mut cmd = redis::cmd("NSCACHE.STATS");
    cmd.arg("JSON");
    let replies = redis.each_primary(cmd).await?;
    let mut reports = Vec::new();
    for (node, value) in &replies {
        let text = text_of(value)
            .ok_or_else(|| anyhow::anyhow!("NSCACHE.STATS JSON from {node}: not a text reply"))?;
        let report = StatsReport::parse(&text)
            .map_err(|e| anyhow::anyhow!("NSCACHE.STATS JSON from {node}: {e}"))?;
        reports.push(report);
    }
    let namespaces = merge(reports.iter().flat_map(|r| r.namespaces.iter()));
    let mut top_keys = BTreeMap::new();
    if top > 0 {
        for ns in &namespaces {
            let mut cmd = redis::cmd("NSCACHE.TOPKEYS");
            cmd.arg(&ns.prefix).arg(top);
            let replies = redis.each_primary(cmd).await?;
            let lists = replies.iter().map(|(_, v)| pairs(v)).collect::<Vec<_>>();
            top_keys.insert(ns.prefix.clone(), merge_top(lists, top));
        }
    }
    Ok(CacheFigures {
        nodes: replies.len(),
        namespaces,
        top_keys,
    })
}

/// `key, count` pairs of a TOPKEYS reply (flat array or map).
fn pairs(value: &redis::Value) -> Vec<(String, u64)> {
    let count = |v: &redis::Value| match v {
        redis::Value::Int(n) => u64::try_from(*n).ok(),
        other => text_of(other).and_then(|t| t.parse().ok()),
    };
    match value {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [k, c] => Some((text_of(k).unwrap_or_else(|| lossy(k)), count(c)?)),
                _ => None,
            })
            .collect(),
        redis::Value::Map(items) => items
            .iter()
            .filter_map(|(k, c)| Some((text_of(k).unwrap_or_else(|| lossy(k)), count(c)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// A binary key, shown with replacement characters.
fn lossy(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

/// Sums the nodes' top lists per key and keeps the `top` hottest.
pub fn merge_top(lists: Vec<Vec<(String, u64)>>, top: usize) -> Vec<(String, u64)> {
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for (key, count) in lists.into_iter().flatten() {
        *sums.entry(key).or_default() += count;
    }
    let mut all: Vec<(String, u64)> = sums.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(top);
    all
}

/// Sums namespaces of the same prefix from several nodes. Counters add up; latency
/// percentiles cannot be added, so each is the worst node's (an upper bound).
pub fn merge<'a>(stats: impl Iterator<Item = &'a NamespaceStats>) -> Vec<NamespaceStats> {
    let mut by_prefix: BTreeMap<String, NamespaceStats> = BTreeMap::new();
    for s in stats {
        match by_prefix.get_mut(&s.prefix) {
            None => {
                by_prefix.insert(s.prefix.clone(), s.clone());
            }
            Some(acc) => {
                acc.hits += s.hits;
                acc.misses += s.misses;
                acc.sets += s.sets;
                acc.deletes += s.deletes;
                acc.invalidations += s.invalidations;
                acc.expired += s.expired;
                acc.evicted += s.evicted;
                acc.entries += s.entries;
                acc.bytes += s.bytes;
                acc.leases += s.leases;
                acc.lease_waits += s.lease_waits;
                acc.refreshes += s.refreshes;
                acc.stale_sets_rejected += s.stale_sets_rejected;
                acc.read_latency_us = worst(&acc.read_latency_us, &s.read_latency_us);
                acc.write_latency_us = worst(&acc.write_latency_us, &s.write_latency_us);
                acc.hit_ratio = NamespaceStats::hit_ratio_of(acc.hits, acc.misses);
            }
        }
    }
    by_prefix.into_values().collect()
}

fn worst(a: &LatencySummary, b: &LatencySummary) -> LatencySummary {
    LatencySummary {
        p50: a.p50.max(b.p50),
        p90: a.p90.max(b.p90),
        p99: a.p99.max(b.p99),
        p999: a.p999.max(b.p999),
        max: a.max.max(b.max),
    }
}

/// Reads the four txevents views; each one that fails says why in one line.
pub async fn transactions(client: &tokio_postgres::Client) -> TxFigures {
    TxFigures {
        metrics: view(client, "txevents.metrics").await,
        errors: view(client, "txevents.errors").await,
        latency_buckets: view(client, "txevents.latency_buckets").await,
        consumer_lag: view(client, "txevents.consumer_lag").await,
    }
}

async fn view(client: &tokio_postgres::Client, name: &str) -> Section<Rows> {
    // The name is one of four constants above, never user input.
    let columns = match client.prepare(&format!("SELECT * FROM {name}")).await {
        Ok(statement) => statement
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        Err(e) => return Section::Unavailable(explain(name, &e)),
    };
    let sql = format!("SELECT row_to_json(v)::text FROM {name} v");
    match client.query(&sql, &[]).await {
        Ok(rows) => {
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let text: String = row.get(0);
                match serde_json::from_str(&text) {
                    Ok(v) => out.push(v),
                    Err(e) => return Section::Unavailable(format!("{name}: unreadable row: {e}")),
                }
            }
            Section::Available(Rows { columns, rows: out })
        }
        Err(e) => Section::Unavailable(explain(name, &e)),
    }
}

/// One line saying why a view could not be read.
fn explain(name: &str, err: &tokio_postgres::Error) -> String {
    match pg::sqlstate(err) {
        Some("42P01") | Some("3F000") => format!(
            "{name} does not exist: this txevents has no metrics views (CREATE EXTENSION txevents, or ALTER EXTENSION txevents UPDATE)"
        ),
        Some("42501") => format!(
            "{name}: permission denied (grant txevents_admin or pg_monitor to this role)"
        ),
        _ => {
            let msg = pg::message(err);
            if msg.contains("shared_preload_libraries") {
                format!("txevents metrics need shared_preload_libraries = 'txevents' ({name}: {msg})")
            } else {
                format!("{name}: {msg}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(prefix: &str, hits: u64, misses: u64, p99: u64) -> NamespaceStats {
        NamespaceStats {
            prefix: prefix.into(),
            hits,
            misses,
            hit_ratio: NamespaceStats::hit_ratio_of(hits, misses),
            sets: 1,
            deletes: 0,
            invalidations: 0,
            expired: 0,
            evicted: 0,
            entries: 2,
            bytes: 100,
            read_latency_us: LatencySummary {
                p99,
                ..LatencySummary::default()
            },
            write_latency_us: LatencySummary::default(),
            leases: 1,
            lease_waits: 0,
            refreshes: 0,
            stale_sets_rejected: 0,
        }
    }

    #[test]
    fn merge_sums_counters_and_keeps_the_worst_latency() {
        let a = ns("c", 3, 1, 10);
        let b = ns("c", 1, 3, 40);
        let c = ns("p", 1, 0, 5);
        let merged = merge([a, b, c].iter());
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].hits, merged[0].misses), (4, 4));
        assert_eq!(merged[0].hit_ratio, 0.5);
        assert_eq!((merged[0].entries, merged[0].bytes), (4, 200));
        assert_eq!(merged[0].read_latency_us.p99, 40);
        assert_eq!(merged[1].prefix, "p");
    }

    #[test]
    fn top_keys_add_up_across_nodes() {
        let merged = merge_top(
            vec![
                vec![("a".into(), 5), ("b".into(), 3)],
                vec![("c".into(), 7), ("b".into(), 3)],
            ],
            2,
        );
        assert_eq!(merged, vec![("c".into(), 7), ("b".into(), 6)]);
    }

    #[test]
    fn topkeys_replies_in_both_shapes() {
        use redis::Value as V;
        let flat = V::Array(vec![
            V::BulkString(b"k1".to_vec()),
            V::Int(9),
            V::BulkString(b"k2".to_vec()),
            V::Int(4),
        ]);
        assert_eq!(pairs(&flat), vec![("k1".into(), 9), ("k2".into(), 4)]);
        let map = V::Map(vec![(V::BulkString(b"k".to_vec()), V::Int(1))]);
        assert_eq!(pairs(&map), vec![("k".into(), 1)]);
    }
}
