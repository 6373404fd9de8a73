//! The caller cache of nscache's ACL checks (redis-ext/src/caller_cache.rs)
//! against real servers: a client's ACL user is remembered between its
//! nscache commands, and every way to change whose permissions apply must
//! be seen by the very next nscache command of the same connection.
//!
//! Every test first warms the cache (the client runs an allowed nscache
//! command twice: the second one is served from the cache), then changes
//! something (ACL SETUSER, AUTH, HELLO AUTH, RESET, ACL DELUSER, a queued
//! AUTH or ACL command inside MULTI/EXEC, data commands, scripts), then
//! checks the next nscache command of that connection.
//!
//! ACL key patterns apply to the stored names `prefix:{key}` (issue 14), so
//! `~tenantA:*` opens namespace `tenantA` only.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cachetx_tests::acl::{
    assert_noperm, bulk, login, login_resp3, noperm_text, run, word, PASSWORD,
};
use cachetx_tests::{wait_until, RedisServer};
use redis::{Connection, RedisError, Value};

/// The key every namespace holds (seeded by [`start`]).
const KEY: &str = "k";

/// What `NSCACHE.GET <ns> k` answers for each seeded namespace.
const SEEDED: [(&str, &str); 3] = [("tenantA", "a"), ("tenantB", "b"), ("tenantC", "c")];

fn seeded_value(ns: &str) -> &'static str {
    SEEDED
        .iter()
        .find(|(name, _)| *name == ns)
        .map(|(_, value)| *value)
        .unwrap_or_else(|| panic!("namespace {ns} is not seeded"))
}

/// Creates (or resets) ACL user `name` with password `password` and `rules`.
fn add_user_with_password(conn: &mut Connection, name: &str, password: &str, rules: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(name)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"));
    for rule in rules {
        cmd.arg(*rule);
    }
    let () = cmd
        .query(conn)
        .unwrap_or_else(|e| panic!("ACL SETUSER {name} {rules:?}: {e}"));
}

/// Creates (or resets) ACL user `name` with password [`PASSWORD`], every
/// command, and the key `patterns`.
fn add_user(conn: &mut Connection, name: &str, patterns: &[&str]) {
    let mut rules = patterns.to_vec();
    rules.push("+@all");
    add_user_with_password(conn, name, PASSWORD, &rules);
}

/// Edits user `name` in place (`ACL SETUSER name rules...`, no reset).
fn edit_user(conn: &mut Connection, name: &str, rules: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(name);
    for rule in rules {
        cmd.arg(*rule);
    }
    let () = cmd
        .query(conn)
        .unwrap_or_else(|e| panic!("ACL SETUSER {name} {rules:?}: {e}"));
}

/// `NSCACHE.GET ns k` on `conn`: must be allowed and answer the seeded value.
fn assert_get_allowed(conn: &mut Connection, ns: &str, what: &str) {
    let value = run(conn, &["NSCACHE.GET", ns, KEY])
        .unwrap_or_else(|e| panic!("{what}: NSCACHE.GET {ns} must be allowed: {e}"));
    assert!(bulk(&value, seeded_value(ns)), "{what}: {value:?}");
}

/// `NSCACHE.GET ns k` on `conn`: must be the module's NOPERM.
fn assert_get_refused(conn: &mut Connection, ns: &str, what: &str) {
    assert_noperm(run(conn, &["NSCACHE.GET", ns, KEY]), ns, what);
}

/// An element of a reply (EXEC's array, a pipeline): the seeded value of `ns`.
fn assert_element_allowed(v: &Value, ns: &str, what: &str) {
    assert!(bulk(v, seeded_value(ns)), "{what}: {v:?}");
}

/// An element of a reply: the module's NOPERM naming `prefix`.
fn assert_element_noperm(v: &Value, prefix: &str, what: &str) {
    match v {
        Value::ServerError(err) => {
            assert_eq!(err.code(), "NOPERM", "{what}: {err:?}");
            assert!(
                err.details()
                    .is_some_and(|d| d.contains(&noperm_text(prefix))),
                "{what}: {err:?}"
            );
        }
        other => panic!("{what}: must be a NOPERM error, got {other:?}"),
    }
}

/// Warms the caller cache of `conn`: two allowed `NSCACHE.GET ns k`, the
/// second of which is served from the cache.
fn warm(conn: &mut Connection, ns: &str) {
    assert_get_allowed(conn, ns, "warming (lookup)");
    assert_get_allowed(conn, ns, "warming (from the cache)");
}

/// A server with user `admin` (every key, every command) and the seeded
/// namespaces; returns it with an admin connection.
fn start() -> (RedisServer, Connection) {
    let server = RedisServer::start();
    let mut conn = server.conn();
    add_user(&mut conn, "admin", &["~*"]);
    drop(conn);
    let mut admin = login(&server, "admin");
    for (ns, value) in SEEDED {
        let reply = run(&mut admin, &["NSCACHE.SET", ns, KEY, "600", value]).expect("seed");
        assert!(word(&reply, "OK"), "seed {ns}: {reply:?}");
    }
    (server, admin)
}

