//! The event envelope (SPEC 4): one domain event as it travels between Postgres,
//! Redis and their clients.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ParseError;
use crate::json::{self, Object};
use crate::timestamp::Timestamp;

/// The wire format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Field names in wire order, which is also the order `to_json` writes them in.
const FIELDS: &[&str] = &[
    "v",
    "id",
    "type",
    "aggregate_type",
    "aggregate_id",
    "payload",
    "headers",
    "occurred_at",
    "txid",
];

/// One domain event.
///
/// Every field is always written, `None` as `null`, and every field is required when
/// reading. Deserializing with serde runs the same checks as [`Envelope::parse`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct Envelope {
    /// Format version, [`FORMAT_VERSION`].
    pub v: u32,
    /// Event id, >= 1; in Postgres the `txevents` event id.
    pub id: i64,
    /// Event type, non-empty, e.g. `candidate.created` or `cache.invalidate`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Kind of the aggregate the event is about, e.g. `candidate`.
    pub aggregate_type: Option<String>,
    /// Id of the aggregate the event is about.
    pub aggregate_id: Option<String>,
    /// Event data; always a JSON object.
    pub payload: Map<String, Value>,
    /// Metadata such as correlation ids; always a JSON object.
    pub headers: Map<String, Value>,
    /// When the event was emitted (the emitting transaction's time in Postgres).
    pub occurred_at: Timestamp,
    /// Postgres transaction id (xid8) of the emitting transaction; `None` for events
    /// that did not come from a Postgres transaction, e.g. ones the Redis module publishes.
    pub txid: Option<u64>,
}

impl Envelope {
    /// Parses and validates one envelope from JSON text.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Self::from_object(json::parse_object(text)?)
    }

    /// Validates an already parsed JSON value as an envelope.
    pub fn from_value(value: Value) -> Result<Self, ParseError> {
        Self::from_object(json::root_object(value)?)
    }

    /// Compact JSON, fields in wire order.
    pub fn to_json(&self) -> String {
        json::to_json(self)
    }

    pub(crate) fn from_object(mut object: Object) -> Result<Self, ParseError> {
        json::check_version(&object)?;
        json::deny_unknown(&object, FIELDS, "envelope")?;
        let id = json::positive_i64(&object, "id")?;
        let event_type = json::non_empty_string(&object, "type")?.to_owned();
        let aggregate_type = json::nullable_string(&object, "aggregate_type")?.map(str::to_owned);
        let aggregate_id = json::nullable_string(&object, "aggregate_id")?.map(str::to_owned);
        let occurred_at = Timestamp::parse(json::string(&object, "occurred_at")?)?;
        let txid = json::nullable_u64(&object, "txid")?;
        let payload = json::take_object(&mut object, "payload")?;
        let headers = json::take_object(&mut object, "headers")?;
        Ok(Envelope {
            v: FORMAT_VERSION,
            id,
            event_type,
            aggregate_type,
            aggregate_id,
            payload,
            headers,
            occurred_at,
            txid,
        })
    }
}

impl TryFrom<Value> for Envelope {
    type Error = ParseError;

    fn try_from(value: Value) -> Result<Self, ParseError> {
        Self::from_value(value)
    }
}

/// An envelope whose payload and headers are JSON texts written out verbatim.
///
/// [`Envelope`] holds them as `serde_json::Value`, which cannot keep every number of
/// a Postgres `jsonb` (integers beyond 64 bits, decimals beyond an `f64`'s precision).
/// This borrowed form serializes to the same wire layout as [`Envelope::to_json`],
/// with `payload` and `headers` copied byte for byte from the given texts.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RawEnvelope<'a> {
    /// Format version, [`FORMAT_VERSION`].
    pub v: u32,
    /// Event id, >= 1.
    pub id: i64,
    /// Event type, non-empty.
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// Kind of the aggregate the event is about.
    pub aggregate_type: Option<&'a str>,
    /// Id of the aggregate the event is about.
    pub aggregate_id: Option<&'a str>,
    /// Event data: the text of a JSON object.
    pub payload: &'a RawValue,
    /// Metadata: the text of a JSON object.
    pub headers: &'a RawValue,
    /// When the event was emitted.
    pub occurred_at: Timestamp,
    /// Postgres transaction id (xid8) of the emitting transaction.
    pub txid: Option<u64>,
}

impl RawEnvelope<'_> {
    /// JSON in the wire layout, fields in wire order; payload and headers verbatim.
    pub fn to_json(&self) -> String {
        json::to_json(self)
    }
}

