//! JSON plumbing shared by the wire types: reading objects field by field, so that
//! every rejection names the field at fault, and writing compact JSON.
//!
//! The types are read through `serde_json::Value` rather than derived deserializers
//! because the version must be checked before anything else (a newer writer may have
//! changed every other field) and because serde's messages do not name the field.

use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::envelope::FORMAT_VERSION;
use crate::error::ParseError;

/// A JSON object as the parsers see it.
pub(crate) type Object = Map<String, Value>;

/// Longest piece of user input quoted back in an error message, in chars.
const QUOTE_LIMIT: usize = 64;

/// Parses `text` as a single JSON object.
pub(crate) fn parse_object(text: &str) -> Result<Object, ParseError> {
    let value: Value = serde_json::from_str(text)?;
    root_object(value)
}

/// Accepts a value only if it is a JSON object.
pub(crate) fn root_object(value: Value) -> Result<Object, ParseError> {
    match value {
        Value::Object(object) => Ok(object),
        other => Err(ParseError::Json(format!(
            "expected a JSON object, got {}",
            describe(&other)
        ))),
    }
}

/// Checks the `v` field; done first so a newer format is reported as such.
pub(crate) fn check_version(object: &Object) -> Result<(), ParseError> {
    match object.get("v") {
        None => Err(ParseError::invalid(
            "v",
            format!("required field is missing (this build reads version {FORMAT_VERSION})"),
        )),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v == u64::from(FORMAT_VERSION) => Ok(()),
            Some(v) => Err(ParseError::UnsupportedVersion(v)),
            None => Err(ParseError::invalid(
                "v",
                format!("expected a non-negative integer, got {n}"),
            )),
        },
        Some(other) => Err(wrong_type("v", "an integer", other)),
    }
}

/// Rejects any field not in `allowed`; `context` names the object in the error.
pub(crate) fn deny_unknown(
    object: &Object,
    allowed: &[&str],
    context: &'static str,
) -> Result<(), ParseError> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        None => Ok(()),
        Some(unknown) => Err(ParseError::invalid(
            context,
            format!(
                "unknown field {}; expected only {}",
                quote(unknown),
                allowed.join(", ")
            ),
        )),
    }
}

/// The value of a required field.
pub(crate) fn required<'a>(
    object: &'a Object,
    field: &'static str,
) -> Result<&'a Value, ParseError> {
    object
        .get(field)
        .ok_or_else(|| ParseError::invalid(field, "required field is missing"))
}

/// Removes a required field, so large values (payloads) move instead of being copied.
pub(crate) fn take(object: &mut Object, field: &'static str) -> Result<Value, ParseError> {
    object
        .remove(field)
        .ok_or_else(|| ParseError::invalid(field, "required field is missing"))
}

/// Removes a required field that must hold a JSON object.
pub(crate) fn take_object(object: &mut Object, field: &'static str) -> Result<Object, ParseError> {
    match take(object, field)? {
        Value::Object(inner) => Ok(inner),
        other => Err(wrong_type(field, "an object", &other)),
    }
}

/// A required string field.
pub(crate) fn string<'a>(object: &'a Object, field: &'static str) -> Result<&'a str, ParseError> {
    match required(object, field)? {
        Value::String(s) => Ok(s),
        other => Err(wrong_type(field, "a string", other)),
    }
}

/// A required string field that must not be empty.
pub(crate) fn non_empty_string<'a>(
    object: &'a Object,
    field: &'static str,
) -> Result<&'a str, ParseError> {
    let s = string(object, field)?;
    if s.is_empty() {
        return Err(ParseError::invalid(field, "must not be empty"));
    }
    Ok(s)
}

/// A required field holding a string or null.
pub(crate) fn nullable_string<'a>(
    object: &'a Object,
    field: &'static str,
) -> Result<Option<&'a str>, ParseError> {
    match required(object, field)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(wrong_type(field, "a string or null", other)),
    }
}

/// A required integer field that must be at least 1 (event ids).
pub(crate) fn positive_i64(object: &Object, field: &'static str) -> Result<i64, ParseError> {
    let n = number(object, field, "an integer >= 1")?;
    match n.as_i64() {
        Some(id) if id >= 1 => Ok(id),
        Some(id) => Err(ParseError::invalid(
            field,
            format!("must be >= 1, got {id}"),
        )),
        None if n.is_u64() => Err(ParseError::invalid(
            field,
            format!("{n} is out of range (at most {})", i64::MAX),
        )),
        None => Err(ParseError::invalid(
            field,
            format!("expected an integer, got {n}"),
        )),
    }
}