/// Runs `commands` in one MULTI/EXEC on `conn` (sent as one pipeline) and
/// returns EXEC's array, each element as Redis answered it.
fn transaction(conn: &mut Connection, commands: &[&[&str]]) -> Vec<Value> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("MULTI");
    for args in commands {
        let cmd = pipe.cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
    }
    pipe.cmd("EXEC");
    let mut replies: Vec<Value> = pipe.query(conn).expect("MULTI ... EXEC pipeline");
    assert_eq!(replies.len(), commands.len() + 2, "{replies:?}");
    assert!(word(&replies[0], "OK"), "MULTI: {replies:?}");
    for (queued, args) in replies[1..=commands.len()].iter().zip(commands) {
        assert!(word(queued, "QUEUED"), "{args:?} not queued: {replies:?}");
    }
    match replies.pop() {
        Some(Value::Array(elements)) => {
            assert_eq!(elements.len(), commands.len(), "EXEC: {elements:?}");
            elements
        }
        other => panic!("EXEC did not answer an array: {other:?}"),
    }
}

/// Asserts the server answers PING and its process is still alive, and its
/// log shows no crash.
fn assert_server_alive(server: &RedisServer, admin: &mut Connection) {
    let pong = run(admin, &["PING"]).expect("PING after the test");
    assert!(word(&pong, "PONG"), "{pong:?}");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(admin)
        .expect("INFO server");
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(str::trim)
        .expect("INFO server has process_id");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "redis-server {pid} is gone"
    );
    let log = server.log();
    for crash in ["crashed by signal", "Guru Meditation", "ASSERTION FAILED"] {
        assert!(
            !log.contains(crash),
            "the server log shows {crash:?}:\n{log}"
        );
    }
}

// 1. ACL SETUSER by another connection.

#[test]
fn acl_setuser_by_an_admin_applies_to_a_warmed_client_at_its_next_command() {
    let (server, mut admin) = start();
    add_user(&mut admin, "u", &["~tenantA:*"]);
    let mut conn = login(&server, "u");
    warm(&mut conn, "tenantA");
    assert_get_refused(&mut conn, "tenantB", "before the change");

    // Revoking: the pattern of tenantA is replaced by tenantB's.
    edit_user(&mut admin, "u", &["resetkeys", "~tenantB:*"]);
    assert_get_refused(&mut conn, "tenantA", "revoked by ACL SETUSER");
    assert_get_allowed(&mut conn, "tenantB", "granted by ACL SETUSER");
    assert_noperm(
        run(&mut conn, &["NSCACHE.SET", "tenantA", "x", "60", "v"]),
        "tenantA",
        "a write after the revocation",
    );

    // Granting: warm again (on tenantB), then add tenantA back.
    warm(&mut conn, "tenantB");
    edit_user(&mut admin, "u", &["~tenantA:*"]);
    assert_get_allowed(&mut conn, "tenantA", "granted again by ACL SETUSER");
    assert_get_allowed(&mut conn, "tenantB", "kept");

    // Read-only: %R~ allows reads of tenantA, refuses writes.
    warm(&mut conn, "tenantA");
    edit_user(&mut admin, "u", &["resetkeys", "%R~tenantA:*"]);
    assert_get_allowed(&mut conn, "tenantA", "read-only pattern, read");
    assert_noperm(
        run(&mut conn, &["NSCACHE.SET", "tenantA", "x", "60", "v"]),
        "tenantA",
        "read-only pattern, write",
    );
    assert_get_refused(&mut conn, "tenantB", "no longer granted");

    // Nothing at all.
    edit_user(&mut admin, "u", &["resetkeys"]);
    assert_get_refused(&mut conn, "tenantA", "resetkeys");
}

// 2. AUTH on the warmed connection.

#[test]
fn auth_as_another_user_on_a_warmed_connection_applies_that_users_permissions_at_once() {
    let (server, mut admin) = start();
    add_user(&mut admin, "a", &["~tenantA:*"]);
    add_user(&mut admin, "b", &["~tenantB:*"]);
    let mut conn = login(&server, "a");
    warm(&mut conn, "tenantA");
    assert_get_refused(&mut conn, "tenantB", "a, before AUTH");

    // A failed AUTH changes nothing.
    let err = run(&mut conn, &["AUTH", "b", "wrong"]).expect_err("wrong password");
    assert_eq!(err.code(), Some("WRONGPASS"), "{err}");
    assert_get_allowed(&mut conn, "tenantA", "still a after a failed AUTH");

    // a -> b: tenantA allowed -> denied, tenantB denied -> allowed.
    let ok = run(&mut conn, &["AUTH", "b", PASSWORD]).expect("AUTH b");
    assert!(word(&ok, "OK"), "{ok:?}");
    assert_get_refused(&mut conn, "tenantA", "b after AUTH");
    assert_get_allowed(&mut conn, "tenantB", "b after AUTH");

    // b -> a, after warming as b.
    warm(&mut conn, "tenantB");
    let ok = run(&mut conn, &["AUTH", "a", PASSWORD]).expect("AUTH a");
    assert!(word(&ok, "OK"), "{ok:?}");
    assert_get_allowed(&mut conn, "tenantA", "a after AUTH");
    assert_get_refused(&mut conn, "tenantB", "a after AUTH");

    // The legacy one-argument AUTH (the default user's password).
    edit_user(
        &mut admin,
        "default",
        &["resetpass", ">defpw", "resetkeys", "~tenantC:*"],
    );
    warm(&mut conn, "tenantA");
    let ok = run(&mut conn, &["AUTH", "defpw"]).expect("AUTH <password>");
    assert!(word(&ok, "OK"), "{ok:?}");
    assert_get_refused(&mut conn, "tenantA", "default after AUTH <password>");
    assert_get_allowed(&mut conn, "tenantC", "default after AUTH <password>");
}

