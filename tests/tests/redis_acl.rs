//! Namespace-scoped access control with Redis ACLs (issue 14) against real
//! servers: ACL key patterns apply to stored names, so `~tenantA:*` opens
//! namespace `tenantA` and nothing else, `%R~tenantA:*` reads it, `~*` opens
//! everything; every denial is a NOPERM that writes nothing and is in ACL LOG;
//! scripts and transactions run as their caller; cluster routing is kept.

use std::time::Duration;

use cachetx_shared::{CacheInvalidation, Envelope, InvalidationScope};
use cachetx_tests::acl::{assert_noperm, bulk, login, run, word, PASSWORD};
use cachetx_tests::nscache::{config_set, digest, info_field, key_range, key_spec_flags};
use cachetx_tests::{RedisCluster, RedisServer};
use redis::{Connection, RedisError, Value};

/// Every nscache command a client may run: the service recipe's commands.
const ALL_COMMANDS: &[&str] = &[
    "+nscache.set",
    "+nscache.get",
    "+nscache.mget",
    "+nscache.fetch",
    "+nscache.del",
    "+nscache.ttl",
    "+nscache.invalidate",
    "+nscache.stats",
    "+nscache.topkeys",
    "+nscache.resetstats",
    "+nscache.keyname",
    "+nscache.forget",
];

/// The read-only commands: the dashboard recipe's commands.
const READ_COMMANDS: &[&str] = &[
    "+nscache.get",
    "+nscache.mget",
    "+nscache.fetch",
    "+nscache.ttl",
    "+nscache.stats",
    "+nscache.topkeys",
    "+nscache.keyname",
];

/// Creates (or resets) ACL user `name` with password [`PASSWORD`] and `rules`.
fn add_user(conn: &mut Connection, name: &str, rules: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(name)
        .arg("reset")
        .arg("on")
        .arg(format!(">{PASSWORD}"));
    for rule in rules {
        cmd.arg(*rule);
    }
    let () = cmd.query(conn).expect("ACL SETUSER");
}

/// One `ACL LOG` entry, as field/value pairs.
#[derive(Debug)]
struct LogEntry {
    reason: String,
    context: String,
    object: Vec<u8>,
    username: String,
}

fn acl_log(conn: &mut Connection) -> Vec<LogEntry> {
    let entries: Vec<Vec<Value>> = redis::cmd("ACL").arg("LOG").query(conn).expect("ACL LOG");
    entries
        .into_iter()
        .map(|fields| {
            let field = |name: &str| -> Vec<u8> {
                fields
                    .chunks(2)
                    .find(|p| matches!(&p[0], Value::BulkString(b) if b.as_slice() == name.as_bytes()))
                    .map(|p| match &p[1] {
                        Value::BulkString(b) => b.clone(),
                        Value::SimpleString(s) => s.clone().into_bytes(),
                        other => panic!("ACL LOG {name}: {other:?}"),
                    })
                    .unwrap_or_else(|| panic!("ACL LOG entry without {name}: {fields:?}"))
            };
            let text = |name: &str| String::from_utf8_lossy(&field(name)).into_owned();
            LogEntry {
                reason: text("reason"),
                context: text("context"),
                object: field("object"),
                username: text("username"),
            }
        })
        .collect()
}

fn acl_log_reset(conn: &mut Connection) {
    let () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query(conn)
        .expect("ACL LOG RESET");
}

/// Everything a call could change, seen by the default user: the keyspace,
/// every namespace's statistics, the namespace count and the leases.
fn snapshot(conn: &mut Connection) -> (String, String, Option<String>, Option<String>) {
    let stats: String = redis::cmd("NSCACHE.STATS")
        .arg("JSON")
        .query(conn)
        .expect("STATS JSON");
    (
        digest(conn),
        stats,
        info_field(conn, "nscache", "nscache_namespaces"),
        info_field(conn, "nscache", "nscache_leases_outstanding"),
    )
}

/// What a command needs on its namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Read,
    Write,
    /// KEYNAME: computes a name, reads nothing.
    Nothing,
}

/// A test user: ACL rules, and what it may do per namespace (read, write).
struct User {
    name: &'static str,
    keys: &'static [&'static str],
    grants: &'static [(&'static str, bool, bool)],
}

