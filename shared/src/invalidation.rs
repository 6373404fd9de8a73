//! The cache invalidation payload (SPEC 2.3, 3.1): which keys of which namespace a
//! committed transaction made stale.
//!
//! Postgres emits it as the payload of a `cache.invalidate` event, a relay applies it
//! with `NSCACHE.DEL` / `NSCACHE.INVALIDATE`, and Redis announces what it invalidated
//! with a `cache.invalidated` event carrying the same payload.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::envelope::FORMAT_VERSION;
use crate::error::ParseError;
use crate::json::{self, Object};
use crate::prefix::validate_prefix;

/// Event type of an invalidation request, emitted by Postgres and applied by a relay.
pub const INVALIDATE_EVENT_TYPE: &str = "cache.invalidate";
/// Event type Redis publishes after it invalidated.
pub const INVALIDATED_EVENT_TYPE: &str = "cache.invalidated";

const FIELDS: &[&str] = &["v", "prefix", "scope", "keys"];

/// Keys of one namespace, or the whole namespace, to invalidate.
///
/// Keys are JSON strings, so only UTF-8 cache keys can be named individually; binary
/// keys are reached by invalidating their namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheInvalidation {
    /// The namespace, a valid prefix (see [`validate_prefix`]).
    pub prefix: String,
    /// What to invalidate in it.
    pub scope: InvalidationScope,
}

/// What part of a namespace to invalidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidationScope {
    /// These keys (`"scope":"keys"`); never empty on the wire.
    Keys(Vec<String>),
    /// Every entry of the namespace (`"scope":"namespace"`).
    Namespace,
}

impl CacheInvalidation {
    /// Parses and validates an invalidation from JSON text.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Self::from_payload(&json::parse_object(text)?)
    }

    /// Validates an envelope's payload as an invalidation.
    pub fn from_payload(payload: &Map<String, Value>) -> Result<Self, ParseError> {
        Self::from_object(payload)
    }

    /// Compact JSON: `{"v":1,"prefix":..,"scope":..[,"keys":[..]]}`.
    pub fn to_json(&self) -> String {
        let keys = match &self.scope {
            InvalidationScope::Keys(keys) => Some(keys.as_slice()),
            InvalidationScope::Namespace => None,
        };
        json::to_json(&Wire {
            v: FORMAT_VERSION,
            prefix: &self.prefix,
            scope: self.scope.name(),
            keys,
        })
    }

    /// The payload object to put in a `cache.invalidate` / `cache.invalidated` envelope.
    pub fn to_value(&self) -> Value {
        // Inserted in alphabetical order so the object serializes identically whether
        // or not some crate in the build turns on serde_json's `preserve_order`.
        let mut object = Map::new();
        if let InvalidationScope::Keys(keys) = &self.scope {
            let keys = keys.iter().cloned().map(Value::String).collect();
            object.insert("keys".into(), Value::Array(keys));
        }
        object.insert("prefix".into(), Value::String(self.prefix.clone()));
        object.insert("scope".into(), Value::String(self.scope.name().into()));
        object.insert("v".into(), Value::from(FORMAT_VERSION));
        Value::Object(object)
    }

    fn from_object(object: &Object) -> Result<Self, ParseError> {
        json::check_version(object)?;
        json::deny_unknown(object, FIELDS, "invalidation")?;
        let prefix = validate_prefix(json::string(object, "prefix")?.as_bytes())
            .map_err(|e| ParseError::invalid("prefix", e.to_string()))?
            .to_owned();
        let scope = match json::string(object, "scope")? {
            "keys" => InvalidationScope::Keys(keys(object)?),
            "namespace" => {
                if object.contains_key("keys") {
                    return Err(ParseError::invalid(
                        "keys",
                        "must be absent when scope is \"namespace\"",
                    ));
                }
                InvalidationScope::Namespace
            }
            other => {
                return Err(ParseError::invalid(
                    "scope",
                    format!(
                        "unknown scope {}; expected \"keys\" or \"namespace\"",
                        json::quote(other)
                    ),
                ))
            }
        };
        Ok(CacheInvalidation { prefix, scope })
    }
}

impl InvalidationScope {
    fn name(&self) -> &'static str {
        match self {
            InvalidationScope::Keys(_) => "keys",
            InvalidationScope::Namespace => "namespace",
        }
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    v: u32,
    prefix: &'a str,
    scope: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<&'a [String]>,
}