// 3. HELLO 3 AUTH.

#[test]
fn hello_3_auth_on_a_warmed_connection_applies_the_new_users_permissions_at_once() {
    let (server, mut admin) = start();
    add_user(&mut admin, "a", &["~tenantA:*"]);
    add_user(&mut admin, "b", &["~tenantB:*"]);
    let mut conn = login_resp3(&server, "a");
    warm(&mut conn, "tenantA");
    assert_get_refused(&mut conn, "tenantB", "a, before HELLO");

    let hello = run(&mut conn, &["HELLO", "3", "AUTH", "b", PASSWORD]).expect("HELLO 3 AUTH b");
    assert!(matches!(hello, Value::Map(_)), "{hello:?}");
    assert_get_refused(&mut conn, "tenantA", "b after HELLO 3 AUTH");
    assert_get_allowed(&mut conn, "tenantB", "b after HELLO 3 AUTH");

    warm(&mut conn, "tenantB");
    let hello = run(&mut conn, &["HELLO", "3", "AUTH", "a", PASSWORD]).expect("HELLO 3 AUTH a");
    assert!(matches!(hello, Value::Map(_)), "{hello:?}");
    assert_get_allowed(&mut conn, "tenantA", "a after HELLO 3 AUTH");
    assert_get_refused(&mut conn, "tenantB", "a after HELLO 3 AUTH");

    // A RESP2 connection upgraded by HELLO 3 AUTH behaves the same.
    let mut resp2 = login(&server, "a");
    warm(&mut resp2, "tenantA");
    let hello = run(&mut resp2, &["HELLO", "3", "AUTH", "b", PASSWORD]).expect("HELLO 3 AUTH b");
    assert!(matches!(hello, Value::Map(_)), "{hello:?}");
    assert_get_refused(&mut resp2, "tenantA", "b after HELLO 3 AUTH on RESP2");
    assert_get_allowed(&mut resp2, "tenantB", "b after HELLO 3 AUTH on RESP2");
}

// 4. RESET.

#[test]
fn reset_on_a_warmed_connection_applies_the_default_users_permissions_at_once() {
    let (server, mut admin) = start();
    // The default user is restricted to tenantB; admin has its own user.
    edit_user(&mut admin, "default", &["resetkeys", "~tenantB:*"]);
    add_user(&mut admin, "a", &["~tenantA:*"]);
    let mut conn = login(&server, "a");
    warm(&mut conn, "tenantA");
    assert_get_refused(&mut conn, "tenantB", "a, before RESET");

    let reset = run(&mut conn, &["RESET"]).expect("RESET");
    assert!(word(&reset, "RESET"), "{reset:?}");
    assert_get_refused(&mut conn, "tenantA", "default after RESET");
    assert_get_allowed(&mut conn, "tenantB", "default after RESET");

    // And back to a, from a warmed default.
    warm(&mut conn, "tenantB");
    let ok = run(&mut conn, &["AUTH", "a", PASSWORD]).expect("AUTH a");
    assert!(word(&ok, "OK"), "{ok:?}");
    assert_get_allowed(&mut conn, "tenantA", "a after AUTH");
    warm(&mut conn, "tenantA");
    let reset = run(&mut conn, &["RESET"]).expect("RESET");
    assert!(word(&reset, "RESET"), "{reset:?}");
    assert_get_refused(&mut conn, "tenantA", "default after the second RESET");
}

// 5. ACL DELUSER, then a new user with the same name.

#[test]
fn a_deleted_and_recreated_user_never_lends_the_old_permissions_to_a_warmed_connection() {
    let (server, mut admin) = start();
    add_user(&mut admin, "u", &["~tenantA:*"]);
    let mut old = login(&server, "u");
    warm(&mut old, "tenantA");

    let deleted = run(&mut admin, &["ACL", "DELUSER", "u"]).expect("ACL DELUSER");
    assert_eq!(deleted, Value::Int(1));
    add_user_with_password(&mut admin, "u", PASSWORD, &["~tenantB:*", "+@all"]);

    // Redis disconnects the clients of a deleted user: an error (of any
    // kind, NOPERM included), never the deleted user's tenantA.
    match run(&mut old, &["NSCACHE.GET", "tenantA", KEY]) {
        Ok(value) => panic!("the old connection still reads tenantA: {value:?}"),
        Err(err) => eprintln!("old connection after ACL DELUSER: {err}"),
    }
    if let Ok(value) = run(&mut old, &["NSCACHE.GET", "tenantB", KEY]) {
        panic!("the old connection got the new user's permissions: {value:?}");
    }

    // A new login of the recreated user gets its own permissions.
    let mut new = login(&server, "u");
    assert_get_refused(&mut new, "tenantA", "the recreated user");
    warm(&mut new, "tenantB");
    assert_get_refused(&mut new, "tenantA", "the recreated user, warmed");
    assert_server_alive(&server, &mut admin);
}

