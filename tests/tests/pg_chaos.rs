//! Chaos against a private cluster (max_connections = 30, 6 of them reserved for the
//! superuser that checks and kills, autovacuum off so that dead tuples can be counted): producers commit and roll back events while a pool of 40
//! workers (more than the server admits) drains a plain and an ordered group, a killer
//! terminates worker backends mid-batch, the server is restarted with an immediate
//! shutdown mid-stream, and a transaction stays open for the rest of the run.
//!
//! Groups allow 1000 attempts: on a loaded machine a lease of 1 s runs out often,
//! and every redelivery counts one; dead letters are not what this test is about.
//!
//! Afterwards, per group: every committed event was acked exactly once (the acks'
//! counts, committed with each worker's processing, add up to the committed events,
//! and no claim, retry or dead letter is left), nothing rolled back was processed, and
//! the dead tuples of the extension's tables stay within the bounds stated below.
//!
//! One test: the restart would break any test running beside it in this binary.

mod pg_common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cachetx_tests::pg_cluster::pg_with_settings;
use cachetx_tests::{sqlstate, TestDb};
use pg_common::count;
use postgres::{Client, Config, NoTls};

const MAX_CONNECTIONS: usize = 30;
const WORKERS: usize = 40;
const PRODUCERS: usize = 3;
const ROUNDS: usize = 60;
const BATCH: i32 = 10;
const GROUPS: [&str; 2] = ["plain", "ordered"];

/// What the threads saw, for the checks at the end.
#[derive(Default)]
struct Seen {
    /// Server errors by SQLSTATE (connection attempts and statements).
    errors: Mutex<BTreeMap<String, usize>>,
    /// Polls that handed out events.
    batches: AtomicUsize,
    /// Polls, empty ones included.
    polls: AtomicUsize,
    /// Events emitted in transactions that rolled back.
    rolled_back: AtomicUsize,
}

impl Seen {
    fn error(&self, err: &postgres::Error) {
        let code = sqlstate(err).unwrap_or_else(|| "connection".into());
        if code == "40P01" {
            eprintln!("deadlock: {err:?}");
        }
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }
}

fn connect(config: &Config, seen: &Seen) -> Option<Client> {
    match config.connect(NoTls) {
        Ok(client) => Some(client),
        Err(e) => {
            seen.error(&e);
            thread::sleep(Duration::from_millis(50));
            None
        }
    }
}

/// Emits 5 events per transaction for random aggregates and records the committed
/// ones in `produced`, in the same transaction: a crash keeps both or neither.
fn producer(config: Config, seen: Arc<Seen>, n: usize, restarted: Arc<AtomicBool>) {
    let mut done = 0;
    let mut client = None;
    while done < ROUNDS {
        let Some(c) = client.as_mut() else {
            client = connect(&config, &seen);
            continue;
        };
        let rollback = done % 5 == 4;
        let result = (|| -> Result<(), postgres::Error> {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO produced (id)
                 SELECT txevents.emit('chaos.e', '{}', 'agg', 'a' || (random() * 40)::int)
                   FROM generate_series(1, 5)",
                &[],
            )?;
            if rollback {
                tx.rollback()
            } else {
                tx.commit()
            }
        })();
        match result {
            Ok(()) => {
                if rollback {
                    seen.rolled_back.fetch_add(5, Ordering::Relaxed);
                }
                done += 1;
                // Spread production over the restart.
                if done == ROUNDS / 2 && n == 0 {
                    while !restarted.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
                thread::sleep(Duration::from_millis(15));
            }
            Err(e) => {
                seen.error(&e);
                client = None;
            }
        }
    }
}

