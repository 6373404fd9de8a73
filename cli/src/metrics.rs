//! The Prometheus view of both servers' figures (SPEC 5 exporter): one scrape's
//! [`Snapshot`] encoded with prometheus-client in the text exposition format.
//!
//! Names follow Prometheus's guide: `nscache_*` and `txevents_*`, counters end in
//! `_total`, durations in seconds, sizes in bytes. Namespace labels are capped: the
//! least busy namespaces beyond the cap are summed into `namespace="(other)"`, a name
//! nscache cannot have.

use std::collections::BTreeSet;

use cachetx_shared::{LatencySummary, NamespaceStats};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::collect::{merge, CacheFigures, Rows, Section, TxFigures};

/// Label value of the series that sums the namespaces beyond the cap.
pub const OVERFLOW_NAMESPACE: &str = "(other)";

/// One scrape's figures.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Redis, if it answered.
    pub cache: Section<CacheFigures>,
    /// Postgres, if it answered.
    pub tx: Section<TxFigures>,
    /// Most namespace labels.
    pub max_namespaces: usize,
    /// The namespaces that get their own label (see [`choose_labeled`]); `None`: the
    /// busiest of this snapshot.
    pub labeled: Option<BTreeSet<String>>,
}

type Labels = Vec<(String, String)>;
/// A counter field of a namespace's stats.
type Field = fn(&NamespaceStats) -> u64;
/// (histogram, datname) of a latency_buckets series.
type SeriesKey = (String, String);

/// Label pairs, values escaped for the text format: prometheus-client writes label
/// values verbatim, and a consumer group or database name may hold `"`, `\` or a
/// newline, which would otherwise break the whole exposition (Prometheus drops the
/// scrape).
fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), escape_label_value(v)))
        .collect()
}

/// A label value as the text format spells it: `\\`, `\"` and `\n` escaped.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Keeps the `max` busiest namespaces (by lookups) and sums the rest into one
/// [`OVERFLOW_NAMESPACE`] entry. Returns the kept namespaces in name order.
pub fn cap_namespaces(mut namespaces: Vec<NamespaceStats>, max: usize) -> Vec<NamespaceStats> {
    if namespaces.len() <= max {
        return namespaces;
    }
    namespaces.sort_by(|a, b| {
        (b.hits + b.misses)
            .cmp(&(a.hits + a.misses))
            .then_with(|| a.prefix.cmp(&b.prefix))
    });
    let rest = namespaces.split_off(max);
    let mut other: Vec<NamespaceStats> = rest
        .into_iter()
        .map(|mut ns| {
            ns.prefix = OVERFLOW_NAMESPACE.to_string();
            ns
        })
        .collect();
    other = merge(other.iter());
    namespaces.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    namespaces.extend(other);
    namespaces
}

/// The namespaces to label in this scrape, given those labeled in the previous one:
/// a namespace keeps its label while it exists, and free places go to the busiest
/// others. Choosing afresh by busyness each scrape moved namespaces in and out of
/// `(other)`, whose counters then went down, which Prometheus reads as a reset (a
/// bogus spike in `rate()`).
pub fn choose_labeled(
    namespaces: &[NamespaceStats],
    max: usize,
    previous: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut kept: BTreeSet<String> = namespaces
        .iter()
        .filter(|ns| previous.contains(&ns.prefix))
        .map(|ns| ns.prefix.clone())
        .take(max)
        .collect();
    let mut rest: Vec<&NamespaceStats> = namespaces
        .iter()
        .filter(|ns| !kept.contains(&ns.prefix))
        .collect();
    rest.sort_by(|a, b| {
        (b.hits.saturating_add(b.misses))
            .cmp(&a.hits.saturating_add(a.misses))
            .then_with(|| a.prefix.cmp(&b.prefix))
    });
    for ns in rest {
        if kept.len() >= max {
            break;
        }
        kept.insert(ns.prefix.clone());
    }
    kept
}

