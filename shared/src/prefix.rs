//! Namespace prefixes (SPEC 2.1): 1 to 64 bytes of `A-Z a-z 0-9 _ . -`.
//!
//! The Redis module validates command arguments with this and Postgres validates
//! `txevents.invalidate` arguments with it, so both reject the same names with the
//! same words.

/// Longest accepted prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 64;

/// Why a namespace prefix was refused; the messages go to Redis and Postgres users as-is.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum PrefixError {
    /// The prefix has no bytes.
    #[error("prefix is empty; it needs 1 to 64 of A-Z a-z 0-9 _ . -")]
    Empty,
    /// The prefix is longer than [`MAX_PREFIX_LEN`] bytes (the length is carried).
    #[error("prefix is {0} bytes long, the limit is 64")]
    TooLong(usize),
    /// A byte outside the allowed set: the byte as a char (U+FFFD if not ASCII) and its index.
    #[error("prefix contains {0:?} at byte {1}; allowed: A-Z a-z 0-9 _ . -")]
    InvalidByte(char, usize),
}

/// Checks a raw prefix argument and returns it as text.
pub fn validate_prefix(raw: &[u8]) -> Result<&str, PrefixError> {
    if raw.is_empty() {
        return Err(PrefixError::Empty);
    }
    if raw.len() > MAX_PREFIX_LEN {
        return Err(PrefixError::TooLong(raw.len()));
    }
    if let Some((at, &b)) = raw.iter().enumerate().find(|&(_, &b)| !is_allowed(b)) {
        let shown = if b.is_ascii() {
            char::from(b)
        } else {
            char::REPLACEMENT_CHARACTER
        };
        return Err(PrefixError::InvalidByte(shown, at));
    }
    // Every byte is ASCII by now, so this cannot fail; the error arm keeps it panic-free.
    std::str::from_utf8(raw)
        .map_err(|e| PrefixError::InvalidByte(char::REPLACEMENT_CHARACTER, e.valid_up_to()))
}

fn is_allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_boundaries() {
        assert_eq!(validate_prefix(b""), Err(PrefixError::Empty));
        assert_eq!(validate_prefix(b"a"), Ok("a"));
        let max = "x".repeat(MAX_PREFIX_LEN);
        assert_eq!(validate_prefix(max.as_bytes()), Ok(max.as_str()));
        let over = "x".repeat(MAX_PREFIX_LEN + 1);
        assert_eq!(
            validate_prefix(over.as_bytes()),
            Err(PrefixError::TooLong(65))
        );
    }

    #[test]
    fn every_byte_value() {
        for b in 0..=u8::MAX {
            let raw = [b'a', b, b'z'];
            let allowed = b.is_ascii_uppercase()
                || b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b"_.-".contains(&b);
            match validate_prefix(&raw) {
                Ok(text) => {
                    assert!(allowed, "byte {b:#04x} accepted");
                    assert_eq!(text.as_bytes(), raw);
                }
                Err(PrefixError::InvalidByte(shown, 1)) => {
                    assert!(!allowed, "byte {b:#04x} refused");
                    let expected = if b < 0x80 {
                        char::from(b)
                    } else {
                        char::REPLACEMENT_CHARACTER
                    };
                    assert_eq!(shown, expected);
                }
                Err(other) => panic!("byte {b:#04x}: {other:?}"),
            }
        }
    }

    #[test]
    fn reports_the_first_bad_byte() {
        assert_eq!(
            validate_prefix(b"ok:bad bad"),
            Err(PrefixError::InvalidByte(':', 2))
        );
        assert_eq!(
            validate_prefix("caf\u{e9}".as_bytes()),
            Err(PrefixError::InvalidByte(char::REPLACEMENT_CHARACTER, 3))
        );
    }

    #[test]
    fn typical_names() {
        for name in [
            "candidates",
            "selection-processes",
            "analyses.v2",
            "A_B",
            "0",
            "-",
            "..",
            "_",
        ] {
            assert_eq!(validate_prefix(name.as_bytes()), Ok(name));
        }
    }

    #[test]
    fn messages() {
        assert_eq!(
            PrefixError::InvalidByte(':', 2).to_string(),
            "prefix contains ':' at byte 2; allowed: A-Z a-z 0-9 _ . -"
        );
        assert_eq!(
            PrefixError::InvalidByte(' ', 0).to_string(),
            "prefix contains ' ' at byte 0; allowed: A-Z a-z 0-9 _ . -"
        );
        assert_eq!(
            PrefixError::TooLong(70).to_string(),
            "prefix is 70 bytes long, the limit is 64"
        );
    }
}