/// Polls one group, processes (records the ids) and acks in one transaction that also
/// records the ack's count; reconnects after any error.
fn worker(config: Config, seen: Arc<Seen>, group: &'static str, stop: Arc<AtomicBool>) {
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = client.as_mut() else {
            client = connect(&config, &seen);
            continue;
        };
        let result = (|| -> Result<usize, postgres::Error> {
            let ids: Vec<i64> = c
                .query(
                    "SELECT id FROM txevents.poll($1, $2, '1s')",
                    &[&group, &BATCH],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            seen.polls.fetch_add(1, Ordering::Relaxed);
            if ids.is_empty() {
                return Ok(0);
            }
            seen.batches.fetch_add(1, Ordering::Relaxed);
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO processed (grp, id) SELECT $1, unnest($2::bigint[])",
                &[&group, &ids],
            )?;
            tx.execute(
                "INSERT INTO ack_log (grp, n) SELECT $1, txevents.ack($1, $2)",
                &[&group, &ids],
            )?;
            tx.commit()?;
            Ok(ids.len())
        })();
        match result {
            Ok(0) => thread::sleep(Duration::from_millis(20)),
            Ok(_) => {}
            Err(e) => {
                seen.error(&e);
                client = None;
            }
        }
    }
}

/// Terminates a random busy worker backend every 30 ms until `stop`.
fn killer(config: Config, seen: Arc<Seen>, stop: Arc<AtomicBool>) -> usize {
    let mut killed = 0;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(30));
        let Some(c) = client.as_mut() else {
            client = connect(&config, &seen);
            continue;
        };
        match c.query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM (
                 SELECT pid FROM pg_stat_activity
                  WHERE application_name = 'chaos-worker' AND state <> 'idle'
                  ORDER BY random() LIMIT 1) w",
            &[],
        ) {
            Ok(row) => killed += row.get::<_, i64>(0) as usize,
            Err(e) => {
                seen.error(&e);
                client = None;
            }
        }
    }
    killed
}

fn committed_events(c: &mut Client) -> HashSet<i64> {
    c.query("SELECT id FROM produced", &[])
        .expect("produced")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until every committed event has been processed by `group`.
fn wait_processed(c: &mut Client, group: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing = count(
            c,
            &format!(
                "SELECT count(*) FROM produced p WHERE NOT EXISTS
                   (SELECT 1 FROM processed x WHERE x.grp = '{group}' AND x.id = p.id)"
            ),
        );
        if missing == 0 {
            return;
        }
        if Instant::now() >= deadline {
            let dead = count(
                c,
                &format!("SELECT count(*) FROM txevents.dead WHERE consumer = '{group}'"),
            );
            panic!("{group}: {missing} events never processed ({what}); {dead} dead letters");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn admin(db: &TestDb) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match db.config().application_name("chaos-admin").connect(NoTls) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("admin connect: {e}");
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("admin connect: {e}"),
        }
    }
}

