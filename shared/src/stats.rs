//! Per-namespace cache statistics (SPEC 2.5), as `NSCACHE.STATS ... JSON` returns them
//! and `cachetx stats` reads them. Field names are the ones of the RESP reply and INFO.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::envelope::FORMAT_VERSION;
use crate::error::ParseError;
use crate::json::{self, Object};
use crate::prefix::validate_prefix;

const LATENCY_FIELDS: &[&str] = &["p50", "p90", "p99", "p999", "max"];
const NAMESPACE_FIELDS: &[&str] = &[
    "prefix",
    "hits",
    "misses",
    "hit_ratio",
    "sets",
    "deletes",
    "invalidations",
    "expired",
    "evicted",
    "entries",
    "bytes",
    "read_latency_us",
    "write_latency_us",
    "leases",
    "lease_waits",
    "refreshes",
    "stale_sets_rejected",
];
const REPORT_FIELDS: &[&str] = &["v", "namespaces"];

/// Latency percentiles in microseconds, measured inside the server.
///
/// No ordering between the fields is enforced: percentiles from a log-bucketed
/// histogram are bucket bounds and may exceed the exact `max`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct LatencySummary {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest observed.
    pub max: u64,
}

/// Statistics of one namespace on one Redis node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct NamespaceStats {
    /// The namespace.
    pub prefix: String,
    /// Lookups that found a live entry.
    pub hits: u64,
    /// Lookups that found nothing (or a stale generation).
    pub misses: u64,
    /// `hits / (hits + misses)`, 0.0 before the first lookup (see [`NamespaceStats::hit_ratio_of`]);
    /// must be within 0.0..=1.0, and JSON cannot carry NaN.
    pub hit_ratio: f64,
    /// Writes.
    pub sets: u64,
    /// Keys removed by `NSCACHE.DEL`.
    pub deletes: u64,
    /// `NSCACHE.INVALIDATE` calls.
    pub invalidations: u64,
    /// Entries that reached their TTL.
    pub expired: u64,
    /// Entries evicted under `maxmemory`.
    pub evicted: u64,
    /// Live entries.
    pub entries: u64,
    /// Memory of live entries, in bytes.
    pub bytes: u64,
    /// Read command latency.
    pub read_latency_us: LatencySummary,
    /// Write command latency.
    pub write_latency_us: LatencySummary,
    /// Leases granted by `NSCACHE.FETCH` with a `MISS` reply (SPEC 2.4).
    pub leases: u64,
    /// `NSCACHE.FETCH` calls answered `WAIT` (another caller held the lease).
    pub lease_waits: u64,
    /// Leases granted by `NSCACHE.FETCH` with a `REFRESH` reply.
    pub refreshes: u64,
    /// `NSCACHE.SET ... LEASE` writes refused (nil) because the lease no longer held.
    pub stale_sets_rejected: u64,
}

/// What `NSCACHE.STATS ... JSON` returns: some or all namespaces of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct StatsReport {
    /// Format version, [`FORMAT_VERSION`].
    pub v: u32,
    /// One entry per namespace.
    pub namespaces: Vec<NamespaceStats>,
}

impl LatencySummary {
    fn from_object(object: &Object) -> Result<Self, ParseError> {
        json::deny_unknown(object, LATENCY_FIELDS, "latency")?;
        Ok(LatencySummary {
            p50: json::u64_field(object, "p50")?,
            p90: json::u64_field(object, "p90")?,
            p99: json::u64_field(object, "p99")?,
            p999: json::u64_field(object, "p999")?,
            max: json::u64_field(object, "max")?,
        })
    }

    fn from_field(object: &Object, field: &'static str) -> Result<Self, ParseError> {
        match json::required(object, field)? {
            Value::Object(inner) => Self::from_object(inner).map_err(|e| e.within(field, "")),
            other => Err(json::wrong_type(field, "an object", other)),
        }
    }
}

impl TryFrom<Value> for LatencySummary {
    type Error = ParseError;

    fn try_from(value: Value) -> Result<Self, ParseError> {
        Self::from_object(&json::root_object(value)?)
    }
}

impl NamespaceStats {
    /// The hit ratio of these counts; 0.0 when there were no lookups (rather than NaN,
    /// which JSON cannot carry).
    pub fn hit_ratio_of(hits: u64, misses: u64) -> f64 {
        let lookups = hits as f64 + misses as f64;
        if lookups == 0.0 {
            0.0
        } else {
            hits as f64 / lookups
        }
    }

