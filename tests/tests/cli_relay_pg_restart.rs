//! `cachetx relay` through a Postgres restart (its own test binary: the restart would
//! disturb the other tests sharing this process's cluster).

use std::time::Duration;

use cachetx_tests::cli::{server_env, start_fast_relay};
use cachetx_tests::nscache::{get, set};
use cachetx_tests::{pg, wait_until, RedisServer};

const CATCH_UP: Duration = Duration::from_secs(60);

#[test]
fn relay_reconnects_after_a_postgres_restart_and_loses_nothing() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_relay_pg_restart");
    let mut conn = server.conn();
    for i in 0..20 {
        set(&mut conn, "cand", &format!("k{i}"), 300, "v");
    }
    let env = server_env(server.port(), &db);
    let mut relay = start_fast_relay(&env, &db);
    let mut client = db.connect();
    client
        .batch_execute("SELECT txevents.invalidate('cand', 'k0')")
        .expect("invalidate");
    wait_until(CATCH_UP, "k0 applied", || {
        get(&mut conn, "cand", "k0").is_none()
    });

    // Committed just before the restart, possibly not yet seen by the relay.
    client
        .batch_execute("SELECT txevents.invalidate('cand', 'k1', 'k2')")
        .expect("invalidate");
    drop(client);
    pg().restart().expect("restart Postgres");
    let mut client = db.connect();
    for i in 3..10 {
        client
            .batch_execute(&format!("SELECT txevents.invalidate('cand', 'k{i}')"))
            .expect("invalidate after the restart");
    }
    wait_until(
        CATCH_UP,
        "every invalidation applied after the restart",
        || (0..10).all(|i| get(&mut conn, "cand", &format!("k{i}")).is_none()),
    );
    // Never invalidated: still there.
    assert!(get(&mut conn, "cand", "k15").is_some());
    let status = relay.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", relay.log());
    assert!(
        relay.log().contains("reconnect")
            || relay.log().contains("unavailable")
            || relay.log().contains("connection lost"),
        "the relay never noticed the restart:\n{}",
        relay.log()
    );
}
