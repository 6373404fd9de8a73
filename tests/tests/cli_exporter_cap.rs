//! `cachetx exporter --max-namespaces`: the namespaces beyond the cap are summed into
//! `namespace="(other)"`. Its counters must never go down while no server restarts:
//! Prometheus reads a decrease as a counter reset (a bogus spike in `rate()`), which
//! happened when the labeled namespaces were chosen afresh by busyness each scrape.

use std::time::Duration;

use cachetx_tests::cli::{server_env, CliProcess};
use cachetx_tests::nscache::{get, set};
use cachetx_tests::prometheus::http_get;
use cachetx_tests::{free_port, pg, wait_until, RedisServer};

const WAIT: Duration = Duration::from_secs(60);

fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn the_overflow_series_counters_never_go_down() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_exporter_cap");
    let mut conn = server.conn();
    set(&mut conn, "a", "1", 3600, "v");
    set(&mut conn, "b", "1", 3600, "v");
    // a: 3 hits and 20 misses (23 lookups); b: 10 hits (10 lookups).
    for _ in 0..3 {
        assert!(get(&mut conn, "a", "1").is_some());
    }
    for _ in 0..20 {
        assert!(get(&mut conn, "a", "missing").is_none());
    }
    for _ in 0..10 {
        assert!(get(&mut conn, "b", "1").is_some());
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _exporter = CliProcess::start(
        &[
            "exporter",
            "--listen",
            &listen,
            "--max-namespaces",
            "1",
            "--no-postgres",
        ],
        &server_env(server.port(), &db),
    );
    wait_until(WAIT, "the exporter serves /metrics", || {
        http_get(port, "/metrics").is_some_and(|(status, _)| status == 200)
    });
    let other = "nscache_hits_total{namespace=\"(other)\"}";
    let body = scrape(port);
    assert_eq!(sample(&body, other), Some(10.0), "{body}");
    assert!(
        body.contains("nscache_hits_total{namespace=\"a\"} 3"),
        "{body}"
    );

    // b becomes the busier one (30 lookups).
    for _ in 0..20 {
        assert!(get(&mut conn, "b", "1").is_some());
    }
    let body = scrape(port);
    let now = sample(&body, other).expect("the (other) series");
    assert!(
        now >= 10.0,
        "the (other) counter went down to {now}\n{body}"
    );
    assert_eq!(now, 30.0, "{body}");
}
