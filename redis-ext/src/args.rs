//! Parsing of command arguments that are not plain strings: ttl and options.

use crate::error::{CacheError, CacheResult};

/// Largest value an entry may hold (Redis's default `proto-max-bulk-len`).
pub const MAX_VALUE_LEN: usize = 512 * 1024 * 1024;

/// Largest ttl accepted: far enough for any cache, small enough that
/// `now + ttl` in milliseconds never overflows.
pub const MAX_TTL_SECONDS: i64 = 100 * 365 * 24 * 3600;

/// Parses a ttl: whole seconds, > 0, no sign, no spaces, no fraction.
pub fn parse_ttl(raw: &[u8]) -> CacheResult<i64> {
    if raw.is_empty() || raw.len() > 19 || !raw.iter().all(u8::is_ascii_digit) {
        return Err(if raw.len() > 19 && raw.iter().all(u8::is_ascii_digit) {
            CacheError::TtlTooLarge
        } else {
            CacheError::BadTtl
        });
    }
    let mut value: i64 = 0;
    for &digit in raw {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(digit - b'0')))
            .ok_or(CacheError::TtlTooLarge)?;
    }
    match value {
        0 => Err(CacheError::BadTtl),
        v if v > MAX_TTL_SECONDS => Err(CacheError::TtlTooLarge),
        v => Ok(v),
    }
}

/// The absolute expiry, in Unix milliseconds, of a write at `now_ms` with a
/// `ttl` in seconds: an error rather than a wrapped or saturated time (a
/// saturated one would be an entry that never expires).
pub fn expire_at_ms(now_ms: i64, ttl: i64) -> CacheResult<i64> {
    ttl.checked_mul(1000)
        .and_then(|ms| now_ms.checked_add(ms))
        .filter(|&at| at > 0)
        .ok_or(CacheError::TtlTooLarge)
}

/// Parses a count argument: a whole number >= 1.
pub fn parse_count(raw: &[u8]) -> CacheResult<usize> {
    std::str::from_utf8(raw)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .ok_or(CacheError::BadCount)
}

/// The existence condition of `NSCACHE.SET`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SetCondition {
    /// Write unconditionally.
    #[default]
    Always,
    /// Write only when no live entry exists.
    IfAbsent,
    /// Write only when a live entry exists.
    IfPresent,
}

/// Options of `NSCACHE.SET` after `value`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// NX / XX.
    pub condition: SetCondition,
    /// `LEASE token`: write only if this FETCH lease still holds (SPEC 2.4).
    pub lease: Option<u64>,
}

/// Parses the options of `NSCACHE.SET` (case-insensitive), refusing unknown and
/// conflicting ones: NX with XX, and LEASE with either (a lease write is
/// conditional already: on the lease).
pub fn parse_set_options<'a>(rest: impl Iterator<Item = &'a [u8]>) -> CacheResult<SetOptions> {
    let mut options = SetOptions::default();
    let mut rest = rest.peekable();
    while let Some(word) = rest.next() {
        if word.eq_ignore_ascii_case(b"LEASE") {
            let token = rest
                .next()
                .ok_or(CacheError::MissingArgument("LEASE needs a token"))?;
            if options.lease.is_some() {
                return Err(CacheError::DuplicateOption("LEASE"));
            }
            options.lease = Some(crate::lease::parse_token(token)?);
            continue;
        }
        let condition = if word.eq_ignore_ascii_case(b"NX") {
            SetCondition::IfAbsent
        } else if word.eq_ignore_ascii_case(b"XX") {
            SetCondition::IfPresent
        } else {
            return Err(CacheError::UnknownOption(printable(word)));
        };
        if options.condition != SetCondition::Always && options.condition != condition {
            return Err(CacheError::ConflictingOptions("NX", "XX"));
        }
        options.condition = condition;
    }
    match (options.lease, options.condition) {
        (Some(_), SetCondition::IfAbsent) => Err(CacheError::ConflictingOptions("LEASE", "NX")),
        (Some(_), SetCondition::IfPresent) => Err(CacheError::ConflictingOptions("LEASE", "XX")),
        _ => Ok(options),
    }
}