/// Keeps the namespaces of `labeled` and sums the others into one
/// [`OVERFLOW_NAMESPACE`] entry; kept namespaces in name order.
fn cap_to(namespaces: Vec<NamespaceStats>, labeled: &BTreeSet<String>) -> Vec<NamespaceStats> {
    let (mut kept, rest): (Vec<NamespaceStats>, Vec<NamespaceStats>) = namespaces
        .into_iter()
        .partition(|ns| labeled.contains(&ns.prefix));
    kept.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    if !rest.is_empty() {
        let other: Vec<NamespaceStats> = rest
            .into_iter()
            .map(|mut ns| {
                ns.prefix = OVERFLOW_NAMESPACE.to_string();
                ns
            })
            .collect();
        kept.extend(merge(other.iter()));
    }
    kept
}

/// The snapshot in the Prometheus text format.
pub fn encode(snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot.clone()));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_cache(
            &mut encoder,
            &self.cache,
            self.max_namespaces,
            self.labeled.as_ref(),
        )?;
        encode_tx(&mut encoder, &self.tx)
    }
}

/// One metric family: name, help, type, and its samples.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: MetricType,
}

fn family<T>(
    encoder: &mut DescriptorEncoder,
    f: Family<'_>,
    samples: &[(Labels, T)],
    mut write: impl FnMut(&mut prometheus_client::encoding::MetricEncoder, &T) -> std::fmt::Result,
) -> std::fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            write(&mut metric, value)?;
        } else {
            let mut sample = metric.encode_family(labels)?;
            write(&mut sample, value)?;
        }
    }
    Ok(())
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> std::fmt::Result {
    let f = Family {
        name,
        help,
        kind: MetricType::Counter,
    };
    family(encoder, f, samples, |m, v| {
        m.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(v, None)
    })
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, f64)],
) -> std::fmt::Result {
    let f = Family {
        name,
        help,
        kind: MetricType::Gauge,
    };
    family(encoder, f, samples, |m, v| m.encode_gauge(v))
}

fn encode_cache(
    encoder: &mut DescriptorEncoder,
    cache: &Section<CacheFigures>,
    max: usize,
    labeled: Option<&BTreeSet<String>>,
) -> std::fmt::Result {
    let up = matches!(cache, Section::Available(_));
    gauges(
        encoder,
        "nscache_up",
        "1 when the last scrape read NSCACHE.STATS from every primary.",
        &[(Vec::new(), if up { 1.0 } else { 0.0 })],
    )?;
    let Section::Available(figures) = cache else {
        return Ok(());
    };
    gauges(
        encoder,
        "nscache_namespaces",
        "Namespaces known to the servers (before the label cap).",
        &[(Vec::new(), figures.namespaces.len() as f64)],
    )?;
    let namespaces = match labeled {
        Some(labeled) => cap_to(figures.namespaces.clone(), labeled),
        None => cap_namespaces(figures.namespaces.clone(), max),
    };
    let by_ns = |f: fn(&NamespaceStats) -> u64| -> Vec<(Labels, u64)> {
        namespaces
            .iter()
            .map(|ns| (labels(&[("namespace", &ns.prefix)]), f(ns)))
            .collect()
    };
    let counter_fields: [(&str, &str, Field); 11] = [
        ("nscache_hits", "Lookups that found a live entry.", |n| {
            n.hits
        }),
        ("nscache_misses", "Lookups that found nothing.", |n| {
            n.misses
        }),
        ("nscache_sets", "Writes.", |n| n.sets),
        ("nscache_deletes", "Keys removed by NSCACHE.DEL.", |n| {
            n.deletes
        }),
        ("nscache_invalidations", "NSCACHE.INVALIDATE calls.", |n| {
            n.invalidations
        }),
        ("nscache_expired", "Entries that reached their TTL.", |n| {
            n.expired
        }),
        ("nscache_evicted", "Entries evicted under maxmemory.", |n| {
            n.evicted
        }),
        (
            "nscache_leases",
            "Leases granted by NSCACHE.FETCH (MISS).",
            |n| n.leases,
        ),
        (
            "nscache_lease_waits",
            "NSCACHE.FETCH calls answered WAIT.",
            |n| n.lease_waits,
        ),
        (
            "nscache_refreshes",
            "Early-refresh leases granted (REFRESH).",
            |n| n.refreshes,
        ),
        (
            "nscache_stale_sets_rejected",
            "SET ... LEASE refused because the lease no longer held.",
            |n| n.stale_sets_rejected,
        ),
    ];
    for (name, help, field) in counter_fields {
        counters(encoder, name, help, &by_ns(field))?;
    }
    let as_f64 = |v: Vec<(Labels, u64)>| {
        v.into_iter()
            .map(|(l, n)| (l, n as f64))
            .collect::<Vec<_>>()
    };
    gauges(
        encoder,
        "nscache_entries",
        "Live entries.",
        &as_f64(by_ns(|n| n.entries)),
    )?;
    gauges(
        encoder,
        "nscache_bytes",
        "Memory of live entries, in bytes.",
        &as_f64(by_ns(|n| n.bytes)),
    )?;
    gauges(
        encoder,
        "nscache_hit_ratio",
        "hits / (hits + misses) since the last reset.",
        &namespaces
            .iter()
            .map(|ns| (labels(&[("namespace", &ns.prefix)]), ns.hit_ratio))
            .collect::<Vec<_>>(),
    )?;
    for (name, help, pick) in [
        (
            "nscache_read_latency_seconds",
            "Read command latency inside Redis, by quantile (worst primary).",
            (|n: &NamespaceStats| n.read_latency_us.clone())
                as fn(&NamespaceStats) -> LatencySummary,
        ),
        (
            "nscache_write_latency_seconds",
            "Write command latency inside Redis, by quantile (worst primary).",
            |n: &NamespaceStats| n.write_latency_us.clone(),
        ),
    ] {
        let mut samples = Vec::new();
        for ns in &namespaces {
            let l = pick(ns);
            for (q, us) in [
                ("0.5", l.p50),
                ("0.9", l.p90),
                ("0.99", l.p99),
                ("0.999", l.p999),
                ("1", l.max),
            ] {
                samples.push((
                    labels(&[("namespace", &ns.prefix), ("quantile", q)]),
                    us as f64 / 1e6,
                ));
            }
        }
        gauges(encoder, name, help, &samples)?;
    }
    Ok(())
}

