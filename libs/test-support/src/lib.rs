//! Helpers shared by runnel's tests (not part of any shipped binary).
//!
//! Tests here run against the real things: [`EtcdServer`] starts a real `etcd`
//! binary as a child process on free loopback ports and kills it on drop;
//! [`ChildProcess`] runs any server binary (e.g. a runnel role) the same way,
//! with its log in a file, readiness through gRPC health, `kill -9` and
//! restart. A helper whose binary is missing panics with a message saying
//! what to install; it never lets a test pass silently.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

mod etcd;
pub mod process;

pub use etcd::EtcdServer;
pub use process::ChildProcess;

/// A TCP port on 127.0.0.1 that was free a moment ago. The same process is
/// never handed the same port twice, so helpers starting several servers at
/// once do not collide with each other (another process may still take it;
/// helpers retry on a failed start).
#[allow(clippy::expect_used, clippy::panic)]
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found after 100 attempts");
}
