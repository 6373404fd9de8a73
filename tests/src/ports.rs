//! Free TCP ports on the loopback interface.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has never
/// handed out before.
///
/// The port is found by binding `127.0.0.1:0` and dropping the listener, so another
/// process can still take it before the server binds it: servers started by this crate
/// retry with a new port when that happens.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("local address of a bound listener")
            .port();
        drop(listener);
        let fresh = handed_out()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(port);
        if fresh {
            return port;
        }
    }
    panic!("free_port: the kernel kept returning ports this process has already handed out")
}
