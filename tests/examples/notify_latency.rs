//! Commit-to-listener latency of txevents NOTIFY (SPEC 6), for `scripts/bench-pg.sh`.
//!
//! `cargo run --release -p cachetx-tests --example notify_latency -- <url> [rate] [seconds] [mode]`
//!
//! `mode` is the producer's `txevents.notify`: `commit` (default) or `coalesced` (needs
//! the server started with `shared_preload_libraries = 'txevents'`).
//!
//! One connection LISTENs on `txevents`; another emits one event per transaction at
//! `rate` events/s (default 1000) for `seconds` (default 10). For each event the clock
//! starts just before COMMIT is sent and stops when the listener has the notification.
//! The first second is warm-up and not counted. Prints one summary line.

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use cachetx_shared::NotifyPayload;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!(
            "usage: notify_latency <postgres url> [rate per second] [seconds] [commit|coalesced]"
        );
        std::process::exit(2);
    };
    let rate: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let mode = args.next().unwrap_or_else(|| "commit".to_owned());
    if mode != "commit" && mode != "coalesced" {
        eprintln!("notify_latency: mode must be commit or coalesced, not {mode:?}");
        std::process::exit(2);
    }
    let total = rate * seconds;
    let warmup = rate; // first second

    let connect = || Client::connect(&url, NoTls).unwrap_or_else(|e| panic!("connect: {e}"));
    let mut listener = connect();
    listener
        .batch_execute("LISTEN txevents")
        .expect("LISTEN txevents");
    let mut producer = connect();
    producer
        .batch_execute(&format!("SET txevents.notify = {mode}"))
        .expect("SET txevents.notify");

    let start = Instant::now();
    let listening = thread::spawn(move || {
        let mut received = HashMap::new();
        let mut notifications = listener.notifications();
        let mut iter = notifications.timeout_iter(Duration::from_secs(5));
        while let Ok(Some(n)) = iter.next() {
            let at = start.elapsed();
            if let Ok(p) = NotifyPayload::parse(n.payload()) {
                received.insert(p.id(), at);
            }
            if received.len() as u64 >= total {
                break;
            }
        }
        received
    });

    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut sent = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = interval * (i as u32);
        let now = start.elapsed();
        if due > now {
            thread::sleep(due - now);
        }
        producer.batch_execute("BEGIN").expect("BEGIN");
        let id: i64 = producer
            .query_one("SELECT txevents.emit('latency.probe', '{}')", &[])
            .expect("emit")
            .get(0);
        let before_commit = start.elapsed();
        producer.batch_execute("COMMIT").expect("COMMIT");
        sent.push((id, before_commit));
    }
    let elapsed = start.elapsed();
    let received = listening.join().expect("listener thread");

    let mut latencies: Vec<f64> = sent
        .iter()
        .skip(warmup as usize)
        .filter_map(|(id, t0)| {
            received
                .get(id)
                .map(|t2| t2.saturating_sub(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    let lost = sent.len()
        - sent
            .iter()
            .filter(|(id, _)| received.contains_key(id))
            .count();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[idx.min(latencies.len() - 1)]
    };
    let achieved = total as f64 / elapsed.as_secs_f64().max(0.001);
    println!(
        "notify_latency mode={mode} rate={rate}/s sent={} measured={} lost={lost} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} achieved_rate={:.0}/s",
        sent.len(),
        latencies.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        achieved,
    );
}