/// A number of a JSON row (metrics views), if present and numeric.
fn number(row: &Value, column: &str) -> Option<f64> {
    row.get(column).and_then(Value::as_f64)
}

fn text<'a>(row: &'a Value, column: &str) -> &'a str {
    row.get(column).and_then(Value::as_str).unwrap_or("")
}

/// `xact_p99_ms` → (`transaction`, `0.99`); `commit_max_ms` → (`commit`, `1`).
pub fn quantile_column(column: &str) -> Option<(&'static str, &'static str)> {
    let (histogram, rest) = if let Some(rest) = column.strip_prefix("xact_") {
        ("transaction", rest)
    } else if let Some(rest) = column.strip_prefix("commit_") {
        ("commit", rest)
    } else {
        return None;
    };
    let quantile = match rest {
        "p50_ms" => "0.5",
        "p90_ms" => "0.9",
        "p99_ms" => "0.99",
        "p999_ms" => "0.999",
        "max_ms" => "1",
        _ => return None,
    };
    Some((histogram, quantile))
}

fn encode_tx(encoder: &mut DescriptorEncoder, tx: &Section<TxFigures>) -> std::fmt::Result {
    let up = matches!(tx, Section::Available(t) if matches!(t.metrics, Section::Available(_)));
    gauges(
        encoder,
        "txevents_up",
        "1 when the last scrape read txevents.metrics (needs shared_preload_libraries).",
        &[(Vec::new(), if up { 1.0 } else { 0.0 })],
    )?;
    let Section::Available(tx) = tx else {
        return Ok(());
    };
    if let Section::Available(metrics) = &tx.metrics {
        encode_metrics_view(encoder, metrics)?;
    }
    if let Section::Available(buckets) = &tx.latency_buckets {
        encode_buckets(encoder, buckets)?;
    }
    if let Section::Available(errors) = &tx.errors {
        let samples: Vec<(Labels, u64)> = errors
            .rows
            .iter()
            .map(|row| {
                let l = labels(&[
                    ("datname", text(row, "datname")),
                    ("sqlstate", text(row, "sqlstate")),
                    ("condition", text(row, "condition")),
                ]);
                (l, number(row, "count").unwrap_or(0.0) as u64)
            })
            .collect();
        counters(
            encoder,
            "txevents_errors_by_sqlstate",
            "ERRORs reported to client backends, by SQLSTATE.",
            &samples,
        )?;
    }
    if let Section::Available(lag) = &tx.consumer_lag {
        for (column, name, help) in [
            (
                "pending",
                "txevents_consumer_pending_events",
                "Committed events not yet claimed by the group.",
            ),
            (
                "in_flight",
                "txevents_consumer_in_flight_events",
                "Events claimed and not yet acked.",
            ),
            (
                "retrying",
                "txevents_consumer_retrying_events",
                "Nacked events waiting for their retry.",
            ),
            (
                "dead",
                "txevents_consumer_dead_events",
                "Events in the group's dead letters.",
            ),
        ] {
            let samples: Vec<(Labels, f64)> = lag
                .rows
                .iter()
                .map(|row| {
                    (
                        labels(&[("consumer", text(row, "consumer"))]),
                        number(row, column).unwrap_or(0.0),
                    )
                })
                .collect();
            gauges(encoder, name, help, &samples)?;
        }
        let ages: Vec<(Labels, f64)> = lag
            .rows
            .iter()
            .map(|row| {
                let age = row
                    .get("oldest_pending_age")
                    .and_then(Value::as_str)
                    .map_or(0.0, interval_seconds);
                (labels(&[("consumer", text(row, "consumer"))]), age)
            })
            .collect();
        gauges(
            encoder,
            "txevents_consumer_oldest_pending_age_seconds",
            "Age of the oldest event the group has not been handed yet (0: none).",
            &ages,
        )?;
    }
    Ok(())
}

