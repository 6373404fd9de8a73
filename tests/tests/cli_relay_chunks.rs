//! `cachetx relay` with a batch whose keys fill a whole `NSCACHE.DEL` (1,000 keys) and
//! then repeat a key already queued: the repeat must not leave an `NSCACHE.DEL` without
//! keys (a wasted round trip per batch; every command costs the relay's throughput).

use std::time::Duration;

use cachetx_tests::cli::{server_env, start_fast_relay};
use cachetx_tests::nscache::{fill, get};
use cachetx_tests::{pg, wait_until, RedisServer};

const CATCH_UP: Duration = Duration::from_secs(60);

#[test]
fn a_repeated_key_after_a_full_command_sends_no_empty_del() {
    let server = RedisServer::start();
    let db = pg().create_db("cli_relay_chunks");
    let mut conn = server.conn();
    fill(&mut conn, "cand", 1000, 3600, "v");
    let mut relay = start_fast_relay(&server_env(server.port(), &db), &db);
    // One transaction: both events land in one batch. Keys key0..key999 fill the first
    // command; the last event only repeats key5.
    db.connect()
        .batch_execute(
            "BEGIN;
             SELECT txevents.invalidate('cand', VARIADIC (SELECT array_agg('key' || i) FROM generate_series(0, 999) i));
             SELECT txevents.invalidate('cand', 'key5');
             COMMIT",
        )
        .expect("commit the invalidations");
    wait_until(CATCH_UP, "every key invalidated", || {
        (0..1000).all(|i| get(&mut conn, "cand", &format!("key{i}")).is_none())
    });
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .expect("INFO commandstats");
    let del = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_nscache.del:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        del.starts_with("cmdstat_nscache.del:calls=1,"),
        "one NSCACHE.DEL serves 1,000 keys and a repeat: {del}\n{}",
        relay.log()
    );
    let status = relay.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "relay exit {status:?}\n{}", relay.log());
}