/// A required non-negative integer field.
pub(crate) fn u64_field(object: &Object, field: &'static str) -> Result<u64, ParseError> {
    let n = number(object, field, "a non-negative integer")?;
    u64_of(field, n)
}

/// A required field holding a non-negative integer or null.
pub(crate) fn nullable_u64(
    object: &Object,
    field: &'static str,
) -> Result<Option<u64>, ParseError> {
    match required(object, field)? {
        Value::Null => Ok(None),
        Value::Number(n) => u64_of(field, n).map(Some),
        other => Err(wrong_type(field, "a non-negative integer or null", other)),
    }
}

/// A required finite number field.
pub(crate) fn finite_f64(object: &Object, field: &'static str) -> Result<f64, ParseError> {
    let n = number(object, field, "a number")?;
    match n.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(ParseError::invalid(
            field,
            format!("{n} is not a finite number"),
        )),
    }
}

fn number<'a>(
    object: &'a Object,
    field: &'static str,
    expected: &str,
) -> Result<&'a Number, ParseError> {
    match required(object, field)? {
        Value::Number(n) => Ok(n),
        other => Err(wrong_type(field, expected, other)),
    }
}

fn u64_of(field: &'static str, n: &Number) -> Result<u64, ParseError> {
    n.as_u64().ok_or_else(|| {
        let why = if n.is_i64() {
            "must not be negative"
        } else if n.is_f64() {
            "must be an integer"
        } else {
            "is out of range"
        };
        ParseError::invalid(field, format!("{why}, got {n}"))
    })
}

/// The error for a field that holds the wrong kind of JSON value.
pub(crate) fn wrong_type(field: &'static str, expected: &str, got: &Value) -> ParseError {
    ParseError::invalid(field, format!("expected {expected}, got {}", describe(got)))
}

/// Names the kind of a JSON value, for error messages.
pub(crate) fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Quotes user input for an error message, cut short so a hostile message stays small.
pub(crate) fn quote(input: &str) -> String {
    match input.char_indices().nth(QUOTE_LIMIT) {
        None => format!("{input:?}"),
        Some((cut, _)) => format!("{:?}...", &input[..cut]),
    }
}

/// Writes a wire type as compact JSON.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(text) => text,
        // serde_json fails only on non-string map keys, a failing writer or a failing
        // Serialize impl. The wire types have string keys, write to a String, and
        // their one hand-written impl (Timestamp) cannot fail because a Timestamp is
        // always inside the range it can format.
        Err(err) => unreachable!("writing a cachetx wire type as JSON failed: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Object {
        root_object(value).expect("test value is an object")
    }

    #[test]
    fn root_must_be_an_object() {
        for text in ["[]", "1", "\"x\"", "null", "true"] {
            assert!(
                matches!(parse_object(text), Err(ParseError::Json(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn version_rules() {
        assert_eq!(check_version(&object(json!({"v": 1}))), Ok(()));
        assert_eq!(
            check_version(&object(json!({"v": 2}))),
            Err(ParseError::UnsupportedVersion(2))
        );
        assert_eq!(
            check_version(&object(json!({"v": 0}))),
            Err(ParseError::UnsupportedVersion(0))
        );
        for bad in [
            json!({}),
            json!({"v": "1"}),
            json!({"v": -1}),
            json!({"v": 1.0}),
            json!({"v": null}),
        ] {
            assert!(
                matches!(
                    check_version(&object(bad.clone())),
                    Err(ParseError::Invalid { field: "v", .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = deny_unknown(&object(json!({"a": 1, "zz": 2})), &["a"], "thing")
            .expect_err("zz is unknown");
        assert_eq!(
            err.to_string(),
            "invalid field `thing`: unknown field \"zz\"; expected only a"
        );
    }

    #[test]
    fn integers() {
        let o = object(json!({"a": 5, "b": 0, "c": -3, "d": 1.5, "e": u64::MAX, "f": "7"}));
        assert_eq!(positive_i64(&o, "a"), Ok(5));
        for field in ["b", "c", "d", "e", "f", "missing"] {
            assert!(positive_i64(&o, field).is_err(), "{field}");
        }
        assert_eq!(u64_field(&o, "e"), Ok(u64::MAX));
        assert_eq!(u64_field(&o, "b"), Ok(0));
        for field in ["c", "d", "f"] {
            assert!(u64_field(&o, field).is_err(), "{field}");
        }
    }

    #[test]
    fn quote_cuts_long_input() {
        let long = "é".repeat(100);
        let quoted = quote(&long);
        assert!(quoted.ends_with("..."));
        assert_eq!(quoted.chars().filter(|&c| c == 'é').count(), QUOTE_LIMIT);
        assert_eq!(quote("ab"), "\"ab\"");
    }
}
