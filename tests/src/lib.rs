//! The harness of runnel's end-to-end tests (the tests are in `tests/tests/`).
//!
//! Everything here runs against real components:
//! - [`InProcessCluster`]: a real etcd (child process) and the coordinator,
//!   storage node(s) and ingest as in-process gRPC servers on port 0, each
//!   role with its own metastore connection, exactly as `serve` is called by
//!   the binary;
//! - [`ProcessCluster`]: a real etcd and every role as its own `runnel`
//!   process (the binary built from this workspace, see [`runnel_binary`]),
//!   with logs in files, `kill -9` and restart;
//! - checks shared by the tests: reading a whole topic back, scanning a
//!   partition's raw bytes batch by batch, waiting for a condition with a
//!   bound.
//!
//! Waits are bounded polls of user-visible state; no test asserts how long
//! something took.
//!
//! Running them: `cargo test -p runnel-e2e`. They need `etcd` on PATH and
//! kafka-python (the partitioner oracle); `tests/setup.sh` installs both and
//! a test panics with that advice when one is missing. The process tests
//! find or build the `runnel` binary themselves ([`runnel_binary`]; set
//! `RUNNEL_BIN` to pick one). A failing process test prints the tail of every
//! role's log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod acked;
mod checks;
mod inprocess;
mod processes;

pub use acked::*;
pub use checks::*;
pub use inprocess::{InProcessCluster, StorageNodeInfo};
pub use processes::{ProcessCluster, ProcessSpec, Role, RoleKind, runnel_binary};

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use runnel_test_support::EtcdServer;

/// A generous bound for anything that should happen "soon" on a busy,
/// shared 2-core machine.
pub const SOON: Duration = Duration::from_secs(30);

/// Logs of the in-process roles go to the test's captured output; set
/// `RUST_LOG` (e.g. `info`) to see more than warnings.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A cluster name (metastore prefix) no other test uses.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts a real etcd without blocking the async runtime.
pub async fn start_etcd() -> EtcdServer {
    tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .expect("starting etcd panicked")
}

/// Polls `check` until it returns `Ok`, at most `timeout`; panics with the
/// last error otherwise.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) => {
                if tokio::time::Instant::now() >= deadline {
                    panic!("{what}: still not the case after {timeout:?}: {e}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