/// Which namespace generation `g` of the hammered user may access.
fn namespace_of_generation(g: u64) -> &'static str {
    if g.is_multiple_of(2) {
        "tenantA"
    } else {
        "tenantB"
    }
}

/// (Re)creates the hammered user "h" as generation `g`: password `pw<g>`
/// (so a login succeeds only while generation `g` exists) and the pattern
/// of [`namespace_of_generation`].
fn create_generation(admin: &mut Connection, g: u64) {
    let pattern = format!("~{}:*", namespace_of_generation(g));
    add_user_with_password(admin, "h", &format!("pw{g}"), &[&pattern, "+@all"]);
}

/// What the hammering threads saw.
#[derive(Default)]
struct Hammered {
    logins: u64,
    allowed: u64,
    refused: u64,
    disconnects: u64,
    /// Pipelines completed, per generation.
    pipelines_of: Vec<u64>,
    /// Anything that must not happen, described.
    violations: Vec<String>,
}

/// One hammering thread: logs in as the current generation of "h", runs
/// pipelines of NSCACHE.GET/SET on three namespaces until the connection
/// fails, and checks every reply against that generation's namespace.
fn hammer(port: u16, generation: &AtomicU64, stop: &AtomicBool, seen: &Mutex<Hammered>) {
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let g = generation.load(Ordering::SeqCst);
        let url = format!("redis://h:pw{g}@127.0.0.1:{port}/");
        let client = redis::Client::open(url).expect("client URL");
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(5)) else {
            // The generation is over (WRONGPASS) or the user is between
            // DELUSER and SETUSER: read the generation again.
            thread::yield_now();
            continue;
        };
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        lock(seen).logins += 1;
        let allowed_ns = namespace_of_generation(g);
        loop {
            round += 1;
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let mut sent = Vec::new();
            for i in 0..8 {
                for ns in ["tenantA", "tenantB", "tenantC"] {
                    if i % 2 == 0 {
                        pipe.cmd("NSCACHE.GET").arg(ns).arg(KEY);
                        sent.push((ns, "GET"));
                    } else {
                        pipe.cmd("NSCACHE.SET")
                            .arg(ns)
                            .arg(format!("w{}", round % 16))
                            .arg(60)
                            .arg("v");
                        sent.push((ns, "SET"));
                    }
                }
            }
            let replies: Vec<Value> = match pipe.query(&mut conn) {
                Ok(replies) => replies,
                Err(_) => {
                    lock(seen).disconnects += 1;
                    break;
                }
            };
            let mut seen = lock(seen);
            if replies.len() != sent.len() {
                seen.violations.push(format!(
                    "generation {g}: {} replies for {} commands",
                    replies.len(),
                    sent.len()
                ));
                break;
            }
            for ((ns, op), reply) in sent.iter().zip(&replies) {
                match reply {
                    Value::ServerError(err) if err.code() == "NOPERM" => {
                        seen.refused += 1;
                        if *ns == allowed_ns {
                            seen.violations.push(format!(
                                "generation {g}: {op} {ns} refused although allowed: {err:?}"
                            ));
                        }
                    }
                    Value::ServerError(err) => seen.violations.push(format!(
                        "generation {g}: {op} {ns}: unexpected error {err:?}"
                    )),
                    value => {
                        seen.allowed += 1;
                        if *ns != allowed_ns {
                            seen.violations.push(format!(
                                "generation {g} (only {allowed_ns}): {op} {ns} succeeded: {value:?}"
                            ));
                        }
                    }
                }
            }
            let index = usize::try_from(g).expect("generation fits usize");
            if seen.pipelines_of.len() <= index {
                seen.pipelines_of.resize(index + 1, 0);
            }
            seen.pipelines_of[index] += 1;
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
    }
}

