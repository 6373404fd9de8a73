//! Checks of the harness itself. The Postgres checks use no extension, so they run
//! before txevents is installed; the Redis checks need the nscache module (`make build`)
//! and fail, saying so, when it is missing.

use std::time::Duration;

use cachetx_tests::{free_port, nscache_module, pg, sqlstate, wait_until, RedisServer};

/// Panics, telling how to build it, when the nscache module is missing: a Redis
/// check that passed without a server would hide a broken setup.
fn require_module() {
    let module = nscache_module();
    assert!(
        module.is_file(),
        "nscache module not built at {}: run `make build` (or `cargo build --release -p nscache`), \
         or set NSCACHE_MODULE to the path of libnscache.so",
        module.display()
    );
}

#[test]
fn free_ports_are_never_repeated() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        assert!(seen.insert(free_port()));
    }
}

#[test]
fn wait_until_returns_once_true() {
    let mut calls = 0;
    wait_until(Duration::from_secs(5), "the third call", || {
        calls += 1;
        calls == 3
    });
    assert_eq!(calls, 3);
}

#[test]
#[should_panic(expected = "timed out after")]
fn wait_until_panics_naming_what() {
    wait_until(Duration::from_millis(50), "never", || false);
}

#[test]
fn postgres_database_per_test() {
    let db = pg().create_db_without_extension("harness_smoke::postgres_database_per_test");
    assert!(db.name.len() <= 63);
    let mut client = db.connect();
    let one: i32 = client.query_one("SELECT 1", &[]).expect("SELECT 1").get(0);
    assert_eq!(one, 1);
    let current: String = client
        .query_one("SELECT current_database()", &[])
        .expect("current_database()")
        .get(0);
    assert_eq!(current, db.name);

    // The URL form works too.
    let mut by_url = postgres::Client::connect(&db.url(), postgres::NoTls).expect("connect by URL");
    by_url.batch_execute("SELECT 1").expect("SELECT 1 by URL");

    // SQLSTATE of a server error.
    let err = client
        .batch_execute("SELECT 1/0")
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));

    // Roles.
    client
        .batch_execute(&format!("CREATE ROLE smoke_{} LOGIN", std::process::id()))
        .expect("CREATE ROLE");
    let mut as_role = db.connect_as(&format!("smoke_{}", std::process::id()));
    let user: String = as_role
        .query_one("SELECT current_user::text", &[])
        .expect("current_user")
        .get(0);
    assert_eq!(user, format!("smoke_{}", std::process::id()));
    drop(as_role);

    // Dropping the TestDb drops the database, even with connections open.
    let name = db.name.clone();
    drop(db);
    let mut admin = pg().connect("postgres");
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .expect("pg_database")
        .get(0);
    assert_eq!(left, 0);
    admin
        .batch_execute(&format!("DROP ROLE smoke_{}", std::process::id()))
        .expect("DROP ROLE");
}

#[test]
fn postgres_databases_are_distinct() {
    let a = pg().create_db_without_extension("same name");
    let b = pg().create_db_without_extension("same name");
    assert_ne!(a.name, b.name);
}

#[test]
fn redis_server_starts_restarts_and_stops() {
    require_module();
    let mut server = RedisServer::start_with(&["--appendonly", "yes"]);
    let mut conn = server.conn();
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut conn)
        .expect("SET");
    let mut resp3 = server.conn_resp3();
    let pong: String = redis::cmd("PING").query(&mut resp3).expect("PING");
    assert_eq!(pong, "PONG");

    server.restart();
    let v: Option<String> = redis::cmd("GET")
        .arg("k")
        .query(&mut server.conn())
        .expect("GET");
    assert_eq!(v.as_deref(), Some("v"), "AOF reloaded after restart");
    let port = server.port();
    server.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn redis_cluster_of_three() {
    require_module();
    let cluster = cachetx_tests::RedisCluster::start(3);
    let mut conn = cluster
        .client()
        .get_connection()
        .expect("cluster connection");
    for i in 0..30 {
        let () = redis::cmd("SET")
            .arg(format!("key{i}"))
            .arg(i)
            .query(&mut conn)
            .expect("SET through the cluster");
    }
    let owner = cluster.node_for_key("key7");
    let v: i64 = redis::cmd("GET")
        .arg("key7")
        .query(&mut owner.conn())
        .expect("GET on the owning node");
    assert_eq!(v, 7);
}

#[test]
fn redis_cluster_of_one() {
    require_module();
    let cluster = cachetx_tests::RedisCluster::start(1);
    assert_eq!(cluster.node_for_slot(0).port(), cluster.nodes[0].port());
    assert_eq!(cluster.node_for_slot(16383).port(), cluster.nodes[0].port());
}
