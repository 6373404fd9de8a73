//! Golden vectors: the files in `tests/vectors/` pin the wire format (see its README).
//!
//! Valid vectors must parse and re-serialize byte for byte; invalid ones must be
//! rejected with the listed error; nothing, including truncated and mutated vectors,
//! may panic.

use std::fs;
use std::path::{Path, PathBuf};

use cachetx_shared::{
    CacheInvalidation, Envelope, InvalidationScope, NamespaceStats, NotifyPayload, ParseError,
    StatsReport, INVALIDATED_EVENT_TYPE, INVALIDATE_EVENT_TYPE,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Envelope,
    Notify,
    Invalidation,
    NamespaceStats,
    StatsReport,
}

/// Which type a vector file holds, from its name prefix.
fn kind_of(name: &str) -> Kind {
    const ROUTES: [(&str, Kind); 5] = [
        ("envelope_", Kind::Envelope),
        ("notify_", Kind::Notify),
        ("invalidation_", Kind::Invalidation),
        ("stats_namespace", Kind::NamespaceStats),
        ("stats_report", Kind::StatsReport),
    ];
    ROUTES
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|&(_, kind)| kind)
        .unwrap_or_else(|| panic!("{name}: file name does not start with a known type prefix"))
}

/// Parses `text` as `kind` and writes it back out.
fn reparse(kind: Kind, text: &str) -> Result<String, ParseError> {
    match kind {
        Kind::Envelope => Envelope::parse(text).map(|v| v.to_json()),
        Kind::Notify => NotifyPayload::parse(text).map(|v| v.to_json()),
        Kind::Invalidation => CacheInvalidation::parse(text).map(|v| v.to_json()),
        Kind::NamespaceStats => NamespaceStats::parse(text).map(|v| v.to_json()),
        Kind::StatsReport => StatsReport::parse(text).map(|v| v.to_json()),
    }
}

/// Whether serde's `Deserialize` accepts `text`, for the types that implement it.
fn serde_accepts(kind: Kind, text: &str) -> Option<bool> {
    match kind {
        Kind::Envelope => Some(serde_json::from_str::<Envelope>(text).is_ok()),
        Kind::NamespaceStats => Some(serde_json::from_str::<NamespaceStats>(text).is_ok()),
        Kind::StatsReport => Some(serde_json::from_str::<StatsReport>(text).is_ok()),
        Kind::Notify | Kind::Invalidation => None,
    }
}

/// Parses and checks everything that must hold for any input: no panic, serde agrees,
/// and an accepted input re-serializes to a fixed point.
fn check_any(kind: Kind, text: &str) -> Result<String, ParseError> {
    let result = reparse(kind, text);
    if let Some(accepted) = serde_accepts(kind, text) {
        assert_eq!(accepted, result.is_ok(), "serde disagrees on {text:?}");
    }
    if let Ok(canonical) = &result {
        assert_eq!(
            reparse(kind, canonical).as_ref(),
            Ok(canonical),
            "not a fixed point: {text:?}"
        );
    }
    result
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// (file name, contents) of every `.json` file in `dir`, sorted by name.
fn json_files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = fs::read_dir(dir)
        .expect("vectors directory")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 file name")
                .to_owned();
            let text = fs::read_to_string(&path).expect("vector is UTF-8");
            (name, text)
        })
        .collect();
    files.sort();
    files
}

fn valid_vectors() -> Vec<(String, String)> {
    let files = json_files(&vectors_dir());
    assert!(files.len() >= 12, "valid vectors missing");
    files
}

fn invalid_vectors() -> Vec<(String, String)> {
    let files = json_files(&vectors_dir().join("invalid"));
    assert!(files.len() >= 80, "invalid vectors missing");
    files
}