fn lock(seen: &Mutex<Hammered>) -> std::sync::MutexGuard<'_, Hammered> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn fifty_delete_and_recreate_cycles_under_pipelined_load_keep_generations_apart_and_the_server_up()
{
    const CYCLES: u64 = 50;
    const THREADS: usize = 4;
    let (server, mut admin) = start();
    create_generation(&mut admin, 0);
    let generation = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Hammered::default()));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (generation, stop, seen) = (
                Arc::clone(&generation),
                Arc::clone(&stop),
                Arc::clone(&seen),
            );
            let port = server.port();
            thread::spawn(move || hammer(port, &generation, &stop, &seen))
        })
        .collect();

    let pipelines_of = |g: u64| -> u64 {
        let index = usize::try_from(g).expect("generation fits usize");
        lock(&seen).pipelines_of.get(index).copied().unwrap_or(0)
    };
    wait_until(
        Duration::from_secs(30),
        "a pipeline of generation 0",
        || pipelines_of(0) > 0,
    );
    for g in 1..=CYCLES {
        let deleted = run(&mut admin, &["ACL", "DELUSER", "h"]).expect("ACL DELUSER h");
        assert_eq!(deleted, Value::Int(1), "cycle {g}");
        create_generation(&mut admin, g);
        generation.store(g, Ordering::SeqCst);
        // Each generation is hammered before the next one replaces it.
        wait_until(
            Duration::from_secs(30),
            &format!("a pipeline of generation {g}"),
            || pipelines_of(g) > 0,
        );
    }
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.join().expect("a hammering thread panicked");
    }

    let seen = lock(&seen);
    eprintln!(
        "{} logins, {} allowed, {} refused, {} disconnects",
        seen.logins, seen.allowed, seen.refused, seen.disconnects
    );
    assert!(
        seen.violations.is_empty(),
        "{} violations, first ones: {:#?}",
        seen.violations.len(),
        &seen.violations[..seen.violations.len().min(10)]
    );
    assert!(seen.logins > CYCLES, "{} logins", seen.logins);
    assert!(seen.allowed > 0 && seen.refused > 0);
    assert_server_alive(&server, &mut admin);

    // The last generation, logged in afresh, has exactly its permissions.
    let url = format!("redis://h:pw{CYCLES}@127.0.0.1:{}/", server.port());
    let mut last = redis::Client::open(url)
        .expect("client URL")
        .get_connection()
        .expect("log in as the last generation");
    let own = namespace_of_generation(CYCLES);
    let other = namespace_of_generation(CYCLES + 1);
    warm(&mut last, own);
    assert_get_refused(&mut last, other, "the last generation");
}

// 6. MULTI/EXEC.

#[test]
fn a_queued_auth_applies_to_the_nscache_commands_after_it_in_the_same_exec_and_after_it() {
    let (server, mut admin) = start();
    add_user(&mut admin, "a", &["~tenantA:*"]);
    add_user(&mut admin, "b", &["~tenantB:*"]);
    let mut conn = login(&server, "a");
    warm(&mut conn, "tenantA");

    // The first GET resolves a inside EXEC; the ones after AUTH must be b's.
    let replies = transaction(
        &mut conn,
        &[
            &["NSCACHE.GET", "tenantA", KEY],
            &["AUTH", "b", PASSWORD],
            &["NSCACHE.GET", "tenantA", KEY],
            &["NSCACHE.GET", "tenantB", KEY],
        ],
    );
    assert_element_allowed(&replies[0], "tenantA", "a, in EXEC before AUTH");
    assert!(word(&replies[1], "OK"), "AUTH in EXEC: {replies:?}");
    assert_element_noperm(&replies[2], "tenantA", "b, in EXEC after AUTH");
    assert_element_allowed(&replies[3], "tenantB", "b, in EXEC after AUTH");
    // After EXEC, still b.
    assert_get_refused(&mut conn, "tenantA", "b, after EXEC");
    assert_get_allowed(&mut conn, "tenantB", "b, after EXEC");

    // The other direction, from a warmed b.
    warm(&mut conn, "tenantB");
    let replies = transaction(
        &mut conn,
        &[
            &["NSCACHE.GET", "tenantB", KEY],
            &["AUTH", "a", PASSWORD],
            &["NSCACHE.GET", "tenantB", KEY],
            &["NSCACHE.GET", "tenantA", KEY],
        ],
    );
    assert_element_allowed(&replies[0], "tenantB", "b, in EXEC before AUTH");
    assert!(word(&replies[1], "OK"), "AUTH in EXEC: {replies:?}");
    assert_element_noperm(&replies[2], "tenantB", "a, in EXEC after AUTH");
    assert_element_allowed(&replies[3], "tenantA", "a, in EXEC after AUTH");
    assert_get_refused(&mut conn, "tenantB", "a, after EXEC");
    assert_get_allowed(&mut conn, "tenantA", "a, after EXEC");
}

#[test]
fn a_queued_acl_setuser_of_oneself_applies_inside_the_same_exec() {
    let (server, mut admin) = start();
    // +@all includes +acl: a may edit itself.
    add_user(&mut admin, "a", &["~tenantA:*"]);
    let mut conn = login(&server, "a");
    warm(&mut conn, "tenantA");

    let replies = transaction(
        &mut conn,
        &[
            &["NSCACHE.GET", "tenantA", KEY],
            &["ACL", "SETUSER", "a", "resetkeys", "~tenantB:*"],
            &["NSCACHE.GET", "tenantA", KEY],
            &["NSCACHE.GET", "tenantB", KEY],
        ],
    );
    assert_element_allowed(&replies[0], "tenantA", "before ACL SETUSER in EXEC");
    assert!(word(&replies[1], "OK"), "ACL SETUSER in EXEC: {replies:?}");
    assert_element_noperm(&replies[2], "tenantA", "after ACL SETUSER in EXEC");
    assert_element_allowed(&replies[3], "tenantB", "after ACL SETUSER in EXEC");
    assert_get_refused(&mut conn, "tenantA", "after EXEC");
    assert_get_allowed(&mut conn, "tenantB", "after EXEC");
}