#[cfg(test)]
impl Envelope {
    /// This envelope's fields as a [`RawEnvelope`] with the given payload and
    /// headers texts (for tests that compare the two forms).
    pub(crate) fn as_raw<'a>(
        &'a self,
        payload: &'a RawValue,
        headers: &'a RawValue,
    ) -> RawEnvelope<'a> {
        RawEnvelope {
            v: self.v,
            id: self.id,
            event_type: &self.event_type,
            aggregate_type: self.aggregate_type.as_deref(),
            aggregate_id: self.aggregate_id.as_deref(),
            payload,
            headers,
            occurred_at: self.occurred_at,
            txid: self.txid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raw_envelope_writes_the_wire_layout_and_keeps_numbers() {
        let e = sample();
        let payload = RawValue::from_string(r#"{"name":"Ada"}"#.to_string()).expect("json");
        let headers = RawValue::from_string("{}".to_string()).expect("json");
        let raw = e.as_raw(&payload, &headers);
        assert_eq!(raw.to_json(), e.to_json());

        let big = r#"{"m": 12345678901234567890123, "d": 0.1000000000000000055511151231257827, "n": 1e40, "z": -0}"#;
        let payload = RawValue::from_string(big.to_string()).expect("json");
        let text = RawEnvelope {
            payload: &payload,
            ..raw
        }
        .to_json();
        assert!(text.contains(&format!(r#""payload":{big},"#)), "{text}");
    }

    fn sample() -> Envelope {
        Envelope {
            v: FORMAT_VERSION,
            id: 42,
            event_type: "candidate.created".into(),
            aggregate_type: Some("candidate".into()),
            aggregate_id: Some("c-1".into()),
            payload: json!({"name": "Ada"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            headers: Map::new(),
            occurred_at: Timestamp::from_unix_micros(1_709_214_307_123_456),
            txid: Some(7),
        }
    }

    fn sample_value() -> Value {
        serde_json::from_str(&sample().to_json()).expect("sample is valid JSON")
    }

    fn parse_with(change: impl FnOnce(&mut Map<String, Value>)) -> Result<Envelope, ParseError> {
        let mut value = sample_value();
        if let Some(object) = value.as_object_mut() {
            change(object);
        }
        Envelope::from_value(value)
    }

    fn field_of(result: Result<Envelope, ParseError>) -> &'static str {
        match result {
            Err(ParseError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn writes_fields_in_wire_order_with_nulls() {
        let mut e = sample();
        e.aggregate_type = None;
        e.aggregate_id = None;
        e.txid = None;
        assert_eq!(
            e.to_json(),
            r#"{"v":1,"id":42,"type":"candidate.created","aggregate_type":null,"aggregate_id":null,"payload":{"name":"Ada"},"headers":{},"occurred_at":"2024-02-29T13:45:07.123456Z","txid":null}"#
        );
        assert_eq!(Envelope::parse(&e.to_json()), Ok(e));
    }

    #[test]
    fn round_trips() {
        let e = sample();
        assert_eq!(Envelope::parse(&e.to_json()), Ok(e.clone()));
        assert_eq!(Envelope::from_value(sample_value()), Ok(e.clone()));
        let via_serde: Envelope = serde_json::from_str(&e.to_json()).expect("serde path");
        assert_eq!(via_serde, e);
    }

    #[test]
    fn version_is_checked_before_anything_else() {
        let text = r#"{"v":2,"whatever":true,"id":"not a number"}"#;
        assert_eq!(
            Envelope::parse(text),
            Err(ParseError::UnsupportedVersion(2))
        );
        assert_eq!(
            field_of(parse_with(|o| {
                o.remove("v");
            })),
            "v"
        );
    }

    #[test]
    fn field_rules() {
        // (field to change, new value or None to remove it, field the error must name)
        let cases = [
            ("id", Some(json!(0)), "id"),
            ("id", Some(json!(-5)), "id"),
            ("id", Some(json!("42")), "id"),
            ("id", Some(json!(u64::MAX)), "id"),
            ("type", Some(json!("")), "type"),
            ("type", None, "type"),
            ("payload", Some(json!([])), "payload"),
            ("payload", Some(Value::Null), "payload"),
            ("headers", Some(json!("h")), "headers"),
            ("txid", Some(json!(-1)), "txid"),
            ("txid", None, "txid"),
            ("aggregate_id", Some(json!(5)), "aggregate_id"),
            ("occurred_at", Some(json!("2024-02-29")), "occurred_at"),
            ("extra", Some(json!(1)), "envelope"),
        ];
        for (key, value, expected) in cases {
            let result = parse_with(|o| match &value {
                Some(v) => {
                    o.insert(key.into(), v.clone());
                }
                None => {
                    o.remove(key);
                }
            });
            assert_eq!(field_of(result), expected, "{key} = {value:?}");
        }
    }

    #[test]
    fn accepts_largest_ids() {
        let e = parse_with(|o| {
            o.insert("id".into(), json!(i64::MAX));
            o.insert("txid".into(), json!(u64::MAX));
        })
        .expect("valid");
        assert_eq!((e.id, e.txid), (i64::MAX, Some(u64::MAX)));
    }

    #[test]
    fn not_json_or_not_an_object() {
        for text in ["", "{", "nope", "[1]", "{\"v\":1} x", "null"] {
            assert!(
                matches!(Envelope::parse(text), Err(ParseError::Json(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn serde_deserialize_reports_the_same_errors() {
        let err = serde_json::from_str::<Envelope>(r#"{"v":3}"#).expect_err("v3");
        assert!(
            err.to_string().contains("unsupported format version 3"),
            "{err}"
        );
    }
}
