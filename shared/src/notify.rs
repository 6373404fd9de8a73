//! The payload of one Postgres NOTIFY on channel `txevents` (SPEC 3.2).
//!
//! Postgres refuses NOTIFY payloads of 8000 bytes or more, so an event that does not
//! fit is announced by reference; the listener then fetches it with SQL
//! `txevents.get(id)`.

use std::io;

use serde::Serialize;

use crate::envelope::{Envelope, RawEnvelope, FORMAT_VERSION};
use crate::error::ParseError;
use crate::json;

/// Longest NOTIFY payload in bytes (Postgres requires fewer than 8000).
pub const NOTIFY_PAYLOAD_LIMIT: usize = 7999;

const EVENT_FIELDS: &[&str] = &["v", "kind", "event"];
const REF_FIELDS: &[&str] = &["v", "kind", "id", "type"];
/// Enough for a typical small event without regrowing.
const INITIAL_CAPACITY: usize = 512;

/// One notification: the whole event, or a reference to it when it is too large.
#[derive(Clone, Debug, PartialEq)]
pub enum NotifyPayload {
    /// `{"v":1,"kind":"event","event":{...}}`: the event itself.
    Event(Envelope),
    /// `{"v":1,"kind":"ref","id":42,"type":"candidate.created"}`: fetch with `txevents.get(id)`.
    Ref {
        /// Event id.
        id: i64,
        /// Event type, so listeners can skip events they do not care about without a query.
        event_type: String,
    },
}

#[derive(Serialize)]
struct EventWire<'a, E> {
    v: u32,
    kind: &'static str,
    event: &'a E,
}

#[derive(Serialize)]
struct RefWire<'a> {
    v: u32,
    kind: &'static str,
    id: i64,
    #[serde(rename = "type")]
    event_type: &'a str,
}

impl NotifyPayload {
    /// Parses and validates a notification payload.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut object = json::parse_object(text)?;
        json::check_version(&object)?;
        match json::string(&object, "kind")? {
            "event" => {
                json::deny_unknown(&object, EVENT_FIELDS, "notify")?;
                let event = json::take_object(&mut object, "event")?;
                Envelope::from_object(event)
                    .map(NotifyPayload::Event)
                    .map_err(|e| e.within("event", ""))
            }
            "ref" => {
                json::deny_unknown(&object, REF_FIELDS, "notify")?;
                Ok(NotifyPayload::Ref {
                    id: json::positive_i64(&object, "id")?,
                    event_type: json::non_empty_string(&object, "type")?.to_owned(),
                })
            }
            other => Err(ParseError::invalid(
                "kind",
                format!(
                    "unknown kind {}; expected \"event\" or \"ref\"",
                    json::quote(other)
                ),
            )),
        }
    }

    /// Compact JSON in the wire layout.
    pub fn to_json(&self) -> String {
        match self {
            NotifyPayload::Event(envelope) => json::to_json(&event_wire(envelope)),
            NotifyPayload::Ref { id, event_type } => ref_json(*id, event_type),
        }
    }

    /// `Event` when the notification JSON is at most [`NOTIFY_PAYLOAD_LIMIT`] bytes, else `Ref`.
    pub fn for_envelope(envelope: Envelope) -> NotifyPayload {
        if inline_json(&envelope).is_some() {
            NotifyPayload::Event(envelope)
        } else {
            NotifyPayload::Ref {
                id: envelope.id,
                event_type: envelope.event_type,
            }
        }
    }

    /// The notification text for an event, equal to `for_envelope(e.clone()).to_json()`.
    ///
    /// This is the emit hot path in Postgres, so it serializes the event once, directly
    /// into its wrapper, and stops as soon as the limit is passed instead of writing out
    /// a large payload only to discard it.
    ///
    /// The reference form is only over the limit if the event type alone is nearly 8000
    /// bytes long; Postgres then refuses the NOTIFY, so emitters should bound type length.
    pub fn encode_for_envelope(envelope: &Envelope) -> String {
        match inline_json(envelope) {
            Some(text) => text,
            None => ref_json(envelope.id, &envelope.event_type),
        }
    }

    /// The notification text for an event whose payload and headers are kept as JSON
    /// text: inline when at most [`NOTIFY_PAYLOAD_LIMIT`] bytes, else the reference.
    /// Numbers and everything else in payload and headers are copied verbatim.
    pub fn encode_for_raw_envelope(envelope: &RawEnvelope<'_>) -> String {
        match inline_json(envelope) {
            Some(text) => text,
            None => ref_json(envelope.id, envelope.event_type),
        }
    }

    /// The event id.
    pub fn id(&self) -> i64 {
        match self {
            NotifyPayload::Event(envelope) => envelope.id,
            NotifyPayload::Ref { id, .. } => *id,
        }
    }

    /// The event type.
    pub fn event_type(&self) -> &str {
        match self {
            NotifyPayload::Event(envelope) => &envelope.event_type,
            NotifyPayload::Ref { event_type, .. } => event_type,
        }
    }
}