impl User {
    fn may(&self, ns: &str, need: Need) -> bool {
        let grant = self.grants.iter().find(|g| g.0 == ns);
        match need {
            Need::Nothing => true,
            Need::Read => grant.is_some_and(|g| g.1),
            Need::Write => grant.is_some_and(|g| g.2),
        }
    }

    fn may_write(&self, ns: &str) -> bool {
        self.may(ns, Need::Write)
    }
}

const USERS: [User; 5] = [
    User {
        name: "full",
        keys: &["~tenantA:*"],
        grants: &[("tenantA", true, true)],
    },
    User {
        name: "readonly",
        keys: &["%R~tenantA:*"],
        grants: &[("tenantA", true, false)],
    },
    User {
        name: "other",
        keys: &["~tenantB:*"],
        grants: &[("tenantB", true, true)],
    },
    User {
        name: "everything",
        keys: &["~*"],
        grants: &[
            ("tenantA", true, true),
            ("tenantB", true, true),
            ("tenantC", true, true),
        ],
    },
    User {
        name: "nokeys",
        keys: &["resetkeys"],
        grants: &[],
    },
];

/// One row of the table: a command on a namespace.
struct Case {
    /// Run by the default user just before the call (not part of what is compared).
    setup: &'static [&'static [&'static str]],
    args: &'static [&'static str],
    ns: &'static str,
    need: Need,
    /// The name a denial logs: the stored name, or `prefix:*`.
    object: &'static str,
    /// Whether an allowed call changes the snapshot (the positive control
    /// that the snapshot would see a refused call's write).
    changes: bool,
    /// Checks an allowed call's reply; the flag: the user may write `ns`.
    ok: fn(&Value, bool) -> bool,
}

fn is_token(v: &Value) -> bool {
    matches!(v, Value::BulkString(b) if b.len() == 16 && b.iter().all(u8::is_ascii_hexdigit))
}

/// A row on the namespace named by the command's first argument.
fn row(
    args: &'static [&'static str],
    need: Need,
    object: &'static str,
    changes: bool,
    ok: fn(&Value, bool) -> bool,
) -> Case {
    Case {
        setup: &[],
        args,
        ns: args[1],
        need,
        object,
        changes,
        ok,
    }
}

