//! Payloads travel verbatim (SPEC 3.2): the notified envelope and `txevents.get(id)`
//! carry the payload and headers exactly as stored, numbers of any size and precision
//! included. Checked on the issue's example and on seeded random documents.

mod pg_common;

use std::collections::HashMap;

use cachetx_tests::pg;
use pg_common::{postmaster_start, seed, Rng, QUIET};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

/// Every notification payload (raw text) that arrives within `QUIET` of the previous.
fn drain_raw(listener: &mut Client) -> Vec<String> {
    let mut notifications = listener.notifications();
    let mut iter = notifications.timeout_iter(QUIET);
    let mut out = Vec::new();
    while let Some(n) = iter.next().expect("notification stream") {
        assert_eq!(n.channel(), "txevents");
        out.push(n.payload().to_string());
    }
    out
}

/// (id, kind) of a raw notification, read by Postgres's own JSON parser.
fn id_and_kind(client: &mut Client, raw: &str) -> (i64, String) {
    let row = client
        .query_one(
            "SELECT (n->>'kind'),
                    coalesce(n->'event'->>'id', n->>'id')::bigint
               FROM (SELECT $1::text::jsonb AS n) s",
            &[&raw],
        )
        .unwrap_or_else(|e| panic!("notification is not JSON: {e:?}\n{raw}"));
    (row.get(1), row.get(0))
}

/// Checks one event against its notification: the notified payload and headers equal
/// the stored ones (as jsonb, so every number is compared exactly), `get(id)` carries
/// them too, and the notification holds get's payload text byte for byte.
fn check_event(client: &mut Client, id: i64, raw: &str, doc: &str) {
    let row = client
        .query_one(
            "SELECT $2::text::jsonb->'event'->'payload' = o.payload,
                    $2::text::jsonb->'event'->'headers' = o.headers,
                    txevents.get($1)->'payload' = o.payload,
                    txevents.get($1)->'headers' = o.headers,
                    (txevents.get($1)->'payload')::text,
                    o.payload = $3::text::jsonb
               FROM txevents.outbox o WHERE o.id = $1",
            &[&id, &raw, &doc],
        )
        .unwrap_or_else(|e| panic!("check event {id}: {e:?}"));
    let (notified_payload, notified_headers, got_payload, got_headers, get_text, stored): (
        bool,
        bool,
        bool,
        bool,
        String,
        bool,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    assert!(stored, "event {id}: stored payload differs from\n{doc}");
    assert!(
        notified_payload,
        "event {id}: notified payload differs\nsent: {doc}\nnotified: {raw}"
    );
    assert!(
        notified_headers,
        "event {id}: notified headers differ\n{raw}"
    );
    assert!(got_payload, "event {id}: get(id)->'payload' differs");
    assert!(got_headers, "event {id}: get(id)->'headers' differs");
    assert!(
        raw.contains(&format!("\"payload\":{get_text},")),
        "event {id}: the notification does not carry get's payload text verbatim\n\
         get: {get_text}\nnotified: {raw}"
    );
}

#[test]
fn big_and_precise_numbers_are_notified_and_returned_verbatim() {
    let db = pg().create_db("big_and_precise_numbers_are_notified_verbatim");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN txevents").expect("LISTEN");
    let mut client = db.connect();
    let doc =
        r#"{"m": 12345678901234567890123, "d": 0.1000000000000000055511151231257827, "n": 1e40}"#;
    let headers = r#"{"h": -98765432109876543210.000000000000000000001}"#;
    let id: i64 = client
        .query_one(
            "SELECT txevents.emit('num.big', $1::text::jsonb, NULL, NULL, $2::text::jsonb)",
            &[&doc, &headers],
        )
        .expect("emit")
        .get(0);
    let got = drain_raw(&mut listener);
    assert_eq!(got.len(), 1, "{got:?}");
    let raw = &got[0];
    assert_eq!(id_and_kind(&mut client, raw), (id, "event".to_string()));
    for digits in [
        "12345678901234567890123",
        "0.1000000000000000055511151231257827",
        "10000000000000000000000000000000000000000",
        "-98765432109876543210.000000000000000000001",
    ] {
        assert!(raw.contains(digits), "{digits} not in {raw}");
    }
    assert!(!raw.contains("\"payload\":{}"), "{raw}");
    check_event(&mut client, id, raw, doc);

    // get: no error, and the same numbers.
    let text: String = client
        .query_one("SELECT txevents.get($1)::text", &[&id])
        .expect("get")
        .get(0);
    assert!(text.contains("12345678901234567890123"), "{text}");
    assert!(
        text.contains("0.1000000000000000055511151231257827"),
        "{text}"
    );
    let unknown: Option<String> = client
        .query_one("SELECT txevents.get(-1)::text", &[])
        .expect("get of no event")
        .get(0);
    assert_eq!(unknown, None);
}

#[test]
fn large_payload_with_big_numbers_goes_by_reference_and_get_returns_it() {
    let db = pg().create_db("large_payload_with_big_numbers_by_reference");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN txevents").expect("LISTEN");
    let mut client = db.connect();
    let digits = "9".repeat(9000);
    let doc = format!(r#"{{"huge": {digits}, "tiny": 1e-300}}"#);
    let id: i64 = client
        .query_one("SELECT txevents.emit('num.huge', $1::text::jsonb)", &[&doc])
        .expect("emit")
        .get(0);
    let got = drain_raw(&mut listener);
    assert_eq!(got.len(), 1);
    assert_eq!(id_and_kind(&mut client, &got[0]), (id, "ref".to_string()));
    let row = client
        .query_one(
            "SELECT txevents.get($1)->'payload' = $2::text::jsonb,
                    txevents.get($1)->'payload'->>'huge'",
            &[&id, &doc],
        )
        .expect("get");
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), digits);
}