#[derive(Debug)]
enum Expect {
    Json,
    Version(u64),
    Field(&'static str),
}

use Expect::{Field, Json, Version};

/// Why each invalid vector must be rejected.
const INVALID: &[(&str, Expect)] = &[
    ("envelope_aggregate_id_number.json", Field("aggregate_id")),
    (
        "envelope_aggregate_type_missing.json",
        Field("aggregate_type"),
    ),
    ("envelope_empty.json", Json),
    ("envelope_empty_object.json", Field("v")),
    ("envelope_headers_string.json", Field("headers")),
    ("envelope_id_fraction.json", Field("id")),
    ("envelope_id_negative.json", Field("id")),
    ("envelope_id_string.json", Field("id")),
    ("envelope_id_too_large.json", Field("id")),
    ("envelope_id_zero.json", Field("id")),
    ("envelope_invalid_utf8_escape.json", Json),
    ("envelope_not_json.json", Json),
    ("envelope_not_object.json", Json),
    (
        "envelope_occurred_at_feb_29_non_leap.json",
        Field("occurred_at"),
    ),
    ("envelope_occurred_at_feb_30.json", Field("occurred_at")),
    ("envelope_occurred_at_hour_24.json", Field("occurred_at")),
    (
        "envelope_occurred_at_leap_second.json",
        Field("occurred_at"),
    ),
    ("envelope_occurred_at_lowercase.json", Field("occurred_at")),
    (
        "envelope_occurred_at_millis_only.json",
        Field("occurred_at"),
    ),
    ("envelope_occurred_at_month_13.json", Field("occurred_at")),
    (
        "envelope_occurred_at_no_fraction.json",
        Field("occurred_at"),
    ),
    ("envelope_occurred_at_offset.json", Field("occurred_at")),
    (
        "envelope_occurred_at_space_separator.json",
        Field("occurred_at"),
    ),
    (
        "envelope_occurred_at_unix_number.json",
        Field("occurred_at"),
    ),
    ("envelope_occurred_at_without_z.json", Field("occurred_at")),
    ("envelope_payload_array.json", Field("payload")),
    ("envelope_payload_missing.json", Field("payload")),
    ("envelope_payload_null.json", Field("payload")),
    ("envelope_trailing_garbage.json", Json),
    ("envelope_truncated.json", Json),
    ("envelope_txid_missing.json", Field("txid")),
    ("envelope_txid_negative.json", Field("txid")),
    ("envelope_txid_string.json", Field("txid")),
    ("envelope_type_empty.json", Field("type")),
    ("envelope_type_missing.json", Field("type")),
    ("envelope_type_null.json", Field("type")),
    ("envelope_unknown_field.json", Field("envelope")),
    ("envelope_version_0.json", Version(0)),
    ("envelope_version_2.json", Version(2)),
    ("envelope_version_2_other_fields_differ.json", Version(2)),
    ("envelope_version_float.json", Field("v")),
    ("envelope_version_missing.json", Field("v")),
    ("envelope_version_string.json", Field("v")),
    ("invalidation_keys_empty.json", Field("keys")),
    ("invalidation_keys_missing.json", Field("keys")),
    ("invalidation_keys_not_array.json", Field("keys")),
    ("invalidation_keys_not_strings.json", Field("keys")),
    ("invalidation_namespace_with_keys.json", Field("keys")),
    ("invalidation_prefix_bad_char.json", Field("prefix")),
    ("invalidation_prefix_empty.json", Field("prefix")),
    ("invalidation_prefix_non_ascii.json", Field("prefix")),
    ("invalidation_prefix_too_long.json", Field("prefix")),
    ("invalidation_scope_missing.json", Field("scope")),
    ("invalidation_scope_unknown.json", Field("scope")),
    ("invalidation_truncated.json", Json),
    ("invalidation_unknown_field.json", Field("invalidation")),
    ("invalidation_version_2.json", Version(2)),
    ("invalidation_version_missing.json", Field("v")),
    ("notify_event_envelope_version_2.json", Version(2)),
    ("notify_event_invalid_envelope.json", Field("event")),
    ("notify_event_missing.json", Field("event")),
    ("notify_event_not_object.json", Field("event")),
    ("notify_event_with_id_field.json", Field("notify")),
    ("notify_kind_missing.json", Field("kind")),
    ("notify_kind_unknown.json", Field("kind")),
    ("notify_ref_id_zero.json", Field("id")),
    ("notify_ref_type_empty.json", Field("type")),
    ("notify_ref_with_event_field.json", Field("notify")),
    ("notify_truncated.json", Json),
    ("notify_version_2.json", Version(2)),
    ("notify_version_missing.json", Field("v")),
    ("stats_namespace_bytes_fraction.json", Field("bytes")),
    (
        "stats_namespace_hit_ratio_above_one.json",
        Field("hit_ratio"),
    ),
    ("stats_namespace_hit_ratio_null.json", Field("hit_ratio")),
    ("stats_namespace_hits_negative.json", Field("hits")),
    (
        "stats_namespace_latency_missing.json",
        Field("write_latency_us"),
    ),
    (
        "stats_namespace_latency_not_object.json",
        Field("read_latency_us"),
    ),
    (
        "stats_namespace_latency_unknown_field.json",
        Field("read_latency_us"),
    ),
    ("stats_namespace_leases_missing.json", Field("leases")),
    ("stats_namespace_prefix_bad_char.json", Field("prefix")),
    (
        "stats_namespace_stale_sets_rejected_negative.json",
        Field("stale_sets_rejected"),
    ),
    ("stats_namespace_truncated.json", Json),
    (
        "stats_namespace_unknown_field.json",
        Field("namespace stats"),
    ),
    ("stats_report_namespace_invalid.json", Field("namespaces")),
    (
        "stats_report_namespaces_not_array.json",
        Field("namespaces"),
    ),
    ("stats_report_not_object.json", Json),
    ("stats_report_unknown_field.json", Field("stats report")),
    ("stats_report_version_2.json", Version(2)),
    ("stats_report_version_missing.json", Field("v")),
];

#[test]
fn valid_vectors_round_trip_byte_for_byte() {
    for (name, text) in valid_vectors() {
        assert!(
            !text.ends_with('\n'),
            "{name}: vectors are stored without a trailing newline"
        );
        let kind = kind_of(&name);
        match check_any(kind, &text) {
            Ok(written) => assert_eq!(written, text, "{name} does not re-serialize identically"),
            Err(err) => panic!("{name} rejected: {err}"),
        }
    }
}

#[test]
fn invalid_vectors_are_rejected_for_the_listed_reason() {
    let files = invalid_vectors();
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    let listed: Vec<&str> = INVALID.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names, listed,
        "tests/vectors/invalid and the INVALID table differ"
    );