fn table() -> Vec<Case> {
    use Need::{Nothing, Read, Write};
    vec![
        row(
            &["NSCACHE.GET", "tenantA", "1"],
            Read,
            "tenantA:{1}",
            true,
            |v, _| bulk(v, "a"),
        ),
        row(
            &["NSCACHE.GET", "tenantA", "user:{7}:profile"],
            Read,
            "tenantA:user:{7}:profile",
            true,
            |v, _| bulk(v, "p"),
        ),
        row(
            &["NSCACHE.MGET", "tenantA", "1", "user:{7}:profile"],
            Read,
            "tenantA:{1}",
            true,
            |v, _| matches!(v, Value::Array(a) if a.len() == 2 && bulk(&a[0], "a") && bulk(&a[1], "p")),
        ),
        row(
            &["NSCACHE.TTL", "tenantA", "user:{7}:profile"],
            Read,
            "tenantA:user:{7}:profile",
            false,
            |v, _| matches!(v, Value::Int(n) if (1..=600).contains(n)),
        ),
        row(
            &["NSCACHE.FETCH", "tenantA", "1", "60000"],
            Read,
            "tenantA:{1}",
            true,
            |v, _| matches!(v, Value::Array(a) if a.len() == 2 && word(&a[0], "HIT") && bulk(&a[1], "a")),
        ),
        // Inside the refresh window (600 s left < 700 s): a writer gets
        // the refresh token, a reader the plain HIT (no lease).
        row(
            &[
                "NSCACHE.FETCH",
                "tenantA",
                "user:{7}:profile",
                "60000",
                "REFRESH",
                "700000",
            ],
            Read,
            "tenantA:user:{7}:profile",
            true,
            |v, writer| match v {
                Value::Array(a) if writer => {
                    a.len() == 3 && word(&a[0], "REFRESH") && bulk(&a[1], "p") && is_token(&a[2])
                }
                Value::Array(a) => a.len() == 2 && word(&a[0], "HIT") && bulk(&a[1], "p"),
                _ => false,
            },
        ),
        row(
            &["NSCACHE.STATS", "tenantA"],
            Read,
            "tenantA:*",
            false,
            |v, _| matches!(v, Value::Array(a) if a.len() == 32),
        ),
        row(
            &["NSCACHE.STATS", "tenantA", "JSON"],
            Read,
            "tenantA:*",
            false,
            |v, _| matches!(v, Value::BulkString(b) if b.starts_with(b"{")),
        ),
        row(
            &["NSCACHE.TOPKEYS", "tenantA"],
            Read,
            "tenantA:*",
            false,
            |v, _| matches!(v, Value::Array(a) if !a.is_empty()),
        ),
        row(
            &["NSCACHE.KEYNAME", "tenantA", "1"],
            Nothing,
            "",
            false,
            |v, _| bulk(v, "tenantA:{1}"),
        ),
        // A miss hands out the write-back lease: write permission.
        row(
            &["NSCACHE.FETCH", "tenantA", "cold", "60000"],
            Write,
            "tenantA:{cold}",
            true,
            |v, _| matches!(v, Value::Array(a) if a.len() == 2 && word(&a[0], "MISS") && is_token(&a[1])),
        ),
        row(
            &["NSCACHE.SET", "tenantA", "2", "600", "v"],
            Write,
            "tenantA:{2}",
            true,
            |v, _| word(v, "OK"),
        ),
        row(
            &["NSCACHE.SET", "tenantA", "user:{8}:x", "600", "v", "NX"],
            Write,
            "tenantA:user:{8}:x",
            true,
            |v, _| word(v, "OK"),
        ),
        row(
            &["NSCACHE.DEL", "tenantA", "1", "user:{7}:profile"],
            Write,
            "tenantA:{1}",
            true,
            |v, _| matches!(v, Value::Int(2)),
        ),
        row(
            &["NSCACHE.RESETSTATS", "tenantA"],
            Write,
            "tenantA:*",
            true,
            |v, _| word(v, "OK"),
        ),
        row(
            &["NSCACHE.INVALIDATE", "tenantA"],
            Write,
            "tenantA:*",
            true,
            |v, _| matches!(v, Value::Int(n) if *n >= 0),
        ),
        // FORGET needs an empty namespace: the default user empties it first.
        Case {
            setup: &[&[
                "NSCACHE.DEL",
                "tenantA",
                "1",
                "2",
                "user:{7}:profile",
                "user:{8}:x",
            ]],
            ..row(
                &["NSCACHE.FORGET", "tenantA"],
                Write,
                "tenantA:*",
                true,
                |v, _| word(v, "OK"),
            )
        },
        row(
            &["NSCACHE.GET", "tenantB", "1"],
            Read,
            "tenantB:{1}",
            true,
            |v, _| bulk(v, "b"),
        ),
        row(
            &["NSCACHE.TOPKEYS", "tenantB", "5"],
            Read,
            "tenantB:*",
            false,
            |v, _| matches!(v, Value::Array(a) if a.len() == 2),
        ),
        row(
            &["NSCACHE.SET", "tenantB", "1", "600", "b2", "XX"],
            Write,
            "tenantB:{1}",
            true,
            |v, _| word(v, "OK"),
        ),
        row(
            &["NSCACHE.INVALIDATE", "tenantB"],
            Write,
            "tenantB:*",
            true,
            |v, _| matches!(v, Value::Int(1)),
        ),
    ]
}

/// The entries every table run starts from.
fn seed(conn: &mut Connection) {
    for args in [
        ["NSCACHE.SET", "tenantA", "1", "600", "a"],
        ["NSCACHE.SET", "tenantA", "user:{7}:profile", "600", "p"],
        ["NSCACHE.SET", "tenantB", "1", "600", "b"],
    ] {
        run(conn, &args).expect("seed");
    }
}