/// A random JSON value as text, `depth` levels from the deepest allowed.
fn value(rng: &mut Rng, depth: u32, out: &mut String) {
    let kind = if depth == 0 {
        rng.below(4)
    } else {
        rng.below(7)
    };
    match kind {
        0 => number(rng, out),
        1 => string(rng, out),
        2 => out.push_str(rng.pick(&["true", "false", "null"])),
        3 => out.push_str(rng.pick(&["{}", "[]", "\"\"", "0", "-0"])),
        4 | 5 => object(rng, depth - 1, out),
        _ => {
            out.push('[');
            for i in 0..rng.below(5) {
                if i > 0 {
                    out.push_str(", ");
                }
                value(rng, depth - 1, out);
            }
            out.push(']');
        }
    }
}

fn object(rng: &mut Rng, depth: u32, out: &mut String) {
    out.push('{');
    for i in 0..rng.below(6) {
        if i > 0 {
            out.push(',');
        }
        string(rng, out);
        out.push(':');
        value(rng, depth, out);
    }
    out.push('}');
}

/// `min` to `min + spread - 1` random digits, the first not 0.
fn digits(rng: &mut Rng, min: u64, spread: u64, out: &mut String) {
    let n = min + rng.below(spread.max(1));
    for i in 0..n {
        let d = if i == 0 {
            1 + rng.below(9)
        } else {
            rng.below(10)
        };
        out.push(char::from(b'0' + d as u8));
    }
}

fn number(rng: &mut Rng, out: &mut String) {
    if rng.one_in(2) {
        out.push('-');
    }
    match rng.below(7) {
        // Small integers and zero (with the sign above: negative zero).
        0 => out.push_str(&rng.below(1000).to_string()),
        // Beyond u64 and i64.
        1 => digits(rng, 20, 60, out),
        // Decimals beyond f64 precision.
        2 => {
            out.push_str("0.");
            for _ in 0..rng.below(5) {
                out.push('0');
            }
            digits(rng, 17, 30, out);
        }
        // Exponents, upper and lower case, signed and not.
        3 => {
            digits(rng, 1, 5, out);
            if rng.one_in(2) {
                out.push('.');
                digits(rng, 1, 5, out);
            }
            out.push(rng.pick(&['e', 'E']));
            out.push_str(rng.pick(&["", "+", "-"]));
            out.push_str(&rng.below(330).to_string());
        }
        // Tiny.
        4 => out.push_str(rng.pick(&["1e-300", "5e-324", "2.2250738585072014e-308", "0.0"])),
        // Huge exponent (a numeric with hundreds of digits).
        5 => out.push_str(rng.pick(&["1e400", "1.5E+500", "9.999e308"])),
        _ => {
            digits(rng, 1, 10, out);
            out.push('.');
            digits(rng, 1, 10, out);
        }
    }
}

