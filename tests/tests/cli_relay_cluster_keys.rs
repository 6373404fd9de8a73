//! `cachetx relay` in a 3-primary Redis Cluster with keys in every stored-name form
//! (SPEC 2): hash-tagged keys (`user:{7}:profile`, stored as `prefix:user:{7}:profile`)
//! and keys nscache wraps (`a{b`, stored as `prefix:{a{b}`). Each `NSCACHE.DEL` must go
//! to the primary owning the key's slot, which is the stored name's slot too.

use std::time::Duration;

use cachetx_tests::cli::{server_env, start_fast_relay};
use cachetx_tests::nscache::{get, set, stats};
use cachetx_tests::{pg, wait_until, RedisCluster};

const CATCH_UP: Duration = Duration::from_secs(60);

#[test]
fn hash_tagged_and_wrapped_keys_reach_the_node_of_their_slot() {
    let cluster = RedisCluster::start(3);
    let db = pg().create_db("cli_relay_cluster_keys");
    let mut keys: Vec<String> = Vec::new();
    for i in 0..20 {
        keys.push(format!("user:{{{i}}}:profile"));
        keys.push(format!("user:{{{i}}}:settings"));
        keys.push(format!("{{{{t{i}}}"));
        keys.push(format!("a{{b{i}"));
        keys.push(format!("plain{i}"));
    }
    for key in &keys {
        set(&mut cluster.node_for_key(key).conn(), "cand", key, 300, "v");
    }
    set(
        &mut cluster.node_for_key("user:{0}:keep").conn(),
        "cand",
        "user:{0}:keep",
        300,
        "v",
    );
    let mut env = server_env(cluster.nodes[0].port(), &db);
    env.push(("REDIS_CLUSTER", "1".to_string()));
    let mut relay = start_fast_relay(&env, &db);
    let list = keys
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(",");
    db.connect()
        .batch_execute(&format!(
            "BEGIN; SELECT txevents.invalidate('cand', VARIADIC ARRAY[{list}]); COMMIT"
        ))
        .expect("commit the invalidation");
    wait_until(CATCH_UP, "every key gone from its node", || {
        keys.iter()
            .all(|k| get(&mut cluster.node_for_key(k).conn(), "cand", k).is_none())
    });
    for node in &cluster.nodes {
        let own = keys
            .iter()
            .filter(|k| cluster.node_for_key(k).port() == node.port())
            .count() as u64;
        assert_eq!(
            stats(&mut node.conn(), "cand").deletes,
            own,
            "node {}\n{}",
            node.port(),
            relay.log()
        );
    }
    assert!(get(
        &mut cluster.node_for_key("user:{0}:keep").conn(),
        "cand",
        "user:{0}:keep"
    )
    .is_some());
    assert!(
        !relay.log().contains("not applied"),
        "a key was refused\n{}",
        relay.log()
    );
    let status = relay.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "relay exit {status:?}\n{}", relay.log());
}