#[test]
fn the_table_of_users_commands_and_namespaces() {
    let mut refused = 0;
    let mut allowed = 0;
    for user in &USERS {
        // A fresh server per user: allowed writes change what later rows see.
        let server = RedisServer::start();
        let mut admin = server.conn();
        seed(&mut admin);
        let mut rules: Vec<&str> = user.keys.to_vec();
        rules.extend_from_slice(ALL_COMMANDS);
        add_user(&mut admin, user.name, &rules);
        let mut conn = login(&server, user.name);
        for case in table() {
            let what = format!("{} as {}", case.args.join(" "), user.name);
            for setup in case.setup {
                run(&mut admin, setup).unwrap_or_else(|e| panic!("{what}: setup: {e}"));
            }
            acl_log_reset(&mut admin);
            let before = snapshot(&mut admin);
            let result = run(&mut conn, case.args);
            let after = snapshot(&mut admin);
            let log = acl_log(&mut admin);
            if user.may(case.ns, case.need) {
                allowed += 1;
                let reply = result.unwrap_or_else(|e| panic!("{what}: must be allowed: {e}"));
                assert!(
                    (case.ok)(&reply, user.may_write(case.ns)),
                    "{what}: {reply:?}"
                );
                assert!(log.is_empty(), "{what}: allowed, yet logged: {log:?}");
                // Positive control: the snapshot sees what the call changes.
                assert_eq!(before != after, case.changes, "{what}: changed state?");
            } else {
                refused += 1;
                assert_noperm(result, case.ns, &what);
                assert_eq!(before, after, "{what}: a refused call changed state");
                assert_eq!(log.len(), 1, "{what}: one ACL LOG entry: {log:?}");
                let entry = &log[0];
                assert_eq!(
                    (
                        entry.reason.as_str(),
                        entry.context.as_str(),
                        entry.username.as_str()
                    ),
                    ("key", "module", user.name),
                    "{what}: {entry:?}"
                );
                assert_eq!(
                    String::from_utf8_lossy(&entry.object),
                    case.object,
                    "{what}: {entry:?}"
                );
            }
        }
    }
    // Every user was refused something but `everything`, and allowed
    // something (KEYNAME at least): both halves of the table ran.
    assert!(
        refused > 40 && allowed > 40,
        "refused {refused}, allowed {allowed}"
    );
}

#[test]
fn the_issue_example_works_for_a_namespace_user() {
    let server = RedisServer::start();
    let mut admin = server.conn();
    run(&mut admin, &["NSCACHE.SET", "tenantA", "1", "60", "a"]).expect("SET");
    add_user(&mut admin, "ta", &["~tenantA:*", "+@all"]);
    let mut ta = login(&server, "ta");
    let value = run(&mut ta, &["NSCACHE.GET", "tenantA", "1"]).expect("its own namespace");
    assert!(bulk(&value, "a"), "{value:?}");
    // Plain Redis commands on the stored names obey the same pattern.
    let ttl = run(&mut ta, &["TTL", "tenantA:{1}"]).expect("TTL of its stored name");
    assert!(matches!(ttl, Value::Int(n) if n > 0), "{ttl:?}");
    let err = run(&mut ta, &["TTL", "tenantB:{1}"]).expect_err("Redis checks plain commands");
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
}

#[test]
fn stats_without_a_prefix_lists_only_the_namespaces_the_user_may_read() {
    let server = RedisServer::start();
    let mut admin = server.conn();
    seed(&mut admin);
    run(&mut admin, &["NSCACHE.SET", "tenantC", "1", "600", "c"]).expect("SET");
    for user in &USERS {
        let mut rules: Vec<&str> = user.keys.to_vec();
        rules.extend_from_slice(ALL_COMMANDS);
        add_user(&mut admin, user.name, &rules);
        let mut conn = login(&server, user.name);
        let reply = run(&mut conn, &["NSCACHE.STATS"]).expect("STATS");
        let Value::Array(flat) = reply else {
            panic!("{}: {reply:?}", user.name)
        };
        let mut listed: Vec<String> = flat
            .chunks(2)
            .map(|pair| match &pair[0] {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("{other:?}"),
            })
            .collect();
        listed.sort();
        let mut readable: Vec<&str> = ["tenantA", "tenantB", "tenantC"]
            .into_iter()
            .filter(|ns| user.may(ns, Need::Read))
            .collect();
        readable.sort();
        assert_eq!(listed, readable, "{}", user.name);
    }
}