    for ((name, text), (_, expect)) in files.iter().zip(INVALID) {
        let kind = kind_of(name);
        let err = match check_any(kind, text) {
            Ok(_) => panic!("{name} was accepted"),
            Err(err) => err,
        };
        let as_expected = match (expect, &err) {
            (Json, ParseError::Json(_)) => true,
            (Version(want), ParseError::UnsupportedVersion(got)) => want == got,
            (Field(want), ParseError::Invalid { field, .. }) => want == field,
            _ => false,
        };
        assert!(
            as_expected,
            "{name}: expected {expect:?}, got {err:?} ({err})"
        );
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn every_truncation_of_a_valid_vector_is_rejected() {
    for (name, text) in valid_vectors() {
        let kind = kind_of(&name);
        for cut in (0..text.len()).filter(|&cut| text.is_char_boundary(cut)) {
            assert!(
                check_any(kind, &text[..cut]).is_err(),
                "{name} cut to {cut} bytes was accepted"
            );
        }
    }
}

#[test]
fn single_byte_mutations_never_panic() {
    const REPLACEMENTS: &[u8] = b"\"}],\\0-x";
    for (name, text) in valid_vectors() {
        let kind = kind_of(&name);
        let bytes = text.as_bytes();
        for at in 0..bytes.len() {
            let mut mutated = bytes.to_vec();
            for &replacement in REPLACEMENTS {
                mutated[at] = replacement;
                if let Ok(candidate) = std::str::from_utf8(&mutated) {
                    let _ = check_any(kind, candidate);
                }
            }
            // Deleting a byte shifts everything after it.
            let mut shortened = bytes.to_vec();
            shortened.remove(at);
            if let Ok(candidate) = std::str::from_utf8(&shortened) {
                let _ = check_any(kind, candidate);
            }
        }
    }
}

#[test]
fn hostile_inputs_are_rejected_without_panicking() {
    let deep_array = "[".repeat(100_000);
    let deep_object = "{\"a\":".repeat(100_000);
    let deep_payload = format!(
        r#"{{"v":1,"id":1,"type":"t","aggregate_type":null,"aggregate_id":null,"payload":{{"a":{}1{}}},"headers":{{}},"occurred_at":"2024-01-01T00:00:00.000000Z","txid":null}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let huge_number = format!(r#"{{"v":1{}}}"#, "0".repeat(10_000));
    let long_key = format!(r#"{{"v":1,"{}":1}}"#, "k".repeat(100_000));
    let inputs = [
        "",
        " ",
        "\u{feff}{}",
        "null",
        "{\"v\":18446744073709551616}",
        "{\"v\":-0}",
        "{\"v\":1e0}",
        "{\"v\":1,\"v\":1}",
        deep_array.as_str(),
        deep_object.as_str(),
        deep_payload.as_str(),
        huge_number.as_str(),
        long_key.as_str(),
    ];
    for kind in [
        Kind::Envelope,
        Kind::Notify,
        Kind::Invalidation,
        Kind::NamespaceStats,
        Kind::StatsReport,
    ] {
        for input in inputs {
            assert!(
                check_any(kind, input).is_err(),
                "{kind:?} accepted {:.40}",
                input
            );
        }
    }
    // Error messages quote user input only briefly.
    let err = Envelope::parse(&long_key).expect_err("unknown key");
    assert!(err.to_string().len() < 400, "{}", err.to_string().len());
}

#[test]
fn random_inputs_never_panic() {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"v\"",
        "1",
        "2",
        "-1",
        "0.5",
        "null",
        "true",
        "\"\"",
        "\"event\"",
        "\"ref\"",
        "\"kind\"",
        "\"id\"",
        "\"type\"",
        "\"keys\"",
        "\"scope\"",
        "\"namespace\"",
        "\"prefix\"",
        "\"a\"",
        "\"namespaces\"",
        "\\",
        "\"\\u0000\"",
        "é",
    ];
    // xorshift64: deterministic, so a failure reproduces.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = next() % 24;
        let text: String = (0..len)
            .map(|_| TOKENS[(next() % TOKENS.len() as u64) as usize])
            .collect();
        for kind in [
            Kind::Envelope,
            Kind::Notify,
            Kind::Invalidation,
            Kind::NamespaceStats,
            Kind::StatsReport,
        ] {
            let _ = check_any(kind, &text);
        }
    }
}

#[test]
fn vectors_agree_with_each_other() {
    let read = |name: &str| fs::read_to_string(vectors_dir().join(name)).expect(name);

    let full = Envelope::parse(&read("envelope_full.json")).expect("envelope_full");
    match NotifyPayload::parse(&read("notify_event.json")).expect("notify_event") {
        NotifyPayload::Event(inner) => assert_eq!(inner, full),
        other => panic!("notify_event is {other:?}"),
    }
    assert_eq!(
        NotifyPayload::encode_for_envelope(&full),
        read("notify_event.json")
    );

    let invalidate = Envelope::parse(&read("envelope_invalidate.json")).expect("invalidate");
    assert_eq!(invalidate.event_type, INVALIDATE_EVENT_TYPE);
    let keys = CacheInvalidation::from_payload(&invalidate.payload).expect("keys payload");
    assert!(matches!(keys.scope, InvalidationScope::Keys(ref k) if k.len() == 2));
    assert_eq!(
        serde_json::Value::Object(invalidate.payload.clone()),
        keys.to_value()
    );

    let invalidated = Envelope::parse(&read("envelope_invalidated.json")).expect("invalidated");
    assert_eq!(invalidated.event_type, INVALIDATED_EVENT_TYPE);
    assert_eq!(invalidated.txid, None);
    let all = CacheInvalidation::from_payload(&invalidated.payload).expect("namespace payload");
    assert_eq!(all.scope, InvalidationScope::Namespace);
    assert_eq!(
        serde_json::Value::Object(invalidated.payload),
        all.to_value()
    );

    let report = StatsReport::parse(&read("stats_report.json")).expect("report");
    let single = NamespaceStats::parse(&read("stats_namespace.json")).expect("namespace");
    assert_eq!(report.namespaces.first(), Some(&single));
}

#[test]
fn readme_lists_every_vector() {
    let readme = fs::read_to_string(vectors_dir().join("README.md")).expect("README.md");
    for (name, _) in valid_vectors().into_iter().chain(invalid_vectors()) {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not list {name}"
        );
    }
}