#[test]
fn deleting_oneself_inside_exec_runs_the_rest_of_it_as_the_default_user() {
    let (server, mut admin) = start();
    // Redis moves the clients of a deleted user to the default user (and
    // closes them after the command): restrict it, so using the deleted
    // user's handle would show.
    edit_user(&mut admin, "default", &["resetkeys", "~tenantB:*"]);
    add_user(&mut admin, "a", &["~tenantA:*"]);
    let mut conn = login(&server, "a");
    warm(&mut conn, "tenantA");

    // Redis 7.0 stops sending replies once the client deleted its own user
    // (it is closed after the command), but runs the rest of the EXEC as
    // the default user: what they wrote is the evidence.
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("MULTI");
    pipe.cmd("NSCACHE.GET").arg("tenantA").arg(KEY);
    pipe.cmd("ACL").arg("DELUSER").arg("a");
    pipe.cmd("NSCACHE.SET")
        .arg("tenantA")
        .arg("x")
        .arg(60)
        .arg("v");
    pipe.cmd("NSCACHE.SET")
        .arg("tenantB")
        .arg("y")
        .arg(60)
        .arg("v");
    pipe.cmd("EXEC");
    let replies: Result<Vec<Value>, RedisError> = pipe.query(&mut conn);
    eprintln!("MULTI/EXEC deleting oneself answered: {replies:?}");
    if let Ok(replies) = &replies {
        // Should a Redis version send the whole EXEC reply, check it.
        if let Some(Value::Array(elements)) = replies.last() {
            assert_element_allowed(&elements[0], "tenantA", "a, before ACL DELUSER in EXEC");
            assert_element_noperm(&elements[2], "tenantA", "after deleting oneself in EXEC");
            assert!(
                word(&elements[3], "OK"),
                "default, after deleting oneself: {elements:?}"
            );
        }
    }
    let exists = |admin: &mut Connection, name: &str| -> Value {
        run(admin, &["EXISTS", name]).expect("EXISTS")
    };
    assert_eq!(
        exists(&mut admin, "tenantA:{x}"),
        Value::Int(0),
        "the deleted user's permissions were used after ACL DELUSER"
    );
    assert_eq!(
        exists(&mut admin, "tenantB:{y}"),
        Value::Int(1),
        "the rest of the EXEC runs as the default user (positive control)"
    );
    let refusals = acl_log_entries(&mut admin, "tenantA:{x}");
    assert_eq!(refusals, ["default"], "ACL LOG users refused tenantA:{{x}}");
    // The connection is closed after EXEC.
    if let Ok(value) = run(&mut conn, &["NSCACHE.GET", "tenantA", KEY]) {
        panic!("the deleted user's connection still runs commands: {value:?}");
    }
    assert_server_alive(&server, &mut admin);
}

/// The `username` of every `ACL LOG` entry whose `object` is `object`.
fn acl_log_entries(admin: &mut Connection, object: &str) -> Vec<String> {
    let entries: Vec<Vec<Value>> = redis::cmd("ACL").arg("LOG").query(admin).expect("ACL LOG");
    let field = |fields: &[Value], name: &str| -> Option<String> {
        fields.chunks(2).find_map(|pair| match pair {
            [Value::BulkString(key), Value::BulkString(value)]
                if key.as_slice() == name.as_bytes() =>
            {
                Some(String::from_utf8_lossy(value).into_owned())
            }
            _ => None,
        })
    };
    entries
        .iter()
        .filter(|fields| field(fields, "object").as_deref() == Some(object))
        .map(|fields| field(fields, "username").expect("an ACL LOG entry has a username"))
        .collect()
}

// 7. Data commands between nscache commands.