fn encode_metrics_view(encoder: &mut DescriptorEncoder, metrics: &Rows) -> std::fmt::Result {
    let mut quantiles: Vec<(&str, Vec<(Labels, f64)>)> =
        vec![("transaction", Vec::new()), ("commit", Vec::new())];
    for column in &metrics.columns {
        if column == "datname" || column == "reset_at" {
            continue;
        }
        let per_db = |row: &Value| labels(&[("datname", text(row, "datname"))]);
        if let Some((histogram, q)) = quantile_column(column) {
            for row in &metrics.rows {
                if let Some(ms) = number(row, column) {
                    let mut l = per_db(row);
                    l.push(("quantile".into(), q.into()));
                    if let Some((_, samples)) = quantiles.iter_mut().find(|(h, _)| *h == histogram)
                    {
                        samples.push((l, ms / 1000.0));
                    }
                }
            }
        } else if column == "rollback_rate" {
            let samples: Vec<(Labels, f64)> = metrics
                .rows
                .iter()
                .filter_map(|row| Some((per_db(row), number(row, column)?)))
                .collect();
            gauges(
                encoder,
                "txevents_rollback_ratio",
                "rollbacks / (commits + rollbacks).",
                &samples,
            )?;
        } else {
            // Every other numeric column of txevents.metrics is a count since reset.
            let samples: Vec<(Labels, u64)> = metrics
                .rows
                .iter()
                .filter_map(|row| Some((per_db(row), number(row, column)? as u64)))
                .collect();
            let name = format!("txevents_{column}");
            let help = format!("txevents.metrics column {column}.");
            counters(encoder, &name, &help, &samples)?;
        }
    }
    for (histogram, samples) in quantiles {
        let name = format!("txevents_{histogram}_duration_quantile_seconds");
        let help = format!("{histogram} duration by quantile, from txevents.metrics.");
        gauges(encoder, &name, &help, &samples)?;
    }
    Ok(())
}

