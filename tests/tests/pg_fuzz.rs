//! Seeded random-argument fuzz of every txevents SQL function: random and boundary
//! arguments (NULLs, empty and ~1 MB texts, JSON of every shape, negative, zero and
//! huge intervals and integers, i64::MIN/MAX ids, bad identifiers, unicode,
//! binary-ish text). Every call returns or raises an error with a SQLSTATE that is not
//! XX000 (internal_error), and the server never restarts.
//!
//! `TXEVENTS_FUZZ_SEED` overrides the seed, `TXEVENTS_FUZZ_CALLS` the number of calls.

mod pg_common;

use std::time::Instant;

use cachetx_tests::{pg, sqlstate};
use pg_common::{postmaster_start, seed, Rng};

/// A SQL string literal of `text` (standard_conforming_strings is on).
fn lit(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Random text: ASCII, unicode, quotes and backslashes, never NUL.
fn binaryish(rng: &mut Rng, min: u64, spread: u64) -> String {
    let len = min + rng.below(spread.max(1));
    let mut out = String::new();
    for _ in 0..len {
        let c = match rng.below(6) {
            0 => char::from(1 + rng.below(127) as u8),
            1 => char::from_u32(0x80 + rng.below(0xD800 - 0x80) as u32).unwrap_or('?'),
            2 => char::from_u32(0xE000 + rng.below(0x1_0000 - 0xE000) as u32).unwrap_or('?'),
            3 => char::from_u32(0x1_0000 + rng.below(0x10_0000) as u32).unwrap_or('?'),
            4 => rng.pick(&['\'', '"', '\\', '%', '$', '.', ' ', '\n', '\t']),
            _ => char::from(b'a' + rng.below(26) as u8),
        };
        out.push(c);
    }
    out
}

/// A text argument as a SQL expression of type text.
fn text(rng: &mut Rng) -> String {
    let value = match rng.below(16) {
        0 => return "NULL::text".into(),
        1 => String::new(),
        2 => rng
            .pick(&["g1", "g2", "a.b", "cache", "candidates", "fz", "x"])
            .to_string(),
        3 => rng
            .pick(&[
                "Robert'); DROP TABLE txevents.outbox;--",
                "\"quoted\"",
                "a b c",
                "%I %L %s",
                "ünïcødé",
                "日本語のテキスト",
                "😀🎉",
                "\\x00\\u0000",
                ".",
                "a..b",
                "a:b",
                "{}",
            ])
            .to_string(),
        4 => "x".repeat(rng.pick(&[63usize, 64, 255, 256, 7999, 8000, 8001])),
        5 if rng.one_in(8) => "y".repeat(1 << 20),
        6 => binaryish(rng, 1, 300),
        7 if rng.one_in(4) => binaryish(rng, 20_000, 50_000),
        _ => binaryish(rng, 0, 20),
    };
    format!("{}::text", lit(&value))
}

/// A JSON text: objects mostly, and every other shape.
fn json_text(rng: &mut Rng) -> String {
    match rng.below(16) {
        0 => "{}".into(),
        1 => rng
            .pick(&["[]", "[1, 2]", "1", "-0", "\"s\"", "null", "true", "false", "1e400"])
            .to_string(),
        2 => r#"{"m": 12345678901234567890123, "d": 0.1000000000000000055511151231257827, "n": 1e40}"#.into(),
        3 => {
            let depth = 1 + rng.below(300);
            format!("{}1{}", "{\"a\":[".repeat(depth as usize), "]}".repeat(depth as usize))
        }
        4 => {
            let depth = 1 + rng.below(200);
            format!("{}{}", "[".repeat(depth as usize), "]".repeat(depth as usize))
        }
        5 if rng.one_in(6) => format!(r#"{{"big": "{}"}}"#, "z".repeat(1 << 20)),
        6 => format!(r#"{{"s": {}}}"#, serde_json::Value::String(binaryish(rng, 200, 1))),
        7 => "not json".into(),
        8 => r#"{"a": 1,}"#.into(),
        9 => r#"{"\ud83d\ude00": "\u00e9\u20ac", "k": [{}, [], "", 0]}"#.into(),
        10 => r#"{"a": {"b": {"c": {"d": [1, {"e": null}]}}}}"#.into(),
        11 => "{\"u\": \"\\u0000\"}".into(),
        _ => format!(r#"{{"k{}": {}}}"#, rng.below(100), rng.next_u64()),
    }
}

/// A consumer group name: mostly one that exists, so the deeper paths run.
fn consumer(rng: &mut Rng) -> String {
    if rng.below(5) < 3 {
        format!("{}::text", lit(rng.pick(&["g1", "g2"])))
    } else {
        text(rng)
    }
}

/// A jsonb argument as a SQL expression.
fn jsonb(rng: &mut Rng) -> String {
    if rng.one_in(8) {
        return "NULL::jsonb".into();
    }
    format!("{}::jsonb", lit(&json_text(rng)))
}

fn int(rng: &mut Rng) -> String {
    let v: i64 = match rng.below(8) {
        0 => return "NULL::int".into(),
        1 => i32::MIN.into(),
        2 => i32::MAX.into(),
        3 => 0,
        4 => -1,
        5 => 10_000 + rng.below(3) as i64 - 1,
        _ => rng.below(200) as i64,
    };
    format!("({v})::int")
}

fn bigint(rng: &mut Rng) -> String {
    let v: i128 = match rng.below(8) {
        0 => return "NULL::bigint".into(),
        1 => i64::MIN.into(),
        2 => i64::MAX.into(),
        3 => 0,
        4 => -1,
        _ => (1 + rng.below(60)).into(),
    };
    format!("({v})::bigint")
}

fn interval(rng: &mut Rng) -> String {
    let v = match rng.below(14) {
        0 => return "NULL::interval".into(),
        1 => "0",
        2 => "-1 second",
        3 => "1 microsecond",
        4 => "-1 microsecond",
        5 => "178000000 years",
        6 => "-178000000 years",
        7 => "2147483647 days 2147483647 months",
        8 => "-2147483648 days -2147483648 months -9223372036854775808 microseconds",
        9 => "1 mon",
        10 => "P1Y2M3DT4H5M6S",
        11 => "100 years",
        12 => "30 seconds",
        _ => "1 hour",
    };
    format!("{}::interval", lit(v))
}

fn text_array(rng: &mut Rng) -> String {
    let v = match rng.below(10) {
        0 => return "NULL::text[]".into(),
        1 => "{}",
        2 => "{NULL}",
        3 => "{a.b,c.d}",
        4 => "{{a.b,c.d},{e.f,g.h}}",
        5 => "{\"\"}",
        6 => "[2:3]={a.b,c.d}",
        7 => return format!("ARRAY[{}]", text(rng)),
        8 => return format!("array_fill('k'::text, ARRAY[{}])", rng.below(3000)),
        _ => "{a.b}",
    };
    format!("{}::text[]", lit(v))
}

fn bigint_array(rng: &mut Rng) -> String {
    let v = match rng.below(9) {
        0 => return "NULL::bigint[]".into(),
        1 => "{}",
        2 => "{NULL}",
        3 => "{1,2,3}",
        4 => "{{1,2},{3,4}}",
        5 => "{-9223372036854775808,9223372036854775807,0,-1}",
        6 => "[5:6]={1,2}",
        7 => return "ARRAY(SELECT generate_series(1, 20000))::bigint[]".into(),
        _ => return format!("ARRAY[{}]", bigint(rng)),
    };
    format!("{}::bigint[]", lit(v))
}

fn regclass(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => "NULL::regclass".into(),
        1 => "'fz'::regclass".into(),
        2 => "'fz_nopk'::regclass".into(),
        3 => "'fz_view'::regclass".into(),
        4 => "'pg_class'::regclass".into(),
        5 => "0::regclass".into(),
        6 => "'txevents.consumers'::regclass".into(),
        _ => format!("{}::regclass", lit(&binaryish(rng, 8, 1))),
    }
}

fn oid(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => "NULL::oid".into(),
        1 => "'fz'::regclass::oid".into(),
        2 => "0::oid".into(),
        3 => "4294967295::oid".into(),
        _ => format!("{}::oid", rng.below(1 << 32)),
    }
}

/// Changes a DBA may make to the outbox, each with its undo: emit must honour or
/// refuse each of them, never crash (SPEC 7).
const DBA_CHANGES: &[(&str, &str)] = &[
    (
        "CREATE INDEX fz_expr ON txevents.outbox ((payload->>'x'))",
        "DROP INDEX IF EXISTS txevents.fz_expr",
    ),
    (
        "CREATE INDEX fz_cast ON txevents.outbox (((payload->>'n')::int))",
        "DROP INDEX IF EXISTS txevents.fz_cast",
    ),
    (
        "CREATE INDEX fz_fn ON txevents.outbox (fz_boom(event_type))",
        "DROP INDEX IF EXISTS txevents.fz_fn",
    ),
    (
        "CREATE UNIQUE INDEX fz_part ON txevents.outbox (aggregate_id) WHERE event_type = 'a.b'",
        "DROP INDEX IF EXISTS txevents.fz_part",
    ),
    (
        "CREATE UNIQUE INDEX CONCURRENTLY fz_cic ON txevents.outbox (event_type)",
        "DROP INDEX IF EXISTS txevents.fz_cic",
    ),
    (
        "CREATE INDEX fz_gin ON txevents.outbox USING gin (payload jsonb_path_ops)",
        "DROP INDEX IF EXISTS txevents.fz_gin",
    ),
    (
        "CREATE INDEX fz_hash ON txevents.outbox USING hash (aggregate_type)",
        "DROP INDEX IF EXISTS txevents.fz_hash",
    ),
    (
        "CREATE INDEX fz_brin ON txevents.outbox USING brin (occurred_at)",
        "DROP INDEX IF EXISTS txevents.fz_brin",
    ),
    (
        "ALTER TABLE txevents.outbox ADD CONSTRAINT fz_excl EXCLUDE USING btree (aggregate_id WITH =)",
        "ALTER TABLE txevents.outbox DROP CONSTRAINT IF EXISTS fz_excl",
    ),
    (
        "ALTER TABLE txevents.outbox ADD CONSTRAINT fz_def UNIQUE (aggregate_id, event_type) \
         DEFERRABLE INITIALLY DEFERRED",
        "ALTER TABLE txevents.outbox DROP CONSTRAINT IF EXISTS fz_def",
    ),
    (
        "ALTER TABLE txevents.outbox ADD CONSTRAINT fz_check CHECK (event_type <> 'x')",
        "ALTER TABLE txevents.outbox DROP CONSTRAINT IF EXISTS fz_check",
    ),
    (
        "ALTER TABLE txevents.outbox ALTER COLUMN aggregate_id SET NOT NULL",
        "ALTER TABLE txevents.outbox ALTER COLUMN aggregate_id DROP NOT NULL",
    ),
    (
        "ALTER TABLE txevents.outbox ADD COLUMN fz_col int",
        "ALTER TABLE txevents.outbox DROP COLUMN IF EXISTS fz_col",
    ),
    (
        "CREATE TRIGGER fz_trig BEFORE INSERT ON txevents.outbox \
         FOR EACH ROW EXECUTE FUNCTION fz_trig()",
        "DROP TRIGGER IF EXISTS fz_trig ON txevents.outbox",
    ),
    (
        "CREATE RULE fz_rule AS ON INSERT TO txevents.outbox DO ALSO NOTIFY fz",
        "DROP RULE IF EXISTS fz_rule ON txevents.outbox",
    ),
    (
        "ALTER TABLE txevents.outbox ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE txevents.outbox DISABLE ROW LEVEL SECURITY",
    ),
];

/// One random DBA change to the outbox, or its undo.
fn dba_change(rng: &mut Rng) -> String {
    let (change, undo) = rng.pick(DBA_CHANGES);
    if rng.one_in(2) { change } else { undo }.to_string()
}

/// One random call of one txevents function.
fn call(rng: &mut Rng) -> String {
    match rng.below(21) {
        0 | 1 => format!(
            "SELECT txevents.emit({}, {}, {}, {}, {})",
            text(rng),
            jsonb(rng),
            text(rng),
            text(rng),
            jsonb(rng)
        ),
        2 => format!("SELECT txevents.emit({})", text(rng)),
        3 => match rng.below(3) {
            0 => format!(
                "SELECT txevents.invalidate({}, VARIADIC {})",
                text(rng),
                text_array(rng)
            ),
            1 => format!("SELECT txevents.invalidate({}, {})", text(rng), text(rng)),
            _ => format!(
                "SELECT txevents.invalidate({}, {}, {})",
                text(rng),
                text(rng),
                text(rng)
            ),
        },
        4 => format!("SELECT txevents.invalidate_namespace({})", text(rng)),
        5 => format!("SELECT txevents.get({})", bigint(rng)),
        6 => format!(
            "SELECT txevents.create_consumer({}, {}, {}, {}, {})",
            consumer(rng),
            text_array(rng),
            int(rng),
            interval(rng),
            interval(rng)
        ),
        7 => format!("SELECT txevents.drop_consumer({})", consumer(rng)),
        8 | 9 => format!(
            "SELECT * FROM txevents.poll({}, {}, {})",
            consumer(rng),
            int(rng),
            interval(rng)
        ),
        10 => format!(
            "SELECT * FROM txevents._poll({}, {}, {})",
            consumer(rng),
            int(rng),
            interval(rng)
        ),
        11 => format!(
            "SELECT txevents.ack({}, {})",
            consumer(rng),
            bigint_array(rng)
        ),
        12 => format!(
            "SELECT txevents.nack({}, {}, {}, {})",
            consumer(rng),
            bigint(rng),
            text(rng),
            interval(rng)
        ),
        13 => format!(
            "SELECT txevents.redrive({}, {})",
            consumer(rng),
            bigint_array(rng)
        ),
        14 => format!("SELECT txevents.prune({})", interval(rng)),
        15 => match rng.below(4) {
            0 => format!("SELECT txevents.capture({}, {})", regclass(rng), text(rng)),
            1 => format!("SELECT txevents.uncapture({})", regclass(rng)),
            2 => format!("SELECT txevents._capture({}, {})", oid(rng), text(rng)),
            _ => format!("SELECT txevents._uncapture({})", oid(rng)),
        },
        16 => match rng.below(4) {
            0 => "INSERT INTO fz (v) VALUES (md5(random()::text))".into(),
            1 => "UPDATE fz SET v = v || 'x' WHERE id IN (SELECT id FROM fz LIMIT 2)".into(),
            2 => "DELETE FROM fz WHERE id IN (SELECT id FROM fz LIMIT 1)".into(),
            _ => "INSERT INTO fz_nopk VALUES (1)".into(),
        },
        17 => match rng.below(4) {
            0 => format!(
                "SELECT set_config('txevents.channel', {}, false)",
                text(rng)
            ),
            1 => "RESET txevents.channel".into(),
            2 => "SET txevents.notify = off".into(),
            _ => "SET txevents.notify = commit".into(),
        },
        18 => match rng.below(3) {
            0 => "SELECT count(*) FROM txevents.dead_letters".into(),
            1 => "SELECT txevents.capture_trigger()".into(),
            _ => format!(
                "BEGIN; SELECT txevents.emit('tx.a'); SAVEPOINT s; SELECT txevents.emit({}); \
                 ROLLBACK TO SAVEPOINT s; COMMIT",
                text(rng)
            ),
        },
        19 if rng.one_in(2) => dba_change(rng),
        _ if rng.one_in(2) => {
            // A claimed event nacked with random arguments: the retry and dead-letter
            // paths.
            let group = rng.pick(&["g1", "g2"]);
            format!(
                "SELECT txevents.nack('{group}', (SELECT id FROM txevents.poll('{group}', 1, {})), {}, {})",
                interval(rng),
                text(rng),
                interval(rng)
            )
        }
        _ => match rng.below(2) {
            0 => "SELECT txevents.emit('a.b') FROM generate_series(1, 5)".into(),
            _ => "SELECT pg_sleep(0.002)".into(),
        },
    }
}

/// Shortens a statement for a failure report.
fn short(sql: &str) -> String {
    if sql.len() <= 300 {
        return sql.to_string();
    }
    let mut end = 300;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &sql[..end], sql.len())
}

#[test]
fn random_arguments_never_give_internal_errors_or_crash() {
    let seed = seed("TXEVENTS_FUZZ_SEED", 20_261_130);
    let calls: usize = std::env::var("TXEVENTS_FUZZ_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let mut rng = Rng::new(seed);
    let db = pg().create_db("random_arguments_never_give_internal_errors");
    let mut client = db.connect();
    let started = postmaster_start(&mut client);
    client
        .batch_execute(
            "SET statement_timeout = '20s';
             CREATE TABLE fz (id serial PRIMARY KEY, v text);
             CREATE TABLE fz_nopk (n int);
             CREATE VIEW fz_view AS SELECT 1 AS one;
             CREATE FUNCTION fz_boom(t text) RETURNS text IMMUTABLE LANGUAGE plpgsql
                 AS $$ BEGIN IF length(t) > 200 THEN RAISE 'too long: %', length(t); END IF;
                       RETURN t; END $$;
             CREATE FUNCTION fz_trig() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RETURN NEW; END $$;
             SELECT txevents.create_consumer('g1');
             SELECT txevents.create_consumer('g2', ARRAY['a.b'], 1, '1 ms', '2 ms');
             SELECT txevents.emit('a.b') FROM generate_series(1, 30);",
        )
        .expect("setup");

    let begun = Instant::now();
    let mut failures = Vec::new();
    let mut by_state = std::collections::BTreeMap::<String, usize>::new();
    // One example message per SQLSTATE, printed to show what the run exercised.
    let mut examples = std::collections::BTreeMap::<String, String>::new();
    for n in 0..calls {
        // Every 50 calls, keep the deeper paths reachable: the groups exist again and
        // the channel is valid (random calls drop the one and spoil the other). These
        // are checked like any call: a random capture may have put a trigger on
        // txevents.consumers whose emit a random DBA change refuses.
        let maintenance = [
            "RESET txevents.channel",
            "SET txevents.notify = commit",
            "SELECT txevents.create_consumer(n) FROM unnest(ARRAY['g1', 'g2']) AS n
              WHERE NOT EXISTS (SELECT 1 FROM txevents.consumers c WHERE c.name = n)",
        ];
        let random = call(&mut rng);
        let statements: Vec<&str> = if n % 50 == 0 {
            maintenance
                .iter()
                .copied()
                .chain([random.as_str()])
                .collect()
        } else {
            vec![random.as_str()]
        };
        let mut lost = false;
        for sql in statements {
            match client.batch_execute(sql) {
                Ok(()) => *by_state.entry("ok".into()).or_default() += 1,
                Err(err) => {
                    // A failed multi-statement transaction leaves the session aborted;
                    // outside one, ROLLBACK only warns.
                    if let Err(e) = client.batch_execute("ROLLBACK") {
                        failures.push(format!("call {n}: ROLLBACK failed: {e:?}"));
                    }
                    match sqlstate(&err) {
                        Some(code) if code != "XX000" => {
                            let message = err.as_db_error().map(|e| e.message().to_string());
                            examples
                                .entry(code.clone())
                                .or_insert_with(|| short(&message.unwrap_or_default()));
                            *by_state.entry(code).or_default() += 1
                        }
                        code => {
                            failures.push(format!("call {n}: {code:?} {err:?}\n  {}", short(sql)));
                            lost |= client.is_closed() || code.is_none();
                        }
                    }
                }
            }
        }
        if lost {
            break;
        }
    }
    eprintln!(
        "{} calls in {:?}; outcomes: {by_state:?}",
        calls,
        begun.elapsed()
    );
    for (code, message) in &examples {
        eprintln!("  {code}: {message}");
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} calls raised XX000 or lost the connection:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let alive: i32 = client
        .query_one("SELECT 1", &[])
        .unwrap_or_else(|e| panic!("seed {seed}: connection lost: {e:?}"))
        .get(0);
    assert_eq!(alive, 1);
    assert_eq!(
        postmaster_start(&mut client),
        started,
        "seed {seed}: the server restarted"
    );
}
