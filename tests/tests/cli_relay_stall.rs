//! `cachetx relay` against a Redis that accepts connections but does not apply
//! commands (writes paused, as during a failover or a `LOADING` restart): every
//! reconnect succeeds, so a relay that handed its batch back and claimed it again
//! would spend one delivery attempt per round and dead-letter invalidations that were
//! never applied.

use std::time::Duration;

use cachetx_tests::cli::{server_env, start_fast_relay};
use cachetx_tests::nscache::{get, set};
use cachetx_tests::{pg, wait_until, RedisServer};

const CATCH_UP: Duration = Duration::from_secs(120);

#[test]
fn a_stalled_redis_does_not_dead_letter_invalidations() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_relay_stall");
    let mut conn = server.conn();
    set(&mut conn, "cand", "1", 3600, "v");
    // A group that gives up after two attempts: the outage must not spend them.
    db.connect()
        .batch_execute("SELECT txevents.create_consumer('relay', ARRAY['cache.invalidate'], 2)")
        .expect("create the group");
    let mut relay = start_fast_relay(&server_env(server.port(), &db), &db);

    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600_000)
        .arg("WRITE")
        .query(&mut conn)
        .expect("CLIENT PAUSE");
    db.connect()
        .batch_execute("BEGIN; SELECT txevents.invalidate('cand', '1'); COMMIT")
        .expect("commit the invalidation");
    let mut client = db.connect();
    let dead = |client: &mut postgres::Client| -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM txevents.dead WHERE consumer = 'relay'",
                &[],
            )
            .expect("dead letters")
            .get(0)
    };
    // Three failed rounds (more than the group's attempts), or the event given up.
    wait_until(CATCH_UP, "the relay retries through the stall", || {
        relay.log().matches("Redis unavailable").count() >= 3 || dead(&mut client) > 0
    });
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut conn)
        .expect("CLIENT UNPAUSE");
    wait_until(CATCH_UP, "the invalidation applied or given up", || {
        get(&mut conn, "cand", "1").is_none() || dead(&mut client) > 0
    });
    assert_eq!(
        dead(&mut client),
        0,
        "an invalidation never applied went to the dead letters\n{}",
        relay.log()
    );
    assert!(get(&mut conn, "cand", "1").is_none());
    // Every reconnect succeeded, yet the retries backed off to the cap (300 ms) instead
    // of starting over at 100 ms after each connection.
    assert!(
        relay.log().contains("retry in 300ms"),
        "the backoff restarts with every reconnect\n{}",
        relay.log()
    );
    let status = relay.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "relay exit {status:?}\n{}", relay.log());
}
