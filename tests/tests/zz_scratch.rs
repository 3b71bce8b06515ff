#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use runnel_e2e::{ProcessCluster, ProcessSpec};
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_fails() {
    let mut c = ProcessCluster::start(ProcessSpec { coordinators: 1, storage_nodes: 1, ingest: false, lease_ttl_secs: 3 }).await;
    // A process that cannot start: its port is taken.
    let addr = c.coordinators[0].address.clone();
    c.storage[0].address = addr;
    c.storage[0].kill_9();
    c.storage[0].restart().await;
}