#[test]
fn data_commands_between_nscache_commands_do_not_hide_an_acl_change_or_an_auth() {
    let (server, mut admin) = start();
    add_user(&mut admin, "a", &["~tenantA:*", "~plain:*"]);
    add_user(&mut admin, "b", &["~tenantB:*", "~plain:*"]);
    let mut conn = login(&server, "a");
    warm(&mut conn, "tenantA");
    let data: [&[&str]; 6] = [
        &["SET", "plain:s", "1"],
        &["GET", "plain:s"],
        &["HSET", "plain:h", "f", "v"],
        &["MGET", "plain:s", "plain:t"],
        &["INCR", "plain:n"],
        &["PING"],
    ];
    let data_commands = |conn: &mut Connection| {
        for args in data {
            run(conn, args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_get_allowed(conn, "tenantA", "between data commands");
        }
    };
    data_commands(&mut conn);

    // ACL SETUSER by the admin, then only data commands before nscache's.
    edit_user(&mut admin, "a", &["resetkeys", "~tenantB:*", "~plain:*"]);
    for args in data {
        run(&mut conn, args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    assert_get_refused(&mut conn, "tenantA", "after ACL SETUSER and data commands");
    assert_get_allowed(&mut conn, "tenantB", "after ACL SETUSER and data commands");

    // The same, pipelined: the nscache command's element is the refusal.
    edit_user(&mut admin, "a", &["resetkeys", "~tenantA:*", "~plain:*"]);
    warm(&mut conn, "tenantA");
    edit_user(&mut admin, "a", &["resetkeys", "~tenantC:*", "~plain:*"]);
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.cmd("HSET").arg("plain:h").arg("g").arg("w");
    pipe.cmd("NSCACHE.GET").arg("tenantA").arg(KEY);
    pipe.cmd("SET").arg("plain:s").arg("2");
    pipe.cmd("NSCACHE.GET").arg("tenantC").arg(KEY);
    let replies: Vec<Value> = pipe.query(&mut conn).expect("mixed pipeline");
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert_element_noperm(&replies[1], "tenantA", "pipelined, after ACL SETUSER");
    assert_element_allowed(&replies[3], "tenantC", "pipelined, after ACL SETUSER");

    // AUTH in the middle of a data workload.
    edit_user(&mut admin, "a", &["resetkeys", "~tenantA:*", "~plain:*"]);
    warm(&mut conn, "tenantA");
    data_commands(&mut conn);
    run(&mut conn, &["SET", "plain:s", "3"]).expect("SET");
    let ok = run(&mut conn, &["AUTH", "b", PASSWORD]).expect("AUTH b");
    assert!(word(&ok, "OK"), "{ok:?}");
    for args in data {
        run(&mut conn, args).unwrap_or_else(|e| panic!("{args:?} as b: {e}"));
    }
    assert_get_refused(&mut conn, "tenantA", "b after AUTH and data commands");
    assert_get_allowed(&mut conn, "tenantB", "b after AUTH and data commands");
}

// 8. Scripts.

#[test]
fn scripts_of_two_users_in_turn_each_run_with_their_callers_permissions() {
    let (server, mut admin) = start();
    add_user(&mut admin, "a", &["~tenantA:*"]);
    add_user(&mut admin, "b", &["~tenantB:*"]);
    let mut ca = login(&server, "a");
    let mut cb = login(&server, "b");
    warm(&mut ca, "tenantA");
    warm(&mut cb, "tenantB");
    let script = "return redis.call('NSCACHE.GET', ARGV[1], ARGV[2])";
    let library = "#!lua name=acl_cache_lib\n\
        redis.register_function('nsget', function(keys, args) \
        return redis.call('NSCACHE.GET', args[1], args[2]) end)";
    let loaded = run(&mut admin, &["FUNCTION", "LOAD", library]).expect("FUNCTION LOAD");
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query(&mut admin)
        .expect("SCRIPT LOAD");
    assert!(bulk(&loaded, "acl_cache_lib"), "{loaded:?}");

    for round in 0..5 {
        for (conn, own, other) in [
            (&mut ca, "tenantA", "tenantB"),
            (&mut cb, "tenantB", "tenantA"),
        ] {
            let what = format!("round {round}, {own}'s user");
            for call in [
                ["EVAL", script, "0", own, KEY],
                ["EVALSHA", &sha, "0", own, KEY],
                ["FCALL", "nsget", "0", own, KEY],
            ] {
                let value = run(conn, &call).unwrap_or_else(|e| panic!("{what}: {call:?}: {e}"));
                assert!(bulk(&value, seeded_value(own)), "{what}: {value:?}");
            }
            for call in [
                ["EVAL", script, "0", other, KEY],
                ["EVALSHA", &sha, "0", other, KEY],
                ["FCALL", "nsget", "0", other, KEY],
            ] {
                let err = run(conn, &call).expect_err(&format!("{what}: {call:?} on {other}"));
                assert_eq!(err.code(), Some("NOPERM"), "{what}: {err}");
                assert!(
                    err.to_string().contains(&format!("namespace '{other}'")),
                    "{what}: {err}"
                );
            }
            // A direct command between scripts, from the cache.
            assert_get_allowed(conn, own, &what);
            assert_get_refused(conn, other, &what);
        }
    }
}

// 9. A data command's name given to another command by rename-command.

/// The helper-found hole: with `rename-command auth get`, the name `get` runs
/// AUTH. At load nscache asks `COMMAND INFO` what each data name runs and
/// lets only real data commands keep the remembered users, so the renamed
/// AUTH is seen like any AUTH.
#[test]
fn a_renamed_auth_under_a_data_commands_name_is_still_seen() {
    let server = RedisServer::start_with(&[
        "--rename-command",
        "get",
        "",
        "--rename-command",
        "auth",
        "get",
    ]);
    let mut conn = server.conn();
    add_user(&mut conn, "admin", &["~*"]);
    add_user(&mut conn, "a", &["~tenantA:*"]);
    add_user(&mut conn, "b", &["~tenantB:*"]);
    // Logging in goes through the renamed AUTH.
    let mut admin = server.conn();
    let ok = run(&mut admin, &["get", "admin", PASSWORD]).expect("renamed AUTH as admin");
    assert!(word(&ok, "OK"), "{ok:?}");
    for (ns, value) in SEEDED {
        let reply = run(&mut admin, &["NSCACHE.SET", ns, KEY, "600", value]).expect("seed");
        assert!(word(&reply, "OK"), "seed {ns}: {reply:?}");
    }
    assert!(
        server
            .log()
            .contains("not the plain data commands of that name here: get"),
        "the load check must name `get`:\n{}",
        server.log()
    );

    let mut client = server.conn();
    let ok = run(&mut client, &["get", "a", PASSWORD]).expect("renamed AUTH as a");
    assert!(word(&ok, "OK"), "{ok:?}");
    warm(&mut client, "tenantA");
    let ok = run(&mut client, &["get", "b", PASSWORD]).expect("renamed AUTH as b");
    assert!(word(&ok, "OK"), "{ok:?}");
    assert_get_refused(&mut client, "tenantA", "after the renamed AUTH as b");
    assert_get_allowed(&mut client, "tenantB", "after the renamed AUTH as b");
    // Only now: ACL WHOAMI would start a new epoch itself.
    let whoami = run(&mut client, &["ACL", "WHOAMI"]).expect("ACL WHOAMI");
    assert!(bulk(&whoami, "b"), "{whoami:?}");
}

// 10. Module calls on a pooled client that carries a connected client's id.

/// Builds tests/modules/pool_probe.c into `dir` with the C compiler, against
/// the redismodule.h of the redis-module crate the build fetched.
fn build_pool_probe(dir: &Path) -> std::path::PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = cargo_home.join("registry").join("src");
    let header_dir = std::fs::read_dir(&registry)
        .expect("the cargo registry")
        .filter_map(Result::ok)
        .map(|index| index.path().join("redis-module-2.0.8/src/include"))
        .find(|dir| dir.join("redismodule.h").exists())
        .expect("redismodule.h of redis-module 2.0.8 in the cargo registry");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("modules/pool_probe.c");
    let out = dir.join("pool_probe.so");
    let status = std::process::Command::new("cc")
        .args(["-O1", "-fPIC", "-shared", "-o"])
        .arg(&out)
        .arg("-I")
        .arg(&header_dir)
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc {source:?} failed");
    out
}

/// Waits for the probe's timer to have run, and returns its call's reply.
fn probe_result(admin: &mut Connection) -> String {
    let mut last = String::new();
    wait_until(Duration::from_secs(10), "the probe's timer", || {
        let reply = run(admin, &["PROBE.RESULT"]).expect("PROBE.RESULT");
        last = match reply {
            Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            other => format!("{other:?}"),
        };
        last != "pending"
    });
    last
}

/// Found by review: RedisModule_GetThreadSafeContext of a blocked client
/// copies the client's id into a pooled module client, which keeps it. A
/// later RedisModule_Call of another user then ran under alice's id: it was
/// served alice's remembered user (bob read tenantA), or remembered bob's
/// user for alice (alice lost tenantA and got tenantB), or, with no user at
/// all, crashed redis-server (GetCurrentUserName of a client without one).
#[test]
fn a_module_call_carrying_a_connected_clients_id_is_never_taken_for_that_client() {
    let dir = cachetx_tests::TempDir::new("pool-probe");
    let probe = build_pool_probe(dir.path());
    let probe = probe.to_str().expect("a UTF-8 path");
    let server = RedisServer::start_with(&["--loadmodule", probe]);
    let mut conn = server.conn();
    add_user(&mut conn, "admin", &["~*"]);
    add_user(&mut conn, "a", &["~tenantA:*"]);
    add_user(&mut conn, "b", &["~tenantB:*"]);
    drop(conn);
    let mut admin = login(&server, "admin");
    for (ns, value) in SEEDED {
        let reply = run(&mut admin, &["NSCACHE.SET", ns, KEY, "600", value]).expect("seed");
        assert!(word(&reply, "OK"), "seed {ns}: {reply:?}");
    }
    let mut alice = login(&server, "a");
    let mut bob = login(&server, "b");

    // Bob's module call under alice's id must not be remembered for alice.
    warm(&mut alice, "tenantA");
    let unblocked = run(&mut alice, &["PROBE.BLOCK"]).expect("PROBE.BLOCK");
    assert!(word(&unblocked, "unblocked"), "{unblocked:?}");
    let called = run(&mut bob, &["PROBE.CALL", "NSCACHE.GET", "tenantA", KEY]).expect("PROBE.CALL");
    assert!(
        matches!(&called, Value::BulkString(b) if b.starts_with(b"-NOPERM")),
        "bob's module call must be refused tenantA: {called:?}"
    );
    assert_get_allowed(&mut alice, "tenantA", "alice after bob's module call");
    assert_get_refused(&mut alice, "tenantB", "alice after bob's module call");

    // A timer's call as bob, under alice's id, must not get alice's user.
    for _ in 0..3 {
        run(&mut alice, &["PROBE.BLOCK"]).expect("PROBE.BLOCK");
    }
    run(
        &mut bob,
        &["PROBE.LATER", "300", "b", "NSCACHE.GET", "tenantA", KEY],
    )
    .expect("PROBE.LATER");
    warm(&mut alice, "tenantA");
    let later = probe_result(&mut admin);
    assert!(
        later.starts_with("-NOPERM"),
        "a timer's call as bob must be refused tenantA, got {later:?}"
    );

    // A call with no user at all, under alice's id: unrestricted, no crash.
    run(&mut alice, &["PROBE.BLOCK"]).expect("PROBE.BLOCK");
    run(
        &mut admin,
        &["PROBE.LATER", "0", "-", "NSCACHE.GET", "tenantA", KEY],
    )
    .expect("PROBE.LATER");
    let userless = probe_result(&mut admin);
    assert_eq!(
        userless, "$1\r\na\r\n",
        "a module call without a user reads freely"
    );
    assert_get_allowed(&mut alice, "tenantA", "alice at the end");
    assert_server_alive(&server, &mut admin);
}
