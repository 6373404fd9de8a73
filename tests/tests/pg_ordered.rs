//! Ordered consumer groups (`create_consumer(..., ordered => true)`): the events of one
//! aggregate id are handed out one at a time, in emission order; the next waits for
//! the ack, or the dead letter, of the one before. Different aggregates go in parallel.

mod pg_common;

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use cachetx_tests::pg;
use pg_common::*;
use postgres::Client;

fn emit_for(c: &mut Client, event_type: &str, aggregate: Option<&str>) -> i64 {
    c.query_one(
        "SELECT txevents.emit($1, '{}', 'order', $2)",
        &[&event_type, &aggregate],
    )
    .expect("emit")
    .get(0)
}

fn sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids
}

#[test]
fn an_aggregate_waits_for_the_ack_of_its_previous_event() {
    let db = pg().create_db("ordered_waits_for_ack");
    let mut c = db.connect();
    c.batch_execute(
        "SELECT txevents.create_consumer('o', ordered => true);
         SELECT txevents.create_consumer('u', max_attempts => 3)",
    )
    .expect("create_consumer");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM txevents.consumers WHERE ordered"
        ),
        1
    );
    let a: Vec<i64> = (0..3).map(|_| emit_for(&mut c, "a", Some("A"))).collect();
    let b: Vec<i64> = (0..2).map(|_| emit_for(&mut c, "b", Some("B"))).collect();
    let loose = emit_for(&mut c, "none", None);

    // Positive control: the unordered group gets everything at once.
    let all = polled_ids(&poll(&mut c, "u", 100, "5 min"));
    assert_eq!(sorted(all), sorted([&a[..], &b[..], &[loose]].concat()));

    // The ordered group: the head of each aggregate, and the event without one.
    let first = polled_ids(&poll(&mut c, "o", 100, "5 min"));
    assert_eq!(sorted(first.clone()), sorted(vec![a[0], b[0], loose]));
    assert!(
        poll(&mut c, "o", 100, "5 min").is_empty(),
        "the next events of A and B wait for their heads"
    );
    assert_eq!(ack(&mut c, "o", &[a[0], loose]), 2);
    assert_eq!(polled_ids(&poll(&mut c, "o", 100, "5 min")), [a[1]]);

    // A nacked head keeps its lane: B's second event waits for the retry.
    let retry: bool = c
        .query_one(
            "SELECT txevents.nack('o', $1, 'boom', interval '300 ms')",
            &[&b[0]],
        )
        .expect("nack")
        .get(0);
    assert!(retry);
    assert!(poll(&mut c, "o", 100, "5 min").is_empty(), "B is blocked");
    thread::sleep(Duration::from_millis(400));
    let again = poll(&mut c, "o", 100, "5 min");
    assert_eq!(
        again,
        vec![(b[0], "b".to_string(), 2)],
        "the retry, attempt 2"
    );
    assert_eq!(ack(&mut c, "o", &[b[0], a[1]]), 2);
    let rest = polled_ids(&poll(&mut c, "o", 100, "5 min"));
    assert_eq!(sorted(rest), sorted(vec![a[2], b[1]]));
    assert_eq!(ack(&mut c, "o", &[a[2], b[1]]), 2);
    assert!(drain_group(&mut c, "o").is_empty());
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM txevents.claims WHERE consumer = 'o'"
        ),
        0
    );
}

#[test]
fn a_dead_letter_releases_the_aggregate() {
    let db = pg().create_db("ordered_dead_letter_releases");
    let mut c = db.connect();
    c.batch_execute("SELECT txevents.create_consumer('o', max_attempts => 1, ordered => true)")
        .expect("create_consumer");
    let a: Vec<i64> = (0..2).map(|_| emit_for(&mut c, "a", Some("A"))).collect();
    assert_eq!(polled_ids(&poll(&mut c, "o", 10, "5 min")), [a[0]]);
    let retry: bool = c
        .query_one("SELECT txevents.nack('o', $1, 'fatal')", &[&a[0]])
        .expect("nack")
        .get(0);
    assert!(!retry, "last attempt: dead letter");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM txevents.dead_letters WHERE consumer = 'o'"
        ),
        1
    );
    assert_eq!(polled_ids(&poll(&mut c, "o", 10, "5 min")), [a[1]]);
}

#[test]
fn concurrent_workers_never_hold_two_events_of_one_aggregate_and_keep_its_order() {
    let db = pg().create_db("ordered_concurrent_workers");
    let mut c = db.connect();
    c.batch_execute(
        "SELECT txevents.create_consumer('o', ordered => true);
         CREATE TABLE busy (aggregate text PRIMARY KEY);
         CREATE TABLE handled (seq bigserial, aggregate text, id bigint)",
    )
    .expect("setup");
    let (aggregates, per) = (20, 10);
    // Interleaved over aggregates, in several transactions.
    let mut emitted: HashMap<String, Vec<i64>> = HashMap::new();
    for round in 0..per {
        let mut tx = c.transaction().expect("begin");
        for k in 0..aggregates {
            let aggregate = format!("agg{k}");
            let id: i64 = tx
                .query_one(
                    "SELECT txevents.emit('e', '{}', 'order', $1)",
                    &[&aggregate],
                )
                .expect("emit")
                .get(0);
            emitted.entry(aggregate).or_default().push(id);
        }
        tx.commit().expect("commit");
        assert!(round < per);
    }
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let mut w = db.connect();
            thread::spawn(move || {
                let mut empty = 0;
                while empty < 5 {
                    let got: Vec<(i64, Option<String>)> = w
                        .query(
                            "SELECT id, aggregate_id FROM txevents.poll('o', 5, '5 min')",
                            &[],
                        )
                        .expect("poll")
                        .iter()
                        .map(|r| (r.get(0), r.get(1)))
                        .collect();
                    if got.is_empty() {
                        empty += 1;
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    empty = 0;
                    let ids: Vec<i64> = got.iter().map(|g| g.0).collect();
                    for (id, aggregate) in &got {
                        // Fails with a unique violation if another worker holds an
                        // event of the same aggregate right now.
                        w.execute("INSERT INTO busy VALUES ($1)", &[aggregate])
                            .expect("two events of one aggregate at once");
                        w.execute(
                            "INSERT INTO handled (aggregate, id) VALUES ($1, $2)",
                            &[aggregate, id],
                        )
                        .expect("log");
                        w.execute("DELETE FROM busy WHERE aggregate = $1", &[aggregate])
                            .expect("done");
                    }
                    assert_eq!(ack(&mut w, "o", &ids), ids.len() as i64);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let mut handled: HashMap<String, Vec<i64>> = HashMap::new();
    for row in c
        .query("SELECT aggregate, id FROM handled ORDER BY seq", &[])
        .expect("handled")
    {
        handled.entry(row.get(0)).or_default().push(row.get(1));
    }
    assert_eq!(
        handled, emitted,
        "each aggregate once each, in emission order"
    );
}