/// txevents.latency_buckets as Prometheus histograms. The server keeps no exact sum,
/// so `_sum` is estimated as each bucket's count times its upper bound (an upper
/// bound of the true sum); use the buckets (histogram_quantile) rather than the sum.
fn encode_buckets(encoder: &mut DescriptorEncoder, buckets: &Rows) -> std::fmt::Result {
    // (histogram, datname) → (le, count) in bucket order.
    let mut series: Vec<(SeriesKey, Vec<(f64, u64)>)> = Vec::new();
    for row in &buckets.rows {
        let key = (
            text(row, "histogram").to_string(),
            text(row, "datname").to_string(),
        );
        let le = number(row, "le").unwrap_or(f64::MAX);
        let count = number(row, "count").unwrap_or(0.0) as u64;
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push((le, count)),
            None => series.push((key, vec![(le, count)])),
        }
    }
    for histogram in ["transaction", "commit"] {
        let chosen: Vec<_> = series.iter().filter(|((h, _), _)| h == histogram).collect();
        if chosen.is_empty() {
            continue;
        }
        let name = format!("txevents_{histogram}_duration_seconds");
        let help = format!(
            "{histogram} duration (txevents.latency_buckets); _sum is estimated from bucket bounds."
        );
        let mut metric = encoder.encode_descriptor(&name, &help, None, MetricType::Histogram)?;
        for ((_, datname), list) in chosen {
            let mut list = list.clone();
            if list.last().is_none_or(|(le, _)| *le != f64::MAX) {
                list.push((f64::MAX, 0));
            }
            let count = list.iter().map(|(_, c)| c).sum();
            let sum = list
                .iter()
                .filter(|(le, _)| *le != f64::MAX)
                .map(|(le, c)| le * *c as f64)
                .sum();
            let l = labels(&[("datname", datname)]);
            metric
                .encode_family(&l)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &list, None,
                )?;
        }
    }
    Ok(())
}

