//! `cachetx exporter` with label values the text format must escape: a consumer group
//! name may hold `"`, `\` and a newline. Unescaped, one such name breaks the whole
//! exposition and Prometheus drops every metric of the scrape.

use std::time::Duration;

use cachetx_tests::cli::{server_env, CliProcess};
use cachetx_tests::prometheus::{http_get, Prometheus};
use cachetx_tests::{free_port, pg, wait_until, RedisServer};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn consumer_names_with_quotes_backslashes_and_newlines_are_escaped() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_exporter_labels");
    db.connect()
        .batch_execute(
            "SELECT txevents.create_consumer(E'team \"a\"\\\\b\\nc');
             SELECT txevents.emit('x.y', '{}')",
        )
        .expect("a consumer group with an awkward name, and one pending event");

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
        body.contains(r#"consumer="team \"a\"\\b\nc""#),
        "the consumer label is not escaped:\n{body}"
    );

    let prometheus = Prometheus::start(&listen);
    wait_until(WAIT, "a scrape by Prometheus", || {
        prometheus.query_value("up{job=\"cachetx\"}").is_some()
    });
    wait_until(WAIT, "a successful scrape, or a failed one", || {
        prometheus.query_value("up{job=\"cachetx\"}") == Some(1.0)
            || prometheus.query_value("up{job=\"cachetx\"} == 0").is_some()
    });
    assert_eq!(
        prometheus.query_value("up{job=\"cachetx\"}"),
        Some(1.0),
        "Prometheus could not parse the exposition\n{}",
        prometheus.log()
    );
    let pending = r#"txevents_consumer_pending_events{consumer="team \"a\"\\b\nc",job="cachetx"}"#;
    wait_until(WAIT, "the group's lag through Prometheus", || {
        prometheus.query_value(pending) == Some(1.0)
    });
}