#[test]
fn resetstats_without_a_prefix_is_all_or_nothing() {
    let server = RedisServer::start();
    let mut admin = server.conn();
    seed(&mut admin);
    run(&mut admin, &["NSCACHE.GET", "tenantA", "1"]).expect("a hit to reset");
    run(&mut admin, &["NSCACHE.GET", "tenantB", "1"]).expect("a hit to reset");
    add_user(&mut admin, "full", &["~tenantA:*", "+@all"]);
    add_user(&mut admin, "everything", &["~*", "+@all"]);
    let before = snapshot(&mut admin);
    // `full` may reset tenantA but not tenantB: nothing is reset.
    let mut full = login(&server, "full");
    assert_noperm(
        run(&mut full, &["NSCACHE.RESETSTATS"]),
        "tenantB",
        "RESETSTATS as full",
    );
    assert_eq!(
        before,
        snapshot(&mut admin),
        "a refused RESETSTATS reset nothing"
    );
    // Positive control: `~*` resets both.
    let mut everything = login(&server, "everything");
    let reply = run(&mut everything, &["NSCACHE.RESETSTATS"]).expect("RESETSTATS");
    assert!(word(&reply, "OK"), "{reply:?}");
    for ns in ["tenantA", "tenantB"] {
        let json: String = redis::cmd("NSCACHE.STATS")
            .arg(ns)
            .arg("JSON")
            .query(&mut admin)
            .expect("STATS");
        assert!(json.contains("\"hits\":0"), "{ns}: {json}");
    }
}

#[test]
fn scripts_and_transactions_run_as_their_caller() {
    let server = RedisServer::start();
    let mut admin = server.conn();
    seed(&mut admin);
    add_user(&mut admin, "full", &["~tenantA:*", "+@all"]);
    let mut full = login(&server, "full");
    // A script cannot reach another namespace...
    let script = "return redis.call('NSCACHE.GET', ARGV[1], '1')";
    let err = run(&mut full, &["EVAL", script, "0", "tenantB"]).expect_err("other namespace");
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    assert!(err.to_string().contains("namespace 'tenantB'"), "{err}");
    // ...and reads its own (positive control).
    let value = run(&mut full, &["EVAL", script, "0", "tenantA"]).expect("own namespace");
    assert!(bulk(&value, "a"), "{value:?}");
    let log = acl_log(&mut admin);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].object, b"tenantB:{1}");
    // In MULTI, the refused command fails alone and writes nothing; the
    // allowed one runs (positive control).
    let before = digest(&mut admin);
    assert!(word(&run(&mut full, &["MULTI"]).expect("MULTI"), "OK"));
    for args in [
        &["NSCACHE.SET", "tenantB", "x", "60", "v"][..],
        &["NSCACHE.GET", "tenantA", "1"][..],
    ] {
        let queued = run(&mut full, args).expect("queued");
        assert!(word(&queued, "QUEUED"), "{queued:?}");
    }
    let hits = |admin: &mut Connection| -> String {
        let json: String = redis::cmd("NSCACHE.STATS")
            .arg("tenantA")
            .arg("JSON")
            .query(admin)
            .expect("STATS");
        json.split(',')
            .find(|f| f.contains("\"hits\""))
            .unwrap_or_default()
            .to_string()
    };
    let hits_before = hits(&mut admin);
    // redis-rs reports the error inside EXEC's reply as the call's error.
    let err = run(&mut full, &["EXEC"]).expect_err("an error inside EXEC");
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    assert!(err.to_string().contains("namespace 'tenantB'"), "{err}");
    assert_ne!(hits_before, hits(&mut admin), "the allowed GET ran in EXEC");
    assert_eq!(before, digest(&mut admin), "nothing written to tenantB");
    let exists = run(&mut admin, &["EXISTS", "tenantB:{x}"]).expect("EXISTS");
    assert_eq!(exists, Value::Int(0));
}

