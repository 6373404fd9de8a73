//! Helpers shared by the ACL tests of nscache (`redis_acl`, `redis_acl_cache`):
//! logging in as an ACL user, running a command, reading replies, and the
//! module's NOPERM error.

use redis::{Connection, RedisError, Value};

use crate::RedisServer;

/// The password the ACL tests give their users.
pub const PASSWORD: &str = "pw";

/// A RESP2 connection to `server` authenticated as `user` with [`PASSWORD`].
pub fn login(server: &RedisServer, user: &str) -> Connection {
    let url = format!("redis://{user}:{PASSWORD}@127.0.0.1:{}/", server.port());
    redis::Client::open(url)
        .expect("client URL")
        .get_connection()
        .unwrap_or_else(|e| panic!("log in as {user}: {e}"))
}

/// A RESP3 connection (`HELLO 3 AUTH` on connect) authenticated as `user`.
pub fn login_resp3(server: &RedisServer, user: &str) -> Connection {
    let url = format!(
        "redis://{user}:{PASSWORD}@127.0.0.1:{}/?protocol=resp3",
        server.port()
    );
    redis::Client::open(url)
        .expect("client URL")
        .get_connection()
        .unwrap_or_else(|e| panic!("log in as {user} with RESP3: {e}"))
}

/// Runs the command `args` (name first) on `conn`.
pub fn run(conn: &mut Connection, args: &[&str]) -> Result<Value, RedisError> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(conn)
}

/// The message of the module's NOPERM for namespace `prefix`.
pub fn noperm_text(prefix: &str) -> String {
    format!(
        "no permissions to access one of the keys used as arguments (nscache namespace '{prefix}')"
    )
}

/// Asserts `result` is the module's NOPERM naming namespace `prefix`.
pub fn assert_noperm(result: Result<Value, RedisError>, prefix: &str, what: &str) {
    let err = result.expect_err(&format!("{what}: must be refused"));
    assert_eq!(err.code(), Some("NOPERM"), "{what}: {err}");
    assert!(
        err.to_string().contains(&noperm_text(prefix)),
        "{what}: {err}"
    );
}

/// Whether `v` is the bulk string `want`.
pub fn bulk(v: &Value, want: &str) -> bool {
    matches!(v, Value::BulkString(b) if b.as_slice() == want.as_bytes())
}

/// Whether `v` is `want` as a simple string (`OK` included) or a bulk string.
pub fn word(v: &Value, want: &str) -> bool {
    match v {
        Value::SimpleString(s) => s == want,
        Value::Okay => want == "OK",
        other => bulk(other, want),
    }
}