/// Renders client bytes for an error message: at most 32 bytes, as printable
/// ASCII with everything else written `\xNN`.
pub fn printable(raw: &[u8]) -> String {
    let shown = &raw[..raw.len().min(32)];
    let mut out = ascii_escape(shown);
    if raw.len() > 32 {
        out.push_str("...");
    }
    out
}

/// Escapes bytes to printable ASCII (`\xNN` for the rest): safe in a RESP error
/// line and in a C string.
pub fn ascii_escape(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for &b in raw {
        if (0x20..0x7f).contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_checked_not_saturated() {
        assert_eq!(expire_at_ms(1_000, 2), Ok(3_000));
        let now = 1_800_000_000_000;
        assert!(expire_at_ms(now, MAX_TTL_SECONDS).is_ok());
        assert_eq!(
            expire_at_ms(i64::MAX - 10, 1),
            Err(CacheError::TtlTooLarge),
            "would saturate into an entry that never expires"
        );
        assert_eq!(expire_at_ms(0, i64::MAX), Err(CacheError::TtlTooLarge));
        assert_eq!(expire_at_ms(-5_000, 1), Err(CacheError::TtlTooLarge));
    }

    #[test]
    fn ttl_accepts_positive_whole_seconds() {
        assert_eq!(parse_ttl(b"1"), Ok(1));
        assert_eq!(parse_ttl(b"3600"), Ok(3600));
        assert_eq!(parse_ttl(b"007"), Ok(7));
    }

    #[test]
    fn ttl_refuses_everything_else() {
        for bad in [
            &b"0"[..],
            b"-1",
            b"+1",
            b"1.5",
            b"abc",
            b"",
            b" 1",
            b"1 ",
            b"1e3",
        ] {
            assert_eq!(parse_ttl(bad), Err(CacheError::BadTtl), "{bad:?}");
        }
        for huge in [
            &b"99999999999999999999999"[..],
            b"9223372036854775807",
            b"3153600001",
        ] {
            assert_eq!(parse_ttl(huge), Err(CacheError::TtlTooLarge), "{huge:?}");
        }
    }

    #[test]
    fn escaping_leaves_only_printable_ascii() {
        // U+4E00 encodes as e4 b8 80; a char-to-byte cast would have made a NUL.
        assert_eq!(ascii_escape("a一\0%".as_bytes()), "a\\xe4\\xb8\\x80\\x00%");
        assert_eq!(printable(&[b'x'; 40]), format!("{}...", "x".repeat(32)));
    }

    #[test]
    fn set_options_parse_nx_xx_case_insensitively() {
        let parse = |words: &[&[u8]]| parse_set_options(words.iter().copied());
        assert_eq!(parse(&[]).map(|o| o.condition), Ok(SetCondition::Always));
        assert_eq!(
            parse(&[b"nx"]).map(|o| o.condition),
            Ok(SetCondition::IfAbsent)
        );
        assert_eq!(
            parse(&[b"XX"]).map(|o| o.condition),
            Ok(SetCondition::IfPresent)
        );
        assert_eq!(
            parse(&[b"NX", b"nx"]).map(|o| o.condition),
            Ok(SetCondition::IfAbsent)
        );
        assert_eq!(
            parse(&[b"NX", b"XX"]),
            Err(CacheError::ConflictingOptions("NX", "XX"))
        );
        assert_eq!(
            parse(&[b"lease", b"00000000000000ab"]).map(|o| o.lease),
            Ok(Some(0xab))
        );
        assert_eq!(
            parse(&[b"LEASE", b"00000000000000ab", b"NX"]),
            Err(CacheError::ConflictingOptions("LEASE", "NX"))
        );
        assert_eq!(
            parse(&[b"XX", b"LEASE", b"00000000000000ab"]),
            Err(CacheError::ConflictingOptions("LEASE", "XX"))
        );
        assert_eq!(parse(&[b"LEASE", b"zz"]), Err(CacheError::BadToken));
        assert!(matches!(
            parse(&[b"LEASE"]),
            Err(CacheError::MissingArgument(_))
        ));
        assert_eq!(
            parse(&[b"LEASE", b"00000000000000ab", b"LEASE", b"00000000000000ab"]),
            Err(CacheError::DuplicateOption("LEASE"))
        );
        assert_eq!(
            parse(&[b"PX\r\n"]),
            Err(CacheError::UnknownOption("PX\\x0d\\x0a".to_string()))
        );
    }
}