#[test]
fn the_readme_recipes_work() {
    let server = RedisServer::start();
    let mut admin = server.conn();
    seed(&mut admin);
    // One user per service, its namespaces only, every nscache command.
    let mut service = vec![
        "resetkeys",
        "~tenantA:*",
        "resetchannels",
        "&nscache:events",
        "-@all",
    ];
    service.extend_from_slice(ALL_COMMANDS);
    add_user(&mut admin, "svc", &service);
    // A read-only dashboard over two namespaces, read commands only.
    let mut dashboard = vec![
        "resetkeys",
        "%R~tenantA:*",
        "%R~tenantB:*",
        "resetchannels",
        "-@all",
    ];
    dashboard.extend_from_slice(READ_COMMANDS);
    add_user(&mut admin, "dash", &dashboard);

    let mut svc = login(&server, "svc");
    run(&mut svc, &["NSCACHE.SET", "tenantA", "n", "60", "v"]).expect("service writes");
    run(&mut svc, &["NSCACHE.INVALIDATE", "tenantA"]).expect("service invalidates");
    assert_noperm(
        run(&mut svc, &["NSCACHE.GET", "tenantB", "1"]),
        "tenantB",
        "svc reads B",
    );

    let mut dash = login(&server, "dash");
    for ns in ["tenantA", "tenantB"] {
        run(&mut dash, &["NSCACHE.STATS", ns, "JSON"]).expect("dashboard stats");
        run(&mut dash, &["NSCACHE.TOPKEYS", ns]).expect("dashboard topkeys");
        run(&mut dash, &["NSCACHE.TTL", ns, "1"]).expect("dashboard ttl");
    }
    let value = run(&mut dash, &["NSCACHE.GET", "tenantB", "1"]).expect("dashboard reads");
    assert!(bulk(&value, "b"), "{value:?}");
    // Writes are not among its commands: Redis refuses them before the module.
    let err = run(&mut dash, &["NSCACHE.SET", "tenantB", "1", "60", "x"]).expect_err("write");
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    let err = run(&mut dash, &["NSCACHE.INVALIDATE", "tenantB"]).expect_err("invalidate");
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    // A FETCH miss would hand out a lease: refused to a reader.
    assert_noperm(
        run(&mut dash, &["NSCACHE.FETCH", "tenantB", "cold", "1000"]),
        "tenantB",
        "dashboard FETCH miss",
    );
    let leases = info_field(&mut admin, "nscache", "nscache_leases_outstanding");
    assert_eq!(leases.as_deref(), Some("0"));
}

#[test]
fn invalidation_envelopes_need_only_the_channel_permission_to_subscribe() {
    let server = RedisServer::start();
    let mut admin = server.conn();
    config_set(&mut admin, "nscache.publish-invalidations", "yes");
    seed(&mut admin);
    // The writer has no channel permission at all: the module publishes anyway.
    add_user(
        &mut admin,
        "writer",
        &["~tenantA:*", "resetchannels", "+@all"],
    );
    add_user(
        &mut admin,
        "listener",
        &[
            "resetkeys",
            "resetchannels",
            "&nscache:events",
            "+subscribe",
        ],
    );
    add_user(
        &mut admin,
        "deaf",
        &["resetkeys", "resetchannels", "+subscribe"],
    );

    let mut deaf = login(&server, "deaf");
    let err = run(&mut deaf, &["SUBSCRIBE", "nscache:events"]).expect_err("no channel permission");
    assert_eq!(err.code(), Some("NOPERM"), "{err}");

    let mut listener = login(&server, "listener");
    let mut pubsub = listener.as_pubsub();
    pubsub
        .subscribe("nscache:events")
        .expect("SUBSCRIBE with &nscache:events");
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut writer = login(&server, "writer");
    run(&mut writer, &["NSCACHE.INVALIDATE", "tenantA"]).expect("INVALIDATE");
    let msg = pubsub.get_message().expect("the envelope");
    let text: String = msg.get_payload().expect("payload");
    let envelope = Envelope::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let invalidation = CacheInvalidation::from_payload(&envelope.payload).expect("payload");
    assert_eq!(invalidation.prefix, "tenantA");
    assert_eq!(invalidation.scope, InvalidationScope::Namespace);
}

#[test]
fn keyed_commands_are_routed_on_key_but_not_acl_checked_by_redis() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    for (command, range) in [
        ("nscache.set", (2, 2, 1)),
        ("nscache.get", (2, 2, 1)),
        ("nscache.fetch", (2, 2, 1)),
        ("nscache.ttl", (2, 2, 1)),
        ("nscache.mget", (2, -1, 1)),
        ("nscache.del", (2, -1, 1)),
    ] {
        // What cluster clients route on, as before issue 14.
        assert_eq!(key_range(&mut conn, command), range, "{command}");
        let flags = key_spec_flags(&mut conn, command);
        assert!(flags.iter().any(|f| f == "not_key"), "{command}: {flags:?}");
        // Redis 7.0 leaves NOT_KEY arguments out of COMMAND GETKEYS, as out
        // of its ACL check: the price of checking stored names instead.
        let err = redis::cmd("COMMAND")
            .arg("GETKEYS")
            .arg(command)
            .arg("p")
            .arg("k")
            .arg("60")
            .arg("v")
            .query::<Value>(&mut conn)
            .expect_err("no key arguments");
        assert!(
            err.to_string().contains("no key arguments"),
            "{command}: {err}"
        );
    }
    // The internal command keeps its real key (the stored name), checked by Redis.
    assert_eq!(key_range(&mut conn, "nscache.restoreentry"), (1, 1, 1));
}