    /// Parses and validates one namespace's statistics (no version field of its own).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Self::from_object(&json::parse_object(text)?)
    }

    /// Compact JSON, fields in declaration order.
    pub fn to_json(&self) -> String {
        json::to_json(self)
    }

    fn from_object(object: &Object) -> Result<Self, ParseError> {
        json::deny_unknown(object, NAMESPACE_FIELDS, "namespace stats")?;
        let prefix = validate_prefix(json::string(object, "prefix")?.as_bytes())
            .map_err(|e| ParseError::invalid("prefix", e.to_string()))?
            .to_owned();
        let hit_ratio = json::finite_f64(object, "hit_ratio")?;
        if !(0.0..=1.0).contains(&hit_ratio) {
            return Err(ParseError::invalid(
                "hit_ratio",
                format!("{hit_ratio} is outside 0.0..=1.0"),
            ));
        }
        Ok(NamespaceStats {
            prefix,
            hits: json::u64_field(object, "hits")?,
            misses: json::u64_field(object, "misses")?,
            hit_ratio,
            sets: json::u64_field(object, "sets")?,
            deletes: json::u64_field(object, "deletes")?,
            invalidations: json::u64_field(object, "invalidations")?,
            expired: json::u64_field(object, "expired")?,
            evicted: json::u64_field(object, "evicted")?,
            entries: json::u64_field(object, "entries")?,
            bytes: json::u64_field(object, "bytes")?,
            read_latency_us: LatencySummary::from_field(object, "read_latency_us")?,
            write_latency_us: LatencySummary::from_field(object, "write_latency_us")?,
            leases: json::u64_field(object, "leases")?,
            lease_waits: json::u64_field(object, "lease_waits")?,
            refreshes: json::u64_field(object, "refreshes")?,
            stale_sets_rejected: json::u64_field(object, "stale_sets_rejected")?,
        })
    }
}

impl TryFrom<Value> for NamespaceStats {
    type Error = ParseError;

    fn try_from(value: Value) -> Result<Self, ParseError> {
        Self::from_object(&json::root_object(value)?)
    }
}

impl StatsReport {
    /// A report of the current format version.
    pub fn new(namespaces: Vec<NamespaceStats>) -> Self {
        StatsReport {
            v: FORMAT_VERSION,
            namespaces,
        }
    }

    /// Parses and validates a report.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Self::from_object(&json::parse_object(text)?)
    }

    /// Compact JSON: `{"v":1,"namespaces":[...]}`.
    pub fn to_json(&self) -> String {
        json::to_json(self)
    }

    fn from_object(object: &Object) -> Result<Self, ParseError> {
        json::check_version(object)?;
        json::deny_unknown(object, REPORT_FIELDS, "stats report")?;
        let items = match json::required(object, "namespaces")? {
            Value::Array(items) => items,
            other => return Err(json::wrong_type("namespaces", "an array", other)),
        };
        let namespaces = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let location = format!("[{i}] ");
                match item {
                    Value::Object(inner) => NamespaceStats::from_object(inner)
                        .map_err(|e| e.within("namespaces", &location)),
                    other => Err(ParseError::invalid(
                        "namespaces",
                        format!(
                            "{location}expected an object, got {}",
                            json::describe(other)
                        ),
                    )),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(StatsReport::new(namespaces))
    }
}

/// An empty report of the current format version (not version 0).
impl Default for StatsReport {
    fn default() -> Self {
        StatsReport::new(Vec::new())
    }
}

impl TryFrom<Value> for StatsReport {
    type Error = ParseError;