fn string(rng: &mut Rng, out: &mut String) {
    out.push('"');
    let len = if rng.one_in(40) {
        2000 + rng.below(8000)
    } else {
        rng.below(12)
    };
    for _ in 0..len {
        match rng.below(12) {
            0 => {
                out.push_str(rng.pick(&["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]))
            }
            // Escaped code points, control characters included (not \u0000, which
            // jsonb refuses).
            1 => out.push_str(rng.pick(&[
                "\\u0001", "\\u001f", "\\u00e9", "\\u20ac", "\\uFFFD", "\\u2028",
            ])),
            // Surrogate pairs: emoji and a rare CJK ideograph.
            2 => out.push_str(rng.pick(&["\\ud83d\\ude00", "\\uD834\\uDD1E", "\\ud840\\udc0b"])),
            // Raw non-ASCII UTF-8.
            3 => out.push_str(rng.pick(&["é", "€", "日本", "😀", "\u{10FFFF}", "ß"])),
            _ => out.push(char::from(b'a' + rng.below(26) as u8)),
        }
    }
    out.push('"');
}

/// A random top-level document: always an object; sometimes a deep chain.
fn document(rng: &mut Rng) -> String {
    let mut out = String::new();
    if rng.one_in(10) {
        let depth = 20 + rng.below(60);
        for _ in 0..depth {
            out.push_str("{\"d\":[");
        }
        number(rng, &mut out);
        for _ in 0..depth {
            out.push_str("]}");
        }
        return out;
    }
    let depth = 1 + rng.below(6) as u32;
    object(rng, depth, &mut out);
    out
}

#[test]
fn random_documents_are_notified_and_returned_verbatim() {
    let seed = seed("TXEVENTS_PAYLOAD_SEED", 0x7e57_9a71_0ad5);
    let mut rng = Rng::new(seed);
    let db = pg().create_db("random_documents_are_notified_verbatim");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN txevents").expect("LISTEN");
    let mut client = db.connect();
    let started = postmaster_start(&mut client);

    let mut docs: HashMap<i64, String> = HashMap::new();
    let mut order = Vec::new();
    for round in 0..4 {
        for _ in 0..40 {
            let doc = document(&mut rng);
            let headers = if rng.one_in(3) {
                document(&mut rng)
            } else {
                "{}".to_string()
            };
            let id: i64 = client
                .query_one(
                    "SELECT txevents.emit('prop.doc', $1::text::jsonb, NULL, NULL, $2::text::jsonb)",
                    &[&doc, &headers],
                )
                .unwrap_or_else(|e| panic!("seed {seed}: emit failed: {e:?}\n{doc}"))
                .get(0);
            docs.insert(id, doc);
            order.push(id);
        }
        let notified = drain_raw(&mut listener);
        assert_eq!(
            notified.len(),
            40,
            "seed {seed}, round {round}: one notification per event"
        );
        for raw in notified {
            let (id, kind) = id_and_kind(&mut client, &raw);
            let doc = docs
                .get(&id)
                .unwrap_or_else(|| panic!("seed {seed}: notification of unknown event {id}"));
            if kind == "event" {
                check_event(&mut client, id, &raw, doc);
            } else {
                assert_eq!(kind, "ref", "seed {seed}: {raw}");
                let same: bool = client
                    .query_one(
                        "SELECT txevents.get($1)->'payload' = $2::text::jsonb
                            AND txevents.get($1)->'payload' = (SELECT payload FROM txevents.outbox WHERE id = $1)",
                        &[&id, doc],
                    )
                    .expect("get by reference")
                    .get(0);
                assert!(same, "seed {seed}: get({id}) differs from\n{doc}");
            }
        }
    }
    assert_eq!(order.len(), 160);
    assert_eq!(postmaster_start(&mut client), started);
}

/// The length of `txid`'s decimal form.
fn digits_of(n: i64) -> usize {
    n.to_string().len()
}

#[test]
fn envelopes_of_7999_bytes_are_inline_and_of_8000_go_by_reference() {
    let db = pg().create_db("envelope_size_boundary");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN txevents").expect("LISTEN");
    let mut client = db.connect();
    let emit_sql =
        "SELECT txevents.emit('size.probe', $1::text::jsonb, 'agg', 'a-1', $2::text::jsonb),
                           pg_current_xact_id()::text::bigint";
    let padded = |pad: usize| format!(r#"{{"pad": "{}"}}"#, "x".repeat(pad));
    // The probe: the inline length with an empty pad, its id (1) and txid.
    let row = client
        .query_one(emit_sql, &[&padded(0), &"{}"])
        .expect("probe");
    let (probe_id, probe_txid): (i64, i64) = (row.get(0), row.get(1));
    let got = drain_raw(&mut listener);
    assert_eq!(got.len(), 1);
    assert_eq!(
        id_and_kind(&mut client, &got[0]),
        (probe_id, "event".into())
    );
    let base = got[0].len();
    // The padded events: one transaction (one txid), single-digit ids like the probe.
    let cases: [(bool, usize); 6] = [
        (true, 7998),
        (true, 7999),
        (true, 8000),
        (true, 8001),
        (false, 7999),
        (false, 8000),
    ];
    let mut tx = client.transaction().expect("begin");
    let txid: i64 = tx
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .expect("txid")
        .get(0);
    let mut expected = Vec::new();
    for (in_payload, target) in cases {
        // `{"pad": ""}` is in the probe's payload; headers `{}` grow by the same
        // `"pad": ""` when the pad goes there.
        let fixed = if in_payload { 0 } else { r#""pad": """#.len() };
        let pad = target - base - fixed - digits_of(txid) + digits_of(probe_txid);
        let (payload, headers) = if in_payload {
            (padded(pad), "{}".to_string())
        } else {
            (padded(0), padded(pad))
        };
        let id: i64 = tx
            .query_one(emit_sql, &[&payload, &headers])
            .expect("emit")
            .get(0);
        assert!(id < 10, "ids must stay single-digit like the probe's");
        expected.push((id, target, in_payload, payload));
    }
    tx.commit().expect("commit");
    let got = drain_raw(&mut listener);
    assert_eq!(got.len(), cases.len(), "{got:?}");
    for ((id, target, in_payload, payload), raw) in expected.into_iter().zip(&got) {
        let (got_id, kind) = id_and_kind(&mut client, raw);
        assert_eq!(got_id, id);
        if target <= 7999 {
            assert_eq!(kind, "event", "{target} bytes must be inline");
            assert_eq!(raw.len(), target, "inline notification of event {id}");
            check_event(&mut client, id, raw, &payload);
        } else {
            assert_eq!(
                kind, "ref",
                "{target} bytes (pad in payload: {in_payload}) must go by reference"
            );
            assert_eq!(
                raw,
                &format!(r#"{{"v":1,"kind":"ref","id":{id},"type":"size.probe"}}"#)
            );
        }
    }
}

#[test]
fn keys_and_strings_that_need_escaping_are_notified_and_returned_verbatim() {
    let db = pg().create_db("keys_that_need_escaping");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN txevents").expect("LISTEN");
    let mut client = db.connect();
    let doc = r#"{"a\"b": "q\"uote", "back\\slash": "x\\y", "ctl\u0001\n\t": "\u001f\r",
                  "é😀\u2028": "\u2029</script>", "": {"": [""]}, "\/": "\/"}"#;
    let headers = r#"{"h\"": "\u0007", "trace\\id": "t\"1"}"#;
    let id: i64 = client
        .query_one(
            "SELECT txevents.emit('esc.x', $1::text::jsonb, 'a\"gg', 'id\\1', $2::text::jsonb)",
            &[&doc, &headers],
        )
        .expect("emit")
        .get(0);
    let got = drain_raw(&mut listener);
    assert_eq!(got.len(), 1);
    check_event(&mut client, id, &got[0], doc);
    let row = client
        .query_one(
            "SELECT txevents.get($1)->'headers' = $2::text::jsonb,
                    txevents.get($1)->>'aggregate_type', txevents.get($1)->>'aggregate_id',
                    $3::text::jsonb->'event' = txevents.get($1)",
            &[&id, &headers, &got[0]],
        )
        .expect("get");
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "a\"gg");
    assert_eq!(row.get::<_, String>(2), "id\\1");
    assert!(row.get::<_, bool>(3), "get must equal the notified event");
}

#[test]
fn a_nul_escape_is_refused_by_jsonb_before_emit_runs() {
    let db = pg().create_db("nul_escape_refused");
    let mut client = db.connect();
    // jsonb cannot hold \u0000: the cast fails with 22P05 and nothing is written.
    pg_common::expect_error(
        &mut client,
        r#"SELECT txevents.emit('a.b', '{"a": "\u0000"}')"#,
        "22P05",
        "unsupported Unicode escape sequence",
    );
    pg_common::expect_error(
        &mut client,
        r#"SELECT txevents.emit('a.b', '{}', NULL, NULL, '{"\u0000": 1}')"#,
        "22P05",
        "unsupported Unicode escape sequence",
    );
    assert_eq!(
        pg_common::count(&mut client, "SELECT count(*) FROM txevents.outbox"),
        0
    );
}
