//! Edge instances find each other through the metastore: each keeps its
//! [`EdgeRecord`] under `edges/<node_id>` (see `runnel_cluster::keys`) alive
//! with a lease, and the cluster's [`MetadataWatcher`] follows the others, so
//! Metadata lists every live edge as a broker and a client that loses one
//! edge carries on through another.
//!
//! [`MetadataWatcher`]: runnel_cluster::MetadataWatcher

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_cluster::Keys;
pub use runnel_cluster::model::EdgeRecord;
use runnel_metastore::{MetaError, MetaStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// This edge's registration, kept alive in the background; the task stops on
/// drop.
#[derive(Debug)]
pub struct Registry {
    task: Option<JoinHandle<()>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Registry {
    /// Registers `me`. `stop` ends the registration (the lease is revoked so
    /// peers drop this edge at once).
    pub fn start(
        store: Arc<dyn MetaStore>,
        keys: &Keys,
        me: EdgeRecord,
        ttl: Duration,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let key = keys.edge(me.node_id);
        let task = tokio::spawn(keep_registered(store, key, me, ttl, stop));
        Registry { task: Some(task) }
    }

    /// Waits for the registration task to revoke its lease (after `stop`).
    pub async fn finish(mut self) {
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

async fn keep_registered(
    store: Arc<dyn MetaStore>,
    key: String,
    me: EdgeRecord,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let value = Bytes::from(serde_json::to_vec(&me).unwrap_or_default());
    let ttl = ttl.max(Duration::from_secs(2));
    loop {
        let lease = async {
            let lease = store.grant_lease(ttl).await?;
            store.put(&key, value.clone(), Some(lease)).await?;
            Ok::<_, MetaError>(lease)
        };
        let lease = tokio::select! {
            _ = crate::server::stopped(&mut stop) => return,
            l = lease => l,
        };
        let lease = match lease {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "edge registration failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = crate::server::stopped(&mut stop) => return,
                }
            }
        };
        tracing::info!(node_id = me.node_id, host = %me.host, port = me.port, "edge registered");
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = crate::server::stopped(&mut stop) => {
                    let _ = store.revoke_lease(lease).await;
                    return;
                }
                _ = tick.tick() => match store.keep_alive(lease).await {
                    Ok(()) => {}
                    Err(MetaError::LeaseNotFound(_)) => {
                        tracing::warn!("edge registration lease expired; registering again");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "edge lease keep-alive failed"),
                },
            }
        }
    }
}