    fn try_from(value: Value) -> Result<Self, ParseError> {
        Self::from_object(&json::root_object(value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(base: u64) -> LatencySummary {
        LatencySummary {
            p50: base,
            p90: base * 2,
            p99: base * 4,
            p999: base * 8,
            max: base * 20,
        }
    }

    fn namespace(prefix: &str) -> NamespaceStats {
        NamespaceStats {
            prefix: prefix.into(),
            hits: 3,
            misses: 1,
            hit_ratio: NamespaceStats::hit_ratio_of(3, 1),
            sets: 4,
            deletes: 1,
            invalidations: 0,
            expired: 2,
            evicted: 0,
            entries: 1,
            bytes: 512,
            read_latency_us: latency(3),
            write_latency_us: latency(5),
            leases: 6,
            lease_waits: 7,
            refreshes: 8,
            stale_sets_rejected: 9,
        }
    }

    fn field_of<T: std::fmt::Debug>(result: Result<T, ParseError>) -> (&'static str, String) {
        match result {
            Err(ParseError::Invalid { field, reason }) => (field, reason),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn hit_ratio() {
        assert_eq!(NamespaceStats::hit_ratio_of(0, 0), 0.0);
        assert_eq!(NamespaceStats::hit_ratio_of(3, 1), 0.75);
        assert_eq!(NamespaceStats::hit_ratio_of(5, 0), 1.0);
        assert_eq!(NamespaceStats::hit_ratio_of(0, 5), 0.0);
        let huge = NamespaceStats::hit_ratio_of(u64::MAX, u64::MAX);
        assert!((huge - 0.5).abs() < 1e-12);
    }

    #[test]
    fn namespace_wire_form() {
        let ns = namespace("candidates");
        assert_eq!(
            ns.to_json(),
            concat!(
                r#"{"prefix":"candidates","hits":3,"misses":1,"hit_ratio":0.75,"sets":4,"#,
                r#""deletes":1,"invalidations":0,"expired":2,"evicted":0,"entries":1,"bytes":512,"#,
                r#""read_latency_us":{"p50":3,"p90":6,"p99":12,"p999":24,"max":60},"#,
                r#""write_latency_us":{"p50":5,"p90":10,"p99":20,"p999":40,"max":100},"#,
                r#""leases":6,"lease_waits":7,"refreshes":8,"stale_sets_rejected":9}"#
            )
        );
        assert_eq!(NamespaceStats::parse(&ns.to_json()), Ok(ns.clone()));
        let via_serde: NamespaceStats = serde_json::from_str(&ns.to_json()).expect("serde path");
        assert_eq!(via_serde, ns);
    }

    #[test]
    fn report_round_trip() {
        let report = StatsReport::new(vec![namespace("a"), namespace("b.c")]);
        assert_eq!(StatsReport::parse(&report.to_json()), Ok(report.clone()));
        let via_serde: StatsReport = serde_json::from_str(&report.to_json()).expect("serde path");
        assert_eq!(via_serde, report);
        assert_eq!(
            StatsReport::default().to_json(),
            r#"{"v":1,"namespaces":[]}"#
        );
    }

    #[test]
    fn namespace_rules() {
        let good: Value = serde_json::from_str(&namespace("a").to_json()).expect("valid");
        let with = |path: &[&str], value: Value| {
            let mut v = good.clone();
            let mut slot = &mut v;
            for key in path {
                slot = &mut slot[*key];
            }
            *slot = value;
            NamespaceStats::parse(&v.to_string())
        };
        assert_eq!(field_of(with(&["hits"], Value::from(-1))).0, "hits");
        assert_eq!(
            field_of(with(&["hit_ratio"], Value::from(1.5))).0,
            "hit_ratio"
        );
        assert_eq!(field_of(with(&["hit_ratio"], Value::Null)).0, "hit_ratio");
        assert_eq!(field_of(with(&["prefix"], Value::from("a b"))).0, "prefix");
        assert_eq!(
            field_of(with(&["read_latency_us"], Value::from(3))).0,
            "read_latency_us"
        );
        let (field, reason) = field_of(with(&["write_latency_us", "p99"], Value::from("x")));
        assert_eq!(field, "write_latency_us");
        assert!(reason.starts_with("p99: "), "{reason}");
        let (field, reason) = field_of(with(&["write_latency_us", "p75"], Value::from(1)));
        assert_eq!(field, "write_latency_us");
        assert!(reason.contains("\"p75\""), "{reason}");
        assert_eq!(
            field_of(with(&["top_keys"], Value::from(1))).0,
            "namespace stats"
        );
        for lease_field in ["leases", "lease_waits", "refreshes", "stale_sets_rejected"] {
            assert_eq!(
                field_of(with(&[lease_field], Value::from(-1))).0,
                lease_field
            );
            let mut missing = good.clone();
            missing
                .as_object_mut()
                .expect("an object")
                .remove(lease_field);
            assert_eq!(
                field_of(NamespaceStats::parse(&missing.to_string())).0,
                lease_field,
                "the lease fields are required"
            );
        }
    }

    #[test]
    fn report_rules() {
        assert_eq!(
            StatsReport::parse(r#"{"v":2,"namespaces":7}"#),
            Err(ParseError::UnsupportedVersion(2))
        );
        assert_eq!(field_of(StatsReport::parse(r#"{"v":1}"#)).0, "namespaces");
        assert_eq!(
            field_of(StatsReport::parse(r#"{"v":1,"namespaces":{}}"#)).0,
            "namespaces"
        );
        assert_eq!(
            field_of(StatsReport::parse(r#"{"v":1,"namespaces":[],"x":1}"#)).0,
            "stats report"
        );
        let (field, reason) = field_of(StatsReport::parse(r#"{"v":1,"namespaces":[1]}"#));
        assert_eq!(
            (field, reason.as_str()),
            ("namespaces", "[0] expected an object, got a number")
        );
        let mut bad = namespace("ok");
        bad.hit_ratio = 2.0;
        let text = StatsReport::new(vec![namespace("ok"), bad]).to_json();
        let (field, reason) = field_of(StatsReport::parse(&text));
        assert_eq!(field, "namespaces");
        assert!(reason.starts_with("[1] hit_ratio: "), "{reason}");
    }
}