/// Seconds of a Postgres interval in its default text output (`1 day 02:03:04.5`,
/// `00:00:01.25`, `-00:00:01`); 0 when unreadable.
pub fn interval_seconds(text: &str) -> f64 {
    let mut total = 0.0;
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        if word.contains(':') {
            let negative = word.starts_with('-');
            let parts: Vec<f64> = word
                .trim_start_matches('-')
                .split(':')
                .filter_map(|p| p.parse().ok())
                .collect();
            let secs = match parts.as_slice() {
                [h, m, s] => h * 3600.0 + m * 60.0 + s,
                [m, s] => m * 60.0 + s,
                _ => 0.0,
            };
            total += if negative { -secs } else { secs };
        } else if let Ok(n) = word.parse::<f64>() {
            let unit = words.next().unwrap_or("");
            let factor = match unit.trim_end_matches('s') {
                "day" => 86_400.0,
                "mon" => 30.0 * 86_400.0,
                "year" => 365.25 * 86_400.0,
                _ => 0.0,
            };
            total += n * factor;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The value of one sample line `name{labels} value`, if present.
    fn sample_value(exposition: &str, series: &str) -> Option<f64> {
        exposition.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
    }

    fn ns(prefix: &str, hits: u64) -> NamespaceStats {
        NamespaceStats {
            prefix: prefix.into(),
            hits,
            misses: 1,
            hit_ratio: NamespaceStats::hit_ratio_of(hits, 1),
            sets: 2,
            deletes: 0,
            invalidations: 0,
            expired: 0,
            evicted: 0,
            entries: 3,
            bytes: 300,
            read_latency_us: LatencySummary {
                p50: 5,
                p90: 9,
                p99: 20,
                p999: 30,
                max: 40,
            },
            write_latency_us: LatencySummary::default(),
            leases: 0,
            lease_waits: 0,
            refreshes: 0,
            stale_sets_rejected: 0,
        }
    }

    #[test]
    fn the_cap_keeps_the_busiest_and_sums_the_rest() {
        let capped = cap_namespaces(vec![ns("a", 1), ns("b", 50), ns("c", 9), ns("d", 2)], 2);
        let names: Vec<&str> = capped.iter().map(|n| n.prefix.as_str()).collect();
        assert_eq!(names, vec!["b", "c", OVERFLOW_NAMESPACE]);
        assert_eq!(capped[2].hits, 3);
        assert_eq!(capped[2].entries, 6);
        assert_eq!(cap_namespaces(vec![ns("a", 1)], 2).len(), 1);
    }

    #[test]
    fn exposition_has_counters_gauges_and_quantiles() {
        let snapshot = Snapshot {
            cache: Section::Available(CacheFigures {
                nodes: 1,
                namespaces: vec![ns("cand", 7)],
                top_keys: BTreeMap::new(),
            }),
            tx: Section::Unavailable("no".into()),
            max_namespaces: 10,
            labeled: None,
        };
        let text = encode(&snapshot).expect("encode");
        assert_eq!(
            sample_value(&text, "nscache_hits_total{namespace=\"cand\"}"),
            Some(7.0)
        );
        assert_eq!(
            sample_value(&text, "nscache_bytes{namespace=\"cand\"}"),
            Some(300.0)
        );
        assert_eq!(
            sample_value(
                &text,
                "nscache_read_latency_seconds{namespace=\"cand\",quantile=\"0.99\"}"
            ),
            Some(0.00002)
        );
        assert!(text.contains("# TYPE nscache_hits counter"), "{text}");
        assert_eq!(sample_value(&text, "nscache_up"), Some(1.0));
        assert_eq!(sample_value(&text, "txevents_up"), Some(0.0));
    }

    #[test]
    fn txevents_views_become_series() {
        let rows = |columns: &[&str], rows: Vec<Value>| Rows {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows,
        };
        let tx = TxFigures {
            metrics: Section::Available(rows(
                &["datname", "commits", "rollback_rate", "xact_p99_ms"],
                vec![
                    serde_json::json!({"datname": "app", "commits": 12, "rollback_rate": 0.25, "xact_p99_ms": 4.5}),
                ],
            )),
            errors: Section::Available(rows(
                &["datname", "sqlstate", "condition", "count"],
                vec![
                    serde_json::json!({"datname": "app", "sqlstate": "23505", "condition": "unique_violation", "count": 3}),
                ],
            )),
            latency_buckets: Section::Available(rows(
                &["datname", "histogram", "bucket", "le", "count"],
                vec![
                    serde_json::json!({"datname": "app", "histogram": "commit", "bucket": 0, "le": 0.001, "count": 2}),
                    serde_json::json!({"datname": "app", "histogram": "commit", "bucket": 1, "le": 0.002, "count": 1}),
                ],
            )),
            consumer_lag: Section::Available(rows(
                &["consumer", "pending", "oldest_pending_age"],
                vec![
                    serde_json::json!({"consumer": "relay", "pending": 5, "oldest_pending_age": "00:00:02.5"}),
                ],
            )),
        };
        let snapshot = Snapshot {
            cache: Section::Unavailable("no".into()),
            tx: Section::Available(tx),
            max_namespaces: 10,
            labeled: None,
        };
        let text = encode(&snapshot).expect("encode");
        assert_eq!(
            sample_value(&text, "txevents_commits_total{datname=\"app\"}"),
            Some(12.0)
        );
        assert_eq!(
            sample_value(&text, "txevents_rollback_ratio{datname=\"app\"}"),
            Some(0.25)
        );
        assert_eq!(
            sample_value(
                &text,
                "txevents_transaction_duration_quantile_seconds{datname=\"app\",quantile=\"0.99\"}"
            ),
            Some(0.0045)
        );
        assert_eq!(
            sample_value(
                &text,
                "txevents_errors_by_sqlstate_total{datname=\"app\",sqlstate=\"23505\",condition=\"unique_violation\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            sample_value(
                &text,
                "txevents_commit_duration_seconds_bucket{le=\"0.002\",datname=\"app\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            sample_value(
                &text,
                "txevents_commit_duration_seconds_count{datname=\"app\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            sample_value(
                &text,
                "txevents_consumer_pending_events{consumer=\"relay\"}"
            ),
            Some(5.0)
        );
        assert_eq!(
            sample_value(
                &text,
                "txevents_consumer_oldest_pending_age_seconds{consumer=\"relay\"}"
            ),
            Some(2.5)
        );
    }

    #[test]
    fn intervals_in_seconds() {
        assert_eq!(interval_seconds("00:00:01.25"), 1.25);
        assert_eq!(interval_seconds("1 day 02:00:00"), 93_600.0);
        assert_eq!(interval_seconds("-00:00:01"), -1.0);
        assert_eq!(interval_seconds("garbage"), 0.0);
    }
}
