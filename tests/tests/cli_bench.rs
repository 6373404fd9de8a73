//! The relay benchmark of SPEC 6, run by `make bench-relay` (scripts/bench-relay.sh),
//! never by `make test` (ignored): commit → invalidated-in-Redis latency at a paced
//! 1,000 invalidations/s, and the most invalidations/s one relay sustains. Writes a
//! markdown section to `$BENCH_OUT` (or stdout). No assertion on any figure.

use std::io::Write;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cachetx_tests::cli::{server_env, wait_for_group, CliProcess};
use cachetx_tests::nscache::{config_set, fill, stats};
use cachetx_tests::{pg, wait_until, RedisServer};

const PACED_RATE: u64 = 1000;
const PACED_SECS: u64 = 5;
const BURST: usize = 100_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Commit → the `cache.invalidated` message nscache publishes after the relay's DEL.
fn paced_latency(out: &mut String) {
    let server = RedisServer::start();
    let db = pg().create_db("cli_bench_latency");
    let mut conn = server.conn();
    let total = (PACED_RATE * PACED_SECS) as usize;
    fill(&mut conn, "bench", total, 3600, "v");
    config_set(&mut conn, "nscache.publish-invalidations", "yes");
    let _relay = CliProcess::start(&["relay"], &server_env(server.port(), &db));
    wait_for_group(&db, "relay");

    // Subscriber: key index → time the invalidation was published.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<(usize, Instant)>();
    let client = server.client();
    thread::spawn(move || {
        let mut sub = client.get_connection().expect("subscriber");
        let mut pubsub = sub.as_pubsub();
        pubsub.subscribe("nscache:events").expect("SUBSCRIBE");
        let _ = ready_tx.send(());
        while let Ok(msg) = pubsub.get_message() {
            let at = Instant::now();
            let Ok(text) = msg.get_payload::<String>() else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            for key in json["payload"]["keys"].as_array().into_iter().flatten() {
                if let Some(i) = key.as_str().and_then(|k| k.strip_prefix("key")) {
                    if let Ok(i) = i.parse() {
                        if done_tx.send((i, at)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    ready_rx.recv().expect("subscriber ready");

    // Two committers, each at half the rate; the clock starts when COMMIT is sent.
    let (sent_tx, sent_rx) = mpsc::channel::<(usize, Instant)>();
    let start = Instant::now() + Duration::from_millis(200);
    let mut committers = Vec::new();
    for lane in 0..2usize {
        let sent_tx = sent_tx.clone();
        let mut client = db.connect();
        committers.push(thread::spawn(move || {
            let interval = Duration::from_micros(1_000_000 / PACED_RATE);
            for i in (lane..total).step_by(2) {
                let due = start + interval * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let mut tx = client.transaction().expect("BEGIN");
                tx.execute(
                    "SELECT txevents.invalidate('bench', $1)",
                    &[&format!("key{i}")],
                )
                .expect("invalidate");
                let at = Instant::now();
                tx.commit().expect("COMMIT");
                let _ = sent_tx.send((i, at));
            }
        }));
    }
    drop(sent_tx);
    for c in committers {
        c.join().expect("committer");
    }
    let elapsed = start.elapsed();
    let mut sent = vec![None; total];
    for (i, at) in sent_rx.iter() {
        sent[i] = Some(at);
    }
    let mut latencies = Vec::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.len() < total && Instant::now() < deadline {
        match done_rx.recv_timeout(Duration::from_secs(5)) {
            Ok((i, at)) => {
                if let Some(Some(t0)) = sent.get(i) {
                    latencies.push(at.saturating_duration_since(*t0));
                }
            }
            Err(_) => break,
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let achieved = total as f64 / elapsed.as_secs_f64();
    out.push_str(&format!(
        "| commit → invalidated in Redis at {PACED_RATE}/s ({total} one-key transactions, achieved {achieved:.0}/s) | p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} measured) | p99 ≤ 10 ms: {} |\n",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        latencies.len(),
        if ms(percentile(&latencies, 99.0)) <= 10.0 && latencies.len() == total { "met" } else { "**missed**" },
    ));
}

/// A backlog of one-key invalidations, then one relay drains it.
fn drain_rate(out: &mut String) {
    let server = RedisServer::start();
    let db = pg().create_db("cli_bench_drain");
    let mut conn = server.conn();
    fill(&mut conn, "bench", BURST, 3600, "v");
    let mut client = db.connect();
    client
        .batch_execute("SELECT txevents.create_consumer('relay', ARRAY['cache.invalidate'])")
        .expect("group");
    // One event per key, 1000 per transaction.
    for chunk in 0..BURST / 1000 {
        client
            .batch_execute(&format!(
                "SELECT txevents.invalidate('bench', 'key' || i) FROM generate_series({}, {}) i",
                chunk * 1000,
                chunk * 1000 + 999
            ))
            .expect("backlog");
    }
    let started = Instant::now();
    let _relay = CliProcess::start(
        &["relay", "--batch", "1000"],
        &server_env(server.port(), &db),
    );
    wait_until(Duration::from_secs(600), "the backlog drained", || {
        stats(&mut conn, "bench").entries == 0
    });
    let elapsed = started.elapsed();
    let rate = BURST as f64 / elapsed.as_secs_f64();
    out.push_str(&format!(
        "| one relay draining {BURST} one-key invalidations (batches of 1000, relay start included) | {rate:.0} invalidations/s ({:.2} s) | ≥ 20000/s: {} |\n",
        elapsed.as_secs_f64(),
        if rate >= 20_000.0 { "met" } else { "**missed**" }
    ));
}

#[test]
#[ignore = "benchmark: make bench-relay"]
fn relay_benchmark() {
    let mut out = String::from("| measure | result | target (SPEC 6) |\n|---|---|---|\n");
    paced_latency(&mut out);
    drain_rate(&mut out);
    match std::env::var_os("BENCH_OUT") {
        Some(path) => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("BENCH_OUT");
            file.write_all(out.as_bytes()).expect("write BENCH_OUT");
        }
        None => print!("{out}"),
    }
}