fn keys(object: &Object) -> Result<Vec<String>, ParseError> {
    let items = match json::required(object, "keys")? {
        Value::Array(items) => items,
        other => return Err(json::wrong_type("keys", "an array of strings", other)),
    };
    if items.is_empty() {
        return Err(ParseError::invalid(
            "keys",
            "must name at least one key (use scope \"namespace\" for all)",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(key) => Ok(key.clone()),
            other => Err(ParseError::invalid(
                "keys",
                format!(
                    "element {i}: expected a string, got {}",
                    json::describe(other)
                ),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_sample() -> CacheInvalidation {
        CacheInvalidation {
            prefix: "candidates".into(),
            scope: InvalidationScope::Keys(vec!["a".into(), "b\"c".into()]),
        }
    }

    fn field(text: &str) -> &'static str {
        match CacheInvalidation::parse(text) {
            Err(ParseError::Invalid { field, .. }) => field,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn wire_forms() {
        assert_eq!(
            keys_sample().to_json(),
            r#"{"v":1,"prefix":"candidates","scope":"keys","keys":["a","b\"c"]}"#
        );
        let all = CacheInvalidation {
            prefix: "candidates".into(),
            scope: InvalidationScope::Namespace,
        };
        assert_eq!(
            all.to_json(),
            r#"{"v":1,"prefix":"candidates","scope":"namespace"}"#
        );
        for inv in [keys_sample(), all] {
            assert_eq!(CacheInvalidation::parse(&inv.to_json()), Ok(inv.clone()));
            let value = inv.to_value();
            let payload = value.as_object().cloned().unwrap_or_default();
            assert_eq!(CacheInvalidation::from_payload(&payload), Ok(inv.clone()));
            assert_eq!(
                value,
                serde_json::from_str::<Value>(&inv.to_json()).unwrap_or_default()
            );
        }
    }

    #[test]
    fn to_value_serializes_sorted() {
        assert_eq!(
            keys_sample().to_value().to_string(),
            r#"{"keys":["a","b\"c"],"prefix":"candidates","scope":"keys","v":1}"#
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(
            field(r#"{"v":1,"prefix":"c","scope":"keys","keys":[]}"#),
            "keys"
        );
        assert_eq!(field(r#"{"v":1,"prefix":"c","scope":"keys"}"#), "keys");
        assert_eq!(
            field(r#"{"v":1,"prefix":"c","scope":"keys","keys":"a"}"#),
            "keys"
        );
        assert_eq!(
            field(r#"{"v":1,"prefix":"c","scope":"keys","keys":["a",1]}"#),
            "keys"
        );
        assert_eq!(
            field(r#"{"v":1,"prefix":"c","scope":"namespace","keys":["a"]}"#),
            "keys"
        );
        assert_eq!(
            field(r#"{"v":1,"prefix":"c:d","scope":"namespace"}"#),
            "prefix"
        );
        assert_eq!(
            field(r#"{"v":1,"prefix":"","scope":"namespace"}"#),
            "prefix"
        );
        assert_eq!(field(r#"{"v":1,"prefix":5,"scope":"namespace"}"#), "prefix");
        assert_eq!(
            field(r#"{"v":1,"prefix":"c","scope":"everything"}"#),
            "scope"
        );
        assert_eq!(
            field(r#"{"v":1,"prefix":"c","scope":"namespace","ttl":3}"#),
            "invalidation"
        );
        assert_eq!(field(r#"{"prefix":"c","scope":"namespace"}"#), "v");
        assert_eq!(
            CacheInvalidation::parse(r#"{"v":9,"prefix":"c:d"}"#),
            Err(ParseError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn prefix_errors_reach_the_user_verbatim() {
        let err = CacheInvalidation::parse(r#"{"v":1,"prefix":"a b","scope":"namespace"}"#)
            .expect_err("space");
        assert_eq!(
            err.to_string(),
            "invalid field `prefix`: prefix contains ' ' at byte 1; allowed: A-Z a-z 0-9 _ . -"
        );
    }

    #[test]
    fn empty_key_strings_are_keys() {
        let inv = CacheInvalidation::parse(r#"{"v":1,"prefix":"c","scope":"keys","keys":[""]}"#);
        assert_eq!(
            inv.map(|i| i.scope),
            Ok(InvalidationScope::Keys(vec![String::new()]))
        );
    }
}
