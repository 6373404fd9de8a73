//! Helpers shared by the txevents integration tests (`tests/pg_*.rs`).

#![allow(dead_code)]

use std::time::Duration;

use cachetx_shared::NotifyPayload;
use cachetx_tests::{pg, sqlstate, TestDb};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

/// How long a listener waits for one more notification before it calls the stream done.
pub const QUIET: Duration = Duration::from_millis(400);
/// Generous upper bound for anything eventually true (2 cores, other builds running).
pub const EVENTUALLY: Duration = Duration::from_secs(30);

/// A connection that LISTENs on the txevents channel.
pub struct Listener(pub Client);

impl Listener {
    pub fn new(db: &TestDb) -> Listener {
        let mut client = db.connect();
        client.batch_execute("LISTEN txevents").expect("LISTEN");
        Listener(client)
    }

    /// Every notification that arrives within `quiet` of the previous one.
    pub fn drain(&mut self, quiet: Duration) -> Vec<NotifyPayload> {
        let mut notifications = self.0.notifications();
        let mut out = Vec::new();
        let mut iter = notifications.timeout_iter(quiet);
        while let Some(n) = iter.next().expect("notification stream") {
            assert_eq!(n.channel(), "txevents");
            out.push(
                NotifyPayload::parse(n.payload())
                    .unwrap_or_else(|e| panic!("payload does not parse: {e}\n{}", n.payload())),
            );
        }
        out
    }
}

pub fn ids_of(payloads: &[NotifyPayload]) -> Vec<i64> {
    payloads.iter().map(NotifyPayload::id).collect()
}

pub fn event_types(payloads: &[NotifyPayload]) -> Vec<String> {
    payloads
        .iter()
        .map(|p| p.event_type().to_string())
        .collect()
}

/// `txevents.emit(event_type)` in its own transaction; the event id.
pub fn emit(client: &mut Client, event_type: &str) -> i64 {
    client
        .query_one("SELECT txevents.emit($1)", &[&event_type])
        .expect("emit")
        .get(0)
}

/// One polled event: (id, event_type, attempt).
pub type Polled = (i64, String, i32);

/// `txevents.poll(consumer, max, lease)`.
pub fn poll(client: &mut Client, consumer: &str, max: i32, lease: &str) -> Vec<Polled> {
    client
        .query(
            "SELECT id, event_type, attempt FROM txevents.poll($1, $2, $3::text::interval)",
            &[&consumer, &max, &lease],
        )
        .expect("poll")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

pub fn polled_ids(polled: &[Polled]) -> Vec<i64> {
    polled.iter().map(|p| p.0).collect()
}

/// `txevents.ack(consumer, ids)`: how many were held.
pub fn ack(client: &mut Client, consumer: &str, ids: &[i64]) -> i64 {
    client
        .query_one("SELECT txevents.ack($1, $2)", &[&consumer, &ids])
        .expect("ack")
        .get(0)
}

/// Polls and acks until a poll comes back empty; every event id received, in order.
pub fn drain_group(client: &mut Client, consumer: &str) -> Vec<i64> {
    let mut all = Vec::new();
    loop {
        let got = polled_ids(&poll(client, consumer, 100, "30s"));
        if got.is_empty() {
            return all;
        }
        assert_eq!(ack(client, consumer, &got), got.len() as i64);
        all.extend(got);
    }
}

pub fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).expect(sql).get(0)
}

/// Runs `sql`, expects an error with `code` whose message contains `text`.
pub fn expect_error(client: &mut Client, sql: &str, code: &str, text: &str) {
    let err = client.batch_execute(sql).expect_err(sql);
    assert_eq!(sqlstate(&err).as_deref(), Some(code), "{sql}: {err:?}");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains(text), "{sql}: message {message:?}");
}

/// `pg_postmaster_start_time()` as text: unchanged as long as the server has not
/// restarted (a crashed backend makes the postmaster reinitialize every session).
pub fn postmaster_start(client: &mut Client) -> String {
    client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .expect("pg_postmaster_start_time")
        .get(0)
}

/// A fresh database, one connection to it, and the postmaster's start time when the
/// test began.
pub struct Setup {
    _db: TestDb,
    pub client: Client,
    started: String,
}

pub fn setup(name: &str) -> Setup {
    let db = pg().create_db(name);
    let mut client = db.connect();
    let started = postmaster_start(&mut client);
    Setup {
        _db: db,
        client,
        started,
    }
}

impl Setup {
    /// The same connection still works and the server did not restart.
    pub fn check_alive(&mut self) {
        assert_eq!(postmaster_start(&mut self.client), self.started);
    }
}

/// The seed of a randomized test: `env` if set (decimal), else `default`. Printed, so
/// that a failing run can be repeated.
pub fn seed(env: &str, default: u64) -> u64 {
    let seed = match std::env::var(env) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{env}={text:?} is not a decimal u64")),
        Err(_) => default,
    };
    eprintln!("seed: {seed} (set {env} to repeat or change it)");
    seed
}

/// A small deterministic generator (splitmix64): the same seed gives the same test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// One element of `items` (not empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}
