//! `cachetx exporter` scraped by a real Prometheus; the figures read back through
//! Prometheus's query API.

use std::time::Duration;

use cachetx_tests::cli::{server_env, CliProcess};
use cachetx_tests::nscache::{get, set};
use cachetx_tests::prometheus::{http_get, Prometheus};
use cachetx_tests::{free_port, pg, wait_until, RedisServer};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn prometheus_scrapes_the_exporter_and_reads_nscache_hits_back() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_exporter");
    let mut conn = server.conn();
    set(&mut conn, "cand", "1", 300, "v");
    for _ in 0..7 {
        assert!(get(&mut conn, "cand", "1").is_some());
    }
    assert!(get(&mut conn, "cand", "missing").is_none());
    db.connect()
        .batch_execute(
            "SELECT txevents.create_consumer('relay'); SELECT txevents.emit('x.y', '{}')",
        )
        .expect("activity in Postgres");

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _exporter = CliProcess::start(
        &["exporter", "--listen", &listen],
        &server_env(server.port(), &db),
    );
    wait_until(WAIT, "the exporter serves /metrics", || {
        http_get(port, "/metrics").is_some_and(|(status, _)| status == 200)
    });
    let (_, body) = http_get(port, "/metrics").expect("metrics");
    assert!(
        body.contains("nscache_hits_total{namespace=\"cand\"} 7"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE txevents_commit_duration_seconds histogram"),
        "{body}"
    );

    let prometheus = Prometheus::start(&listen);
    wait_until(WAIT, "nscache_hits_total through Prometheus", || {
        prometheus.query_value("nscache_hits_total{namespace=\"cand\",job=\"cachetx\"}")
            == Some(7.0)
    });
    assert_eq!(
        prometheus.query_value("nscache_misses_total{namespace=\"cand\"}"),
        Some(1.0)
    );
    assert_eq!(prometheus.query_value("up{job=\"cachetx\"}"), Some(1.0));
    assert_eq!(prometheus.query_value("txevents_up"), Some(1.0));
    // The consumer group's pending event, per group.
    let pending = "txevents_consumer_pending_events{consumer=\"relay\",job=\"cachetx\"}";
    wait_until(WAIT, "consumer lag through Prometheus", || {
        prometheus.query_value(pending) == Some(1.0)
    });

    // More hits show up in the next scrapes.
    for _ in 0..5 {
        assert!(get(&mut conn, "cand", "1").is_some());
    }
    wait_until(WAIT, "the new hits through Prometheus", || {
        prometheus.query_value("nscache_hits_total{namespace=\"cand\"}") == Some(12.0)
    });
}
