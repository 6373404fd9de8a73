//! `cachetx relay` without the password of a Redis that requires one (`NOAUTH`): a
//! configuration error of the relay, not a refusal of one event. The invalidations
//! must wait for the fix, not be nacked into the group's backoff and dead letters.

use std::time::Duration;

use cachetx_tests::cli::{server_env, start_fast_relay};
use cachetx_tests::nscache::{get, set};
use cachetx_tests::{pg, wait_until, RedisServer};

const CATCH_UP: Duration = Duration::from_secs(60);

#[test]
fn a_missing_password_holds_invalidations_until_it_is_fixed() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_relay_noauth");
    let mut conn = server.conn();
    set(&mut conn, "cand", "1", 3600, "v");
    // This connection stays authenticated; new ones need the password.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("pw")
        .query(&mut conn)
        .expect("CONFIG SET requirepass");
    let mut relay = start_fast_relay(&server_env(server.port(), &db), &db);
    db.connect()
        .batch_execute("BEGIN; SELECT txevents.invalidate('cand', '1'); COMMIT")
        .expect("commit the invalidation");
    wait_until(CATCH_UP, "the relay meets NOAUTH", || {
        let log = relay.log();
        log.matches("Redis unavailable").count() >= 3 || log.contains("event not applied")
    });
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("")
        .query(&mut conn)
        .expect("CONFIG SET requirepass ''");
    wait_until(CATCH_UP, "the invalidation applied", || {
        get(&mut conn, "cand", "1").is_none()
    });
    let log = relay.log();
    assert!(
        !log.contains("event not applied"),
        "NOAUTH counted as a refusal of the event\n{log}"
    );
    let status = relay.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "relay exit {status:?}\n{}", relay.log());
}