#[test]
fn a_three_node_cluster_routes_every_keyed_command_for_a_namespace_user() {
    let cluster = RedisCluster::start(3);
    for node in &cluster.nodes {
        // ACL users are per node; the cluster client also needs CLUSTER SLOTS.
        let mut rules = vec![
            "~tenantA:*",
            "-@all",
            "+cluster|slots",
            "+cluster|shards",
            "+ping",
        ];
        rules.extend_from_slice(ALL_COMMANDS);
        add_user(&mut node.conn(), "full", &rules);
    }
    let client = redis::cluster::ClusterClientBuilder::new(
        cluster.nodes.iter().map(|n| n.url()).collect::<Vec<_>>(),
    )
    .username("full")
    .password(PASSWORD)
    .build()
    .expect("cluster client");
    let mut conn = client.get_connection().expect("cluster connection");
    let run_cluster = |conn: &mut redis::cluster::ClusterConnection, args: &[String]| {
        let mut cmd = redis::cmd(&args[0]);
        for arg in &args[1..] {
            cmd.arg(arg);
        }
        cmd.query::<Value>(conn)
    };
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_string()).collect::<Vec<String>>();
    for i in 0..60 {
        let key = if i % 3 == 0 {
            format!("user:{{{i}}}:profile")
        } else {
            format!("k{i}")
        };
        let k = key.as_str();
        let value = format!("v{i}");
        let ok = |what: &str, r: Result<Value, RedisError>| {
            r.unwrap_or_else(|e| panic!("{what} {k} via the cluster: {e}"))
        };
        let reply = ok(
            "FETCH",
            run_cluster(&mut conn, &s(&["NSCACHE.FETCH", "tenantA", k, "60000"])),
        );
        assert!(
            matches!(&reply, Value::Array(a) if word(&a[0], "MISS")),
            "{reply:?}"
        );
        let reply = ok(
            "SET",
            run_cluster(&mut conn, &s(&["NSCACHE.SET", "tenantA", k, "600", &value])),
        );
        assert!(word(&reply, "OK"), "{reply:?}");
        let reply = ok(
            "GET",
            run_cluster(&mut conn, &s(&["NSCACHE.GET", "tenantA", k])),
        );
        assert!(bulk(&reply, &value), "{reply:?}");
        let reply = ok(
            "MGET",
            run_cluster(&mut conn, &s(&["NSCACHE.MGET", "tenantA", k])),
        );
        assert!(
            matches!(&reply, Value::Array(a) if bulk(&a[0], &value)),
            "{reply:?}"
        );
        let reply = ok(
            "TTL",
            run_cluster(&mut conn, &s(&["NSCACHE.TTL", "tenantA", k])),
        );
        assert!(matches!(reply, Value::Int(n) if n > 0), "{reply:?}");
        // The entry is on the owner of the key's slot.
        let owner = cluster.node_for_key(k);
        let stored = if i % 3 == 0 {
            format!("tenantA:{k}")
        } else {
            format!("tenantA:{{{k}}}")
        };
        let exists = run(&mut owner.conn(), &["EXISTS", &stored]).expect("EXISTS");
        assert_eq!(exists, Value::Int(1), "{stored}");
        let reply = ok(
            "DEL",
            run_cluster(&mut conn, &s(&["NSCACHE.DEL", "tenantA", k])),
        );
        assert_eq!(reply, Value::Int(1));
        // Another namespace is refused on the owner, after routing.
        let err = run_cluster(&mut conn, &s(&["NSCACHE.GET", "tenantB", k])).expect_err("tenantB");
        assert_eq!(err.code(), Some("NOPERM"), "{k}: {err}");
        let log = acl_log(&mut owner.conn());
        assert!(
            log.iter()
                .any(|e| e.object == format!("tenantB:{}", &stored["tenantA:".len()..]).as_bytes()),
            "{k}: {log:?}"
        );
    }
}
