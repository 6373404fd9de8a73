//! `Timestamp`: an instant in UTC with microsecond precision, and its one text form
//! `YYYY-MM-DDTHH:MM:SS.ffffffZ` (RFC 3339, always six fraction digits, always `Z`).
//!
//! The calendar arithmetic is Howard Hinnant's `days_from_civil` / `civil_from_days`
//! (proleptic Gregorian calendar), so no date crate is needed.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::ParseError;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;
/// 2000-01-01T00:00:00Z, the zero of Postgres timestamps, in Unix microseconds.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800 * MICROS_PER_SECOND;
/// Days from 0000-03-01 (start of a 400-year era) to 1970-01-01.
const UNIX_EPOCH_DAY_OFFSET: i64 = 719_468;
const DAYS_PER_ERA: i64 = 146_097;

/// The text layout, quoted in error messages.
const LAYOUT: &str = "YYYY-MM-DDTHH:MM:SS.ffffffZ";
/// Length in bytes of every valid text form.
const TEXT_LEN: usize = 27;
/// Fixed punctuation of the text form: (byte index, byte).
const SEPARATORS: [(usize, u8); 7] = [
    (4, b'-'),
    (7, b'-'),
    (10, b'T'),
    (13, b':'),
    (16, b':'),
    (19, b'.'),
    (26, b'Z'),
];
/// The field name parse errors carry; timestamps travel as an envelope's `occurred_at`.
const FIELD: &str = "occurred_at";

/// Microseconds since 1970-01-01T00:00:00Z, between 0000-01-01T00:00:00.000000Z and
/// 9999-12-31T23:59:59.999999Z inclusive.
///
/// The range is that of the four-digit wire form; constructors saturate to it so that
/// every `Timestamp` can be written and read back unchanged (Postgres `-infinity` and
/// `infinity` therefore become `MIN` and `MAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// 0000-01-01T00:00:00.000000Z, the earliest representable instant.
    pub const MIN: Timestamp = Timestamp(-62_167_219_200 * MICROS_PER_SECOND);
    /// 9999-12-31T23:59:59.999999Z, the latest representable instant.
    pub const MAX: Timestamp = Timestamp(253_402_300_800 * MICROS_PER_SECOND - 1);

    /// From microseconds since the Unix epoch, saturating to [`MIN`](Self::MIN)..=[`MAX`](Self::MAX).
    pub const fn from_unix_micros(micros: i64) -> Self {
        if micros < Self::MIN.0 {
            Self::MIN
        } else if micros > Self::MAX.0 {
            Self::MAX
        } else {
            Timestamp(micros)
        }
    }

    /// Microseconds since the Unix epoch (negative before 1970).
    pub const fn unix_micros(self) -> i64 {
        self.0
    }

    /// From a Postgres `timestamptz` datum (microseconds since 2000-01-01 UTC), saturating.
    pub const fn from_postgres_micros(micros: i64) -> Self {
        Self::from_unix_micros(micros.saturating_add(POSTGRES_EPOCH_UNIX_MICROS))
    }

    /// As a Postgres `timestamptz` datum (microseconds since 2000-01-01 UTC).
    pub const fn postgres_micros(self) -> i64 {
        // Cannot overflow: both terms are far inside i64 given the clamped range.
        self.0 - POSTGRES_EPOCH_UNIX_MICROS
    }

    /// The current time from the system clock.
    pub fn now() -> Self {
        let micros = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
            // A clock set before 1970 is odd but not an error.
            Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
        };
        Self::from_unix_micros(micros)
    }

    /// Parses exactly `YYYY-MM-DDTHH:MM:SS.ffffffZ`; anything else is rejected.
    ///
    /// Being this strict keeps one text per instant, so re-serializing a parsed message
    /// reproduces it byte for byte.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let bytes = text.as_bytes();
        if bytes.len() != TEXT_LEN {
            return Err(invalid(format!(
                "expected {LAYOUT} ({TEXT_LEN} bytes), got {} bytes",
                bytes.len()
            )));
        }
        for (at, expected) in SEPARATORS {
            if bytes[at] != expected {
                return Err(invalid(format!(
                    "expected '{}' at byte {at} of {LAYOUT}, found {}",
                    char::from(expected),
                    show_byte(bytes[at])
                )));
            }
        }
        let year = digits(bytes, 0, 4)?;
        let month = digits(bytes, 5, 2)?;
        let day = digits(bytes, 8, 2)?;
        let hour = digits(bytes, 11, 2)?;
        let minute = digits(bytes, 14, 2)?;
        let second = digits(bytes, 17, 2)?;
        let micros = digits(bytes, 20, 6)?;

        if !(1..=12).contains(&month) {
            return Err(invalid(format!("month {month:02} is out of range 01-12")));
        }
        let month_len = days_in_month(year, month);
        if !(1..=month_len).contains(&day) {
            return Err(invalid(format!(
                "day {day:02} does not exist in {year:04}-{month:02}, which has {month_len} days"
            )));
        }
        if hour > 23 {
            return Err(invalid(format!("hour {hour:02} is out of range 00-23")));
        }
        if minute > 59 {
            return Err(invalid(format!("minute {minute:02} is out of range 00-59")));
        }
        if second > 59 {
            // Leap seconds included: Unix time, and so Postgres, has no 23:59:60.
            return Err(invalid(format!("second {second:02} is out of range 00-59")));
        }

        let days = days_from_civil(year, month, day);
        Ok(Timestamp(
            days * MICROS_PER_DAY
                + hour * MICROS_PER_HOUR
                + minute * MICROS_PER_MINUTE
                + second * MICROS_PER_SECOND
                + micros,
        ))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(MICROS_PER_DAY);
        let time = self.0.rem_euclid(MICROS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            time / MICROS_PER_HOUR,
            time % MICROS_PER_HOUR / MICROS_PER_MINUTE,
            time % MICROS_PER_MINUTE / MICROS_PER_SECOND,
            time % MICROS_PER_SECOND,
        )
    }
}

