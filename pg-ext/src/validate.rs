//! Argument checks of `emit`, kept free of Postgres types so they run in unit tests.

use serde_json::{Map, Value};

use crate::error::{TxEventsError, TxResult};

/// The JSON kind of a value, as named in error messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Longest event type accepted: a NOTIFY that falls back to a reference still
/// carries the type, and must stay under Postgres's 8000-byte payload limit.
pub const MAX_EVENT_TYPE_LEN: usize = 255;

/// Checks the event type: present, non-empty, at most 255 bytes.
pub fn event_type(raw: Option<&str>) -> TxResult<&str> {
    match raw {
        None => Err(TxEventsError::NullArgument("event_type")),
        Some("") => Err(TxEventsError::EmptyEventType),
        Some(t) if t.len() > MAX_EVENT_TYPE_LEN => Err(TxEventsError::EventTypeTooLong(t.len())),
        Some(t) => Ok(t),
    }
}

/// Takes a jsonb argument that must be an object; SQL NULL is refused.
pub fn object(field: &'static str, raw: Option<Value>) -> TxResult<Map<String, Value>> {
    match raw {
        None => Err(TxEventsError::NullArgument(field)),
        Some(Value::Object(map)) => Ok(map),
        Some(other) => Err(TxEventsError::NotAnObject {
            field,
            found: json_kind(&other),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_type_must_be_present_and_non_empty() {
        assert_eq!(event_type(Some("a.b")), Ok("a.b"));
        assert_eq!(
            event_type(None),
            Err(TxEventsError::NullArgument("event_type"))
        );
        assert_eq!(event_type(Some("")), Err(TxEventsError::EmptyEventType));
        let long = "x".repeat(256);
        assert_eq!(
            event_type(Some(&long)),
            Err(TxEventsError::EventTypeTooLong(256))
        );
        assert!(event_type(Some(&long[..255])).is_ok());
    }

    #[test]
    fn payload_must_be_an_object() {
        assert!(object("payload", Some(json!({"a": 1}))).is_ok());
        assert_eq!(
            object("payload", Some(json!([1]))),
            Err(TxEventsError::NotAnObject {
                field: "payload",
                found: "an array"
            })
        );
        assert_eq!(
            object("payload", None),
            Err(TxEventsError::NullArgument("payload"))
        );
        assert_eq!(
            object("headers", Some(json!("x"))),
            Err(TxEventsError::NotAnObject {
                field: "headers",
                found: "a string"
            })
        );
    }
}