/// Shorthand for [`NotifyPayload::for_envelope`].
pub fn for_envelope(envelope: Envelope) -> NotifyPayload {
    NotifyPayload::for_envelope(envelope)
}

/// Shorthand for [`NotifyPayload::encode_for_envelope`].
pub fn encode_for_envelope(envelope: &Envelope) -> String {
    NotifyPayload::encode_for_envelope(envelope)
}

fn event_wire<E: Serialize>(envelope: &E) -> EventWire<'_, E> {
    EventWire {
        v: FORMAT_VERSION,
        kind: "event",
        event: envelope,
    }
}

fn ref_json(id: i64, event_type: &str) -> String {
    json::to_json(&RefWire {
        v: FORMAT_VERSION,
        kind: "ref",
        id,
        event_type,
    })
}

/// The inline notification text, or `None` if it would exceed the limit.
fn inline_json<E: Serialize>(envelope: &E) -> Option<String> {
    let mut out = CappedWriter {
        buf: Vec::with_capacity(INITIAL_CAPACITY),
        cap: NOTIFY_PAYLOAD_LIMIT,
    };
    // Any error means the cap was hit: the wire types cannot fail to serialize otherwise.
    serde_json::to_writer(&mut out, &event_wire(envelope)).ok()?;
    String::from_utf8(out.buf).ok()
}