impl FromStr for Timestamp {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TimestampVisitor)
    }
}

struct TimestampVisitor;

impl Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a UTC timestamp formatted as {LAYOUT}")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Timestamp, E> {
        Timestamp::parse(text).map_err(E::custom)
    }
}

fn invalid(reason: String) -> ParseError {
    ParseError::invalid(FIELD, reason)
}

/// Reads `len` ASCII digits at `start`; `len` is at most 6, so the value fits easily.
fn digits(bytes: &[u8], start: usize, len: usize) -> Result<i64, ParseError> {
    let mut value = 0;
    for (at, &b) in bytes.iter().enumerate().skip(start).take(len) {
        if !b.is_ascii_digit() {
            return Err(invalid(format!(
                "expected a digit at byte {at} of {LAYOUT}, found {}",
                show_byte(b)
            )));
        }
        value = value * 10 + i64::from(b - b'0');
    }
    Ok(value)
}

/// Shows a byte of possibly non-UTF-8-aligned input without splitting a character.
fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() || b == b' ' {
        format!("'{}'", char::from(b))
    } else {
        format!("byte 0x{b:02X}")
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date; months 1-12.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count years from March so that the leap day is the last day of the year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - UNIX_EPOCH_DAY_OFFSET
}

/// The proleptic Gregorian date (year, month 1-12, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + UNIX_EPOCH_DAY_OFFSET;
    let era = days.div_euclid(DAYS_PER_ERA);
    let day_of_era = days - era * DAYS_PER_ERA;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str, unix_micros: i64) {
        let ts = Timestamp::parse(text).expect(text);
        assert_eq!(ts.unix_micros(), unix_micros, "{text}");
        assert_eq!(Timestamp::from_unix_micros(unix_micros).to_string(), text);
    }

    #[test]
    fn unix_epoch() {
        round_trip("1970-01-01T00:00:00.000000Z", 0);
    }

    #[test]
    fn before_1970() {
        round_trip("1969-12-31T23:59:59.999999Z", -1);
        round_trip("1969-12-31T00:00:00.000000Z", -MICROS_PER_DAY);
        round_trip(
            "1900-01-01T00:00:00.000000Z",
            -2_208_988_800 * MICROS_PER_SECOND,
        );
        round_trip(
            "1600-02-29T12:00:00.500000Z",
            -11_670_955_200 * MICROS_PER_SECOND + 500_000,
        );
    }

    #[test]
    fn leap_days() {
        round_trip("2024-02-29T13:45:07.123456Z", 1_709_214_307_123_456);
        round_trip(
            "2000-02-29T00:00:00.000000Z",
            951_782_400 * MICROS_PER_SECOND,
        );
        assert!(Timestamp::parse("2023-02-29T00:00:00.000000Z").is_err());
        assert!(Timestamp::parse("1900-02-29T00:00:00.000000Z").is_err());
        assert!(Timestamp::parse("2100-02-29T00:00:00.000000Z").is_err());
    }

    #[test]
    fn postgres_epoch() {
        let ts = Timestamp::from_postgres_micros(0);
        assert_eq!(ts.to_string(), "2000-01-01T00:00:00.000000Z");
        assert_eq!(ts.unix_micros(), 946_684_800_000_000);
        assert_eq!(ts.postgres_micros(), 0);
        assert_eq!(
            Timestamp::from_postgres_micros(-1).to_string(),
            "1999-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn range_ends_and_saturation() {
        assert_eq!(Timestamp::MIN.to_string(), "0000-01-01T00:00:00.000000Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999999Z");
        assert_eq!(
            Timestamp::parse("0000-01-01T00:00:00.000000Z"),
            Ok(Timestamp::MIN)
        );
        assert_eq!(
            Timestamp::parse("9999-12-31T23:59:59.999999Z"),
            Ok(Timestamp::MAX)
        );
        assert_eq!(Timestamp::from_unix_micros(i64::MIN), Timestamp::MIN);
        assert_eq!(Timestamp::from_unix_micros(i64::MAX), Timestamp::MAX);
        // Postgres -infinity and infinity.
        assert_eq!(Timestamp::from_postgres_micros(i64::MIN), Timestamp::MIN);
        assert_eq!(Timestamp::from_postgres_micros(i64::MAX), Timestamp::MAX);
        assert_eq!(
            Timestamp::from_unix_micros(Timestamp::MAX.unix_micros() + 1),
            Timestamp::MAX
        );
    }

    #[test]
    fn calendar_matches_a_day_by_day_walk() {
        let (mut year, mut month, mut day) = (0, 1, 1);
        let first = days_from_civil(0, 1, 1);
        let last = days_from_civil(9999, 12, 31);
        for days in first..=last {
            assert_eq!(days_from_civil(year, month, day), days);
            assert_eq!(civil_from_days(days), (year, month, day));
            day += 1;
            if day > days_in_month(year, month) {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
        assert_eq!((year, month, day), (10000, 1, 1));
    }

    #[test]
    fn every_display_parses_back() {
        // A stride that is prime and not a multiple of a day visits many times of day.
        let mut micros = Timestamp::MIN.unix_micros();
        while micros <= Timestamp::MAX.unix_micros() {
            let ts = Timestamp::from_unix_micros(micros);
            let text = ts.to_string();
            assert_eq!(text.len(), TEXT_LEN);
            assert_eq!(Timestamp::parse(&text), Ok(ts), "{text}");
            micros += 3_155_760_000_000 + 7_919;
        }
    }

    #[test]
    fn rejects_everything_else() {
        for text in [
            "",
            "2024-02-29",
            "2024-02-29T13:45:07Z",
            "2024-02-29T13:45:07.123Z",
            "2024-02-29T13:45:07.1234567Z",
            "2024-02-29T13:45:07.123456",
            "2024-02-29T13:45:07.123456z",
            "2024-02-29t13:45:07.123456Z",
            "2024-02-29 13:45:07.123456Z",
            "2024-02-29T13:45:07,123456Z",
            "2024-02-29T13:45:07.123456+00:00",
            "2024-02-29T13:45:07.123456+0",
            "+024-02-29T13:45:07.123456Z",
            "-024-02-29T13:45:07.123456Z",
            "2024-2-029T13:45:07.123456Z",
            "2024-00-10T00:00:00.000000Z",
            "2024-13-10T00:00:00.000000Z",
            "2024-01-00T00:00:00.000000Z",
            "2024-01-32T00:00:00.000000Z",
            "2024-04-31T00:00:00.000000Z",
            "2024-02-30T00:00:00.000000Z",
            "2024-01-01T24:00:00.000000Z",
            "2024-01-01T00:60:00.000000Z",
            "2024-01-01T23:59:60.000000Z",
            "2024-01-01T00:00:00.00000aZ",
            "2024-01-01T00:00:00.-00000Z",
            " 2024-01-01T00:00:00.00000Z",
            "2024-01-01T00:00:00.00000\u{e9}",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}.",
        ] {
            match Timestamp::parse(text) {
                Err(ParseError::Invalid {
                    field: "occurred_at",
                    reason,
                }) => {
                    assert!(!reason.is_empty());
                }
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let reason = |text: &str| match Timestamp::parse(text) {
            Err(ParseError::Invalid { reason, .. }) => reason,
            other => panic!("{text:?} gave {other:?}"),
        };
        assert_eq!(
            reason("2024-02-30T00:00:00.000000Z"),
            "day 30 does not exist in 2024-02, which has 29 days"
        );
        assert_eq!(
            reason("2024-02-29T13:45:07.123Z"),
            "expected YYYY-MM-DDTHH:MM:SS.ffffffZ (27 bytes), got 24 bytes"
        );
        assert_eq!(
            reason("2024-02-29T13:45:07.123456+"),
            "expected 'Z' at byte 26 of YYYY-MM-DDTHH:MM:SS.ffffffZ, found '+'"
        );
    }

    #[test]
    fn serde_uses_the_text_form() {
        let ts = Timestamp::from_unix_micros(1_709_214_307_123_456);
        let json = serde_json::to_string(&ts).expect("serialize");
        assert_eq!(json, "\"2024-02-29T13:45:07.123456Z\"");
        assert_eq!(
            serde_json::from_str::<Timestamp>(&json).expect("deserialize"),
            ts
        );
        assert!(serde_json::from_str::<Timestamp>("\"2024-02-29\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("1709214307123456").is_err());
    }

    #[test]
    fn now_is_recent_and_in_range() {
        let now = Timestamp::now();
        assert!(now > Timestamp::parse("2020-01-01T00:00:00.000000Z").expect("valid"));
        assert!(now < Timestamp::MAX);
    }

    #[test]
    fn ordering_follows_time() {
        let a = Timestamp::parse("1969-12-31T23:59:59.999999Z").expect("valid");
        let b = Timestamp::parse("1970-01-01T00:00:00.000000Z").expect("valid");
        assert!(a < b);
        assert_eq!("1970-01-01T00:00:00.000000Z".parse::<Timestamp>(), Ok(b));
    }
}
