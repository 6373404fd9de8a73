//! `cachetx stats --json` against the servers' own figures: NSCACHE.STATS ... JSON and
//! the txevents metric views.

use cachetx_shared::StatsReport;
use cachetx_tests::cli::{run, server_env};
use cachetx_tests::nscache::{get, set, stats};
use cachetx_tests::{pg, sqlstate, RedisCluster, RedisServer};
use serde_json::Value;

fn stats_json(env: &[(&str, String)]) -> Value {
    let (status, stdout, stderr) = run(&["stats", "--json"], env);
    assert!(status.success(), "stats failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn view(client: &mut postgres::Client, name: &str, db: &str) -> Vec<Value> {
    client
        .query(
            &format!("SELECT row_to_json(v)::text FROM {name} v WHERE datname = $1"),
            &[&db],
        )
        .expect(name)
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).expect("json"))
        .collect()
}

fn rows_of<'a>(report: &'a Value, section: &str, db: &str) -> Vec<&'a Value> {
    report["postgres"][section]["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no {section} rows: {report}"))
        .iter()
        .filter(|r| r["datname"] == db)
        .collect()
}

#[test]
fn stats_json_matches_nscache_stats_and_the_metric_views() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_stats");
    let mut conn = server.conn();
    for key in ["a", "b", "c"] {
        set(&mut conn, "cand", key, 300, "profile");
    }
    set(&mut conn, "proc", "p", 300, "x");
    for _ in 0..4 {
        get(&mut conn, "cand", "a");
    }
    get(&mut conn, "cand", "zz");

    let mut client = db.connect();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);
             SELECT txevents.create_consumer('relay');
             SELECT txevents.emit('candidate.created', '{}');",
        )
        .expect("setup");
    let err = client
        .batch_execute("INSERT INTO t VALUES (1)")
        .expect_err("a unique violation");
    assert_eq!(sqlstate(&err).as_deref(), Some("23505"));

    let env = server_env(server.port(), &db);
    let report = stats_json(&env);

    // Redis: exactly the server's own report (STATS and TOPKEYS count nothing).
    let own: String = redis::cmd("NSCACHE.STATS")
        .arg("JSON")
        .query(&mut conn)
        .expect("NSCACHE.STATS JSON");
    let own = StatsReport::parse(&own).expect("parse");
    let ours: Vec<cachetx_shared::NamespaceStats> =
        serde_json::from_value(report["redis"]["namespaces"].clone()).expect("namespaces");
    assert_eq!(ours, own.namespaces);
    assert_eq!(
        report["redis"]["top_keys"]["cand"][0],
        serde_json::json!(["a", 4])
    );

    // Postgres: the views' rows for this database.
    let errors = view(&mut client, "txevents.errors", &db.name);
    assert_eq!(
        rows_of(&report, "errors", &db.name),
        errors.iter().collect::<Vec<_>>()
    );
    assert!(
        errors
            .iter()
            .any(|e| e["sqlstate"] == "23505" && e["count"] == 1),
        "{errors:?}"
    );
    let metrics = view(&mut client, "txevents.metrics", &db.name);
    let reported = rows_of(&report, "metrics", &db.name);
    assert_eq!(reported.len(), 1, "{report}");
    // Counters of transactions move with every query, ours included; events do not.
    for column in ["events_emitted", "errors", "rollbacks"] {
        assert_eq!(reported[0][column], metrics[0][column], "{column}");
    }
    assert_eq!(reported[0]["events_emitted"], 1);
    let columns: Vec<&str> = report["postgres"]["metrics"]["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let own_columns: Vec<String> = client
        .prepare("SELECT * FROM txevents.metrics")
        .expect("prepare")
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    assert_eq!(columns, own_columns);
    let lag: Vec<Value> = client
        .query(
            "SELECT row_to_json(v)::text FROM txevents.consumer_lag v",
            &[],
        )
        .expect("lag")
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).expect("json"))
        .collect();
    let reported_lag = &report["postgres"]["consumer_lag"]["rows"];
    assert_eq!(reported_lag["0"], Value::Null);
    assert_eq!(reported_lag[0]["consumer"], lag[0]["consumer"]);
    assert_eq!(reported_lag[0]["pending"], lag[0]["pending"]);
    assert_eq!(reported_lag[0]["pending"], 1);
}

#[test]
fn unreachable_servers_give_one_line_reasons_and_exit_zero() {
    let (status, stdout, _) = run(
        &[
            "stats",
            "--redis-port",
            "1",
            "--database-url",
            "host=/nonexistent port=1 user=x",
        ],
        &[],
    );
    assert!(status.success());
    assert!(
        stdout.contains("Redis: cannot connect to redis://127.0.0.1:1/0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Postgres: cannot connect to Postgres"),
        "{stdout}"
    );
    assert!(!stdout.contains("panicked"), "{stdout}");
}

#[test]
fn cluster_stats_sum_every_primary() {
    let cluster = RedisCluster::start(3);
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    for key in &keys {
        let mut conn = cluster.node_for_key(key).conn();
        set(&mut conn, "cand", key, 300, "v");
        get(&mut conn, "cand", key);
    }
    let nodes_with_keys = cluster
        .nodes
        .iter()
        .filter(|n| stats(&mut n.conn(), "cand").entries > 0)
        .count();
    assert!(
        nodes_with_keys > 1,
        "the keys should spread over the primaries"
    );
    let env = [
        ("REDIS_HOST", "127.0.0.1".to_string()),
        ("REDIS_PORT", cluster.nodes[0].port().to_string()),
    ];
    let (status, stdout, stderr) = run(&["stats", "--json", "--cluster", "--no-postgres"], &env);
    assert!(status.success(), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["redis"]["nodes"], 3, "{report}");
    let cand = &report["redis"]["namespaces"][0];
    assert_eq!(cand["prefix"], "cand");
    assert_eq!(cand["entries"], 30);
    assert_eq!(cand["sets"], 30);
    assert_eq!(cand["hits"], 30);
}

#[test]
fn without_preload_the_metric_sections_say_what_to_change() {
    let cluster =
        cachetx_tests::pg_cluster::start_cluster("", &[]).expect("cluster without preload");
    cluster
        .connect("postgres")
        .batch_execute("CREATE EXTENSION txevents; SELECT txevents.create_consumer('relay')")
        .expect("extension");
    let env = [("DATABASE_URL", cluster.superuser_url("postgres"))];
    let (status, stdout, stderr) = run(&["stats", "--no-redis"], &env);
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("txevents metrics need shared_preload_libraries = 'txevents'"),
        "{stdout}"
    );
    // The consumer lag view needs no preload: its table is still there.
    assert!(stdout.contains("│ relay"), "{stdout}");
    let (_, json, _) = run(&["stats", "--no-redis", "--json"], &env);
    let report: Value = serde_json::from_str(&json).expect("json");
    let reason = report["postgres"]["metrics"]["unavailable"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("shared_preload_libraries"), "{report}");
}
