//! The one error type every parser of this crate returns.

/// Why a wire message was rejected; the text is meant to be shown to users as-is.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The text is not JSON, or not the JSON shape a message needs.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The message carries a format version this build cannot read.
    #[error("unsupported format version {0} (this build reads version 1)")]
    UnsupportedVersion(u64),
    /// A field is missing, has the wrong type or holds a value outside its rules.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        /// Name of the offending field as it appears on the wire.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<serde_json::Error> for ParseError {
    fn from(err: serde_json::Error) -> Self {
        ParseError::Json(err.to_string())
    }
}

impl ParseError {
    /// Shorthand used by the parsers, which all report field problems the same way.
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ParseError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// Re-labels an error found inside a nested object so that the user can tell which
    /// of several nested objects (read or write latency, which namespace) is at fault.
    pub(crate) fn within(self, outer: &'static str, location: &str) -> Self {
        match self {
            ParseError::Invalid { field, reason } => ParseError::Invalid {
                field: outer,
                reason: format!("{location}{field}: {reason}"),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_errors_become_json_errors() {
        let err = serde_json::from_str::<serde_json::Value>("{").expect_err("truncated");
        assert!(matches!(ParseError::from(err), ParseError::Json(_)));
    }

    #[test]
    fn within_keeps_the_inner_field_in_the_reason() {
        let err = ParseError::invalid("p50", "expected an integer").within("read_latency_us", "");
        assert_eq!(
            err.to_string(),
            "invalid field `read_latency_us`: p50: expected an integer"
        );
    }

    #[test]
    fn within_leaves_version_errors_alone() {
        let err = ParseError::UnsupportedVersion(2).within("event", "");
        assert_eq!(err, ParseError::UnsupportedVersion(2));
    }

    #[test]
    fn messages_read_well() {
        assert_eq!(
            ParseError::UnsupportedVersion(7).to_string(),
            "unsupported format version 7 (this build reads version 1)"
        );
        assert_eq!(
            ParseError::invalid("id", "must be >= 1, got 0").to_string(),
            "invalid field `id`: must be >= 1, got 0"
        );
    }
}