#[test]
fn workers_killed_a_crash_a_full_server_and_an_idle_transaction_lose_nothing() {
    let cluster = pg_with_settings(&[
        &format!("max_connections={MAX_CONNECTIONS}"),
        "superuser_reserved_connections=6",
        "autovacuum=off",
    ]);
    let db = cluster.create_db("chaos");
    let mut c = admin(&db);
    c.batch_execute(
        "SELECT txevents.create_consumer('plain', max_attempts => 1000);
         SELECT txevents.create_consumer('ordered', max_attempts => 1000, ordered => true);
         CREATE TABLE produced (id bigint PRIMARY KEY);
         CREATE TABLE processed (grp text, id bigint);
         CREATE TABLE ack_log (grp text, n bigint);
         CREATE ROLE chaos LOGIN IN ROLE txevents_producer, txevents_consumer;
         GRANT INSERT ON produced, processed, ack_log TO chaos",
    )
    .expect("setup");

    // A transaction open from the start: the crash rolls it back.
    let mut doomed = admin(&db);
    doomed.batch_execute("BEGIN").expect("begin");
    let doomed_id: i64 = doomed
        .query_one("SELECT txevents.emit('doomed')", &[])
        .expect("emit")
        .get(0);

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|n| {
            let mut config = db.config();
            config.user("chaos");
            let (seen, restarted) = (seen.clone(), restarted.clone());
            thread::spawn(move || producer(config, seen, n, restarted))
        })
        .collect();
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let mut config = db.config();
            config.application_name("chaos-worker").user("chaos");
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || worker(config, seen, GROUPS[n % 2], stop))
        })
        .collect();
    let kill = {
        let (config, seen, stop) = (db.config(), seen.clone(), stop.clone());
        thread::spawn(move || killer(config, seen, stop))
    };

    // Mid-stream: an immediate shutdown and a restart.
    thread::sleep(Duration::from_millis(1500));
    cluster.restart_immediate().expect("restart");
    drop(doomed);
    let mut c = admin(&db);
    // A transaction that stays open for the rest of the run, with an event of its own.
    let mut idle = admin(&db);
    idle.batch_execute("BEGIN").expect("begin");
    let idle_id: i64 = idle
        .query_one(
            "INSERT INTO produced (id) SELECT txevents.emit('idle') RETURNING id",
            &[],
        )
        .expect("emit")
        .get(0);
    restarted.store(true, Ordering::SeqCst);
    for p in producers {
        p.join().expect("producer");
    }
    // Everything committed is delivered while the idle transaction is still open.
    for group in GROUPS {
        wait_processed(&mut c, group, "the idle transaction still open");
    }
    idle.batch_execute("COMMIT")
        .expect("commit the idle transaction");
    for group in GROUPS {
        wait_processed(&mut c, group, "after the idle transaction committed");
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("worker");
    }
    let killed = kill.join().expect("killer");

    let committed = committed_events(&mut c);
    assert!(committed.contains(&idle_id));
    assert!(!committed.contains(&doomed_id), "the crash rolled it back");
    let errors = seen
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    eprintln!(
        "committed {}, killed {killed}, batches {}, polls {}, errors {errors:?}",
        committed.len(),
        seen.batches.load(Ordering::Relaxed),
        seen.polls.load(Ordering::Relaxed)
    );
    // Clean errors only: too many connections, terminated or crashed backends, the
    // server starting up, and connections the crash cut.
    for code in errors.keys() {
        assert!(
            ["53300", "57P01", "57P02", "57P03", "08006", "connection"].contains(&code.as_str()),
            "unexpected error {code}: {errors:?}"
        );
    }
    assert!(
        errors.contains_key("53300"),
        "the pool exceeded max_connections"
    );
    assert!(killed > 0, "workers were terminated");

    for group in GROUPS {
        let acked = count(
            &mut c,
            &format!("SELECT coalesce(sum(n), 0)::bigint FROM ack_log WHERE grp = '{group}'"),
        );
        assert_eq!(
            acked as usize,
            committed.len(),
            "{group}: acked exactly once each"
        );
        let processed: HashSet<i64> = c
            .query("SELECT id FROM processed WHERE grp = $1", &[&group])
            .expect("processed")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            processed.is_subset(&committed),
            "{group}: nothing rolled back was processed"
        );
        for table in ["claims", "retries", "dead"] {
            assert_eq!(
                count(
                    &mut c,
                    &format!("SELECT count(*) FROM txevents.{table} WHERE consumer = '{group}'")
                ),
                0,
                "{group}: {table} empty"
            );
        }
    }

    // Dead tuples (autovacuum off; statistics restart with the crash, so these count
    // at most the run after it). Bounds: claims, 4 per polled batch (pending row
    // written, leased, acked; a split or a redelivery adds one) plus 64 per terminated
    // backend (an interrupted tick's pending rows); consumers, one per poll (a tick
    // updates the group's row at most once); outbox, only rolled-back emits: delivery
    // never updates it.
    c.batch_execute("SELECT pg_stat_force_next_flush()")
        .expect("flush");
    thread::sleep(Duration::from_millis(1500));
    let dead = |c: &mut Client, table: &str| {
        count(
            c,
            &format!("SELECT pg_stat_get_dead_tuples('txevents.{table}'::regclass)"),
        ) as usize
    };
    let (claims, consumers, outbox) = (
        dead(&mut c, "claims"),
        dead(&mut c, "consumers"),
        dead(&mut c, "outbox"),
    );
    eprintln!("dead tuples: claims {claims}, consumers {consumers}, outbox {outbox}");
    let batches = seen.batches.load(Ordering::Relaxed);
    assert!(
        claims <= 4 * batches + 64 * killed,
        "claims: {claims} dead tuples"
    );
    assert!(
        consumers <= seen.polls.load(Ordering::Relaxed),
        "consumers: {consumers} dead tuples"
    );
    assert!(
        outbox <= seen.rolled_back.load(Ordering::Relaxed) + 1,
        "outbox: {outbox} dead tuples"
    );
}
