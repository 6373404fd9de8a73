//! Argument checks of the SQL functions, kept free of Postgres types so they run in
//! unit tests. Durations are microseconds.

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

/// The JSON kind named by `jsonb_typeof` (`object`, `array`, ...), as in error messages.
pub fn jsonb_kind(typeof_name: &str) -> &'static str {
    match typeof_name {
        "null" => "null",
        "boolean" => "a boolean",
        "number" => "a number",
        "string" => "a string",
        "array" => "an array",
        "object" => "an object",
        _ => "an unknown JSON kind",
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

/// Longest consumer group name, in bytes.
pub const MAX_CONSUMER_NAME_LEN: usize = 63;

/// Checks a consumer group name: present, 1 to 63 bytes.
pub fn consumer_name(raw: Option<&str>) -> TxResult<&str> {
    match raw {
        None => Err(TxEventsError::NullArgument("name")),
        Some("") => Err(TxEventsError::InvalidArgument(
            "consumer group name must not be empty".into(),
        )),
        Some(n) if n.len() > MAX_CONSUMER_NAME_LEN => Err(TxEventsError::InvalidArgument(format!(
            "consumer group name is {} bytes long, the limit is 63",
            n.len()
        ))),
        Some(n) => Ok(n),
    }
}

/// Checks a group's event type filter: NULL (every type) or a non-empty list of valid
/// event types.
pub fn event_types(raw: Option<Vec<Option<String>>>) -> TxResult<Option<Vec<String>>> {
    let Some(list) = raw else { return Ok(None) };
    if list.is_empty() {
        return Err(TxEventsError::InvalidArgument(
            "event_types must not be empty (NULL means every type)".into(),
        ));
    }
    list.into_iter()
        .map(|t| event_type(t.as_deref()).map(str::to_string))
        .collect::<TxResult<Vec<String>>>()
        .map(Some)
}

/// Checks `max_attempts`: at least 1.
pub fn max_attempts(raw: Option<i32>) -> TxResult<i32> {
    match raw {
        None => Err(TxEventsError::NullArgument("max_attempts")),
        Some(n) if n < 1 => Err(TxEventsError::InvalidArgument(format!(
            "max_attempts must be at least 1, not {n}"
        ))),
        Some(n) => Ok(n),
    }
}

/// Checks the backoff bounds: base > 0 and max >= base.
pub fn backoff(base: i64, max: i64) -> TxResult<()> {
    if base <= 0 {
        return Err(TxEventsError::InvalidArgument(
            "backoff_base must be a positive interval".into(),
        ));
    }
    if max < base {
        return Err(TxEventsError::InvalidArgument(
            "backoff_max must not be shorter than backoff_base".into(),
        ));
    }
    Ok(())
}

/// Checks `poll`'s `max`: 1 to [`crate::poll::MAX_BATCH`].
pub fn batch_size(raw: Option<i32>) -> TxResult<i32> {
    match raw {
        None => Err(TxEventsError::NullArgument("max")),
        Some(n) if !(1..=crate::poll::MAX_BATCH).contains(&n) => {
            Err(TxEventsError::InvalidArgument(format!(
                "max must be between 1 and {}, not {n}",
                crate::poll::MAX_BATCH
            )))
        }
        Some(n) => Ok(n),
    }
}

/// Checks a lease: a positive interval.
pub fn lease(micros: i64) -> TxResult<()> {
    if micros <= 0 {
        return Err(TxEventsError::InvalidArgument(
            "lease must be a positive interval".into(),
        ));
    }
    Ok(())
}

/// Checks an explicit retry delay: not negative.
pub fn retry_after(micros: i64) -> TxResult<()> {
    if micros < 0 {
        return Err(TxEventsError::InvalidArgument(
            "retry_after must not be negative".into(),
        ));
    }
    Ok(())
}

/// Checks `prune`'s age: not negative.
pub fn older_than(micros: i64) -> TxResult<()> {
    if micros < 0 {
        return Err(TxEventsError::InvalidArgument(
            "older_than must not be negative".into(),
        ));
    }
    Ok(())
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

    #[test]
    fn jsonb_kinds_read_like_json_kinds() {
        for (name, value) in [
            ("null", json!(null)),
            ("boolean", json!(true)),
            ("number", json!(1)),
            ("string", json!("s")),
            ("array", json!([])),
            ("object", json!({})),
        ] {
            assert_eq!(jsonb_kind(name), json_kind(&value));
        }
        assert_eq!(jsonb_kind("?"), "an unknown JSON kind");
    }

    fn invalid(r: TxResult<impl std::fmt::Debug>) -> String {
        match r {
            Err(TxEventsError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn consumer_names() {
        assert_eq!(consumer_name(Some("relay")), Ok("relay"));
        assert_eq!(
            consumer_name(None),
            Err(TxEventsError::NullArgument("name"))
        );
        assert!(invalid(consumer_name(Some(""))).contains("empty"));
        assert!(invalid(consumer_name(Some(&"n".repeat(64)))).contains("limit is 63"));
        assert!(consumer_name(Some(&"n".repeat(63))).is_ok());
    }

    #[test]
    fn event_type_filters() {
        assert_eq!(event_types(None), Ok(None));
        assert_eq!(
            event_types(Some(vec![Some("a.b".into())])),
            Ok(Some(vec!["a.b".to_string()]))
        );
        assert!(invalid(event_types(Some(vec![]))).contains("NULL means every type"));
        assert_eq!(
            event_types(Some(vec![Some("a".into()), None])),
            Err(TxEventsError::NullArgument("event_type"))
        );
        assert_eq!(
            event_types(Some(vec![Some(String::new())])),
            Err(TxEventsError::EmptyEventType)
        );
    }

    #[test]
    fn numbers_and_durations() {
        assert_eq!(max_attempts(Some(1)), Ok(1));
        assert!(invalid(max_attempts(Some(0))).contains("at least 1"));
        assert_eq!(batch_size(Some(100)), Ok(100));
        assert!(invalid(batch_size(Some(0))).contains("between 1 and"));
        assert!(invalid(batch_size(Some(-3))).contains("between 1 and"));
        assert!(invalid(batch_size(Some(crate::poll::MAX_BATCH + 1))).contains("between"));
        assert_eq!(batch_size(None), Err(TxEventsError::NullArgument("max")));
        assert!(lease(1).is_ok());
        assert!(invalid(lease(0)).contains("positive"));
        assert!(invalid(lease(-1)).contains("positive"));
        assert!(retry_after(0).is_ok());
        assert!(invalid(retry_after(-1)).contains("negative"));
        assert!(older_than(0).is_ok());
        assert!(invalid(older_than(-1)).contains("negative"));
        assert!(backoff(1, 1).is_ok());
        assert!(invalid(backoff(0, 5)).contains("positive"));
        assert!(invalid(backoff(5, 4)).contains("shorter"));
    }
}