/// A byte sink that fails once more than `cap` bytes are written.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.cap {
            return Err(io::Error::other("NOTIFY payload limit exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Timestamp;
    use serde_json::{json, Map, Value};

    fn envelope_with_padding(pad: usize) -> Envelope {
        let mut payload = Map::new();
        payload.insert("pad".into(), Value::String("x".repeat(pad)));
        Envelope {
            v: FORMAT_VERSION,
            id: 42,
            event_type: "candidate.created".into(),
            aggregate_type: Some("candidate".into()),
            aggregate_id: Some("c-1".into()),
            payload,
            headers: Map::new(),
            occurred_at: Timestamp::from_unix_micros(0),
            txid: Some(1234),
        }
    }

    /// The padding that makes the inline notification exactly `len` bytes long.
    fn padding_for(len: usize) -> usize {
        let base = NotifyPayload::Event(envelope_with_padding(0))
            .to_json()
            .len();
        len - base
    }

    #[test]
    fn switches_to_ref_exactly_past_the_limit() {
        let fits = envelope_with_padding(padding_for(NOTIFY_PAYLOAD_LIMIT));
        let inline = NotifyPayload::Event(fits.clone()).to_json();
        assert_eq!(inline.len(), 7999);
        assert_eq!(NotifyPayload::encode_for_envelope(&fits), inline);
        assert_eq!(
            NotifyPayload::for_envelope(fits.clone()),
            NotifyPayload::Event(fits)
        );

        let too_big = envelope_with_padding(padding_for(NOTIFY_PAYLOAD_LIMIT + 1));
        assert_eq!(NotifyPayload::Event(too_big.clone()).to_json().len(), 8000);
        let reference = NotifyPayload::Ref {
            id: 42,
            event_type: "candidate.created".into(),
        };
        assert_eq!(
            NotifyPayload::encode_for_envelope(&too_big),
            reference.to_json()
        );
        assert_eq!(NotifyPayload::for_envelope(too_big), reference);
    }

    #[test]
    fn large_events_become_refs() {
        let huge = envelope_with_padding(1_000_000);
        assert_eq!(
            encode_for_envelope(&huge),
            r#"{"v":1,"kind":"ref","id":42,"type":"candidate.created"}"#
        );
    }

    #[test]
    fn encode_agrees_with_for_envelope() {
        for pad in [0, 10, 7000, 7900, 8000, 20_000] {
            let e = envelope_with_padding(pad);
            let text = NotifyPayload::encode_for_envelope(&e);
            assert_eq!(text, NotifyPayload::for_envelope(e.clone()).to_json());
            assert_eq!(text, encode_for_envelope(&e));
            assert_eq!(for_envelope(e.clone()).to_json(), text);
            assert!(text.len() <= NOTIFY_PAYLOAD_LIMIT);
            assert_eq!(NotifyPayload::parse(&text).map(|p| p.id()), Ok(42));
        }
    }

    #[test]
    fn raw_envelope_notifications_match_and_switch_to_ref() {
        for pad in [0, 10, 7900, 8000, 20_000] {
            let e = envelope_with_padding(pad);
            let payload_text = serde_json::to_string(&e.payload).expect("json");
            let payload = serde_json::value::RawValue::from_string(payload_text).expect("json");
            let headers = serde_json::value::RawValue::from_string("{}".into()).expect("json");
            let raw = e.as_raw(&payload, &headers);
            assert_eq!(
                NotifyPayload::encode_for_raw_envelope(&raw),
                NotifyPayload::encode_for_envelope(&e),
                "pad {pad}"
            );
        }
    }

    #[test]
    fn round_trips_both_kinds() {
        let event = NotifyPayload::Event(envelope_with_padding(3));
        assert_eq!(NotifyPayload::parse(&event.to_json()), Ok(event.clone()));
        assert_eq!(event.event_type(), "candidate.created");
        let reference = NotifyPayload::Ref {
            id: 9,
            event_type: "a.b".into(),
        };
        assert_eq!(
            reference.to_json(),
            r#"{"v":1,"kind":"ref","id":9,"type":"a.b"}"#
        );
        assert_eq!(
            NotifyPayload::parse(&reference.to_json()),
            Ok(reference.clone())
        );
        assert_eq!((reference.id(), reference.event_type()), (9, "a.b"));
    }

    #[test]
    fn rejects_bad_payloads() {
        let field = |text: &str| match NotifyPayload::parse(text) {
            Err(ParseError::Invalid { field, .. }) => field,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(field(r#"{"v":1,"kind":"blob","id":1}"#), "kind");
        assert_eq!(field(r#"{"v":1,"id":1,"type":"a"}"#), "kind");
        assert_eq!(field(r#"{"v":1,"kind":"ref","id":0,"type":"a"}"#), "id");
        assert_eq!(field(r#"{"v":1,"kind":"ref","id":1,"type":""}"#), "type");
        assert_eq!(
            field(r#"{"v":1,"kind":"ref","id":1,"type":"a","event":{}}"#),
            "notify"
        );
        assert_eq!(field(r#"{"v":1,"kind":"event","event":[]}"#), "event");
        assert_eq!(field(r#"{"v":1,"kind":"event","event":{"v":1}}"#), "event");
        assert_eq!(
            NotifyPayload::parse(r#"{"v":2,"kind":"teleport"}"#),
            Err(ParseError::UnsupportedVersion(2))
        );
        assert_eq!(
            NotifyPayload::parse(r#"{"v":1,"kind":"event","event":{"v":5}}"#),
            Err(ParseError::UnsupportedVersion(5))
        );
    }

    #[test]
    fn nested_errors_name_the_inner_field() {
        let mut value: Value =
            serde_json::from_str(&NotifyPayload::Event(envelope_with_padding(1)).to_json())
                .expect("valid");
        value["event"]["payload"] = json!([]);
        let err = NotifyPayload::parse(&value.to_string()).expect_err("payload array");
        assert_eq!(
            err.to_string(),
            "invalid field `event`: payload: expected an object, got an array"
        );
    }
}
