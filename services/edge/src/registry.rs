//! Edge instances find each other through the metastore: each keeps a record
//! under `/runnel/<cluster>/edges/<node_id>` alive with a lease, and follows
//! the others, so Metadata lists every live edge as a broker and a client
//! that loses one edge carries on through another.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use runnel_metastore::{MetaError, MetaStore, WatchEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One live edge as clients should reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    #[serde(default)]
    pub started_at_ms: i64,
}

/// The live edges, kept current in the background; tasks stop on drop.
#[derive(Debug)]
pub struct Registry {
    rx: watch::Receiver<BTreeMap<i32, EdgeRecord>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn prefix(cluster_root: &str) -> String {
    format!("{cluster_root}edges/")
}

impl Registry {
    /// Registers `me` and starts following the other edges. `stop` ends the
    /// registration (the lease is revoked so peers drop this edge at once).
    pub fn start(
        store: Arc<dyn MetaStore>,
        cluster_root: &str,
        me: EdgeRecord,
        ttl: Duration,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let prefix = prefix(cluster_root);
        let (tx, rx) = watch::channel(BTreeMap::new());
        let follow = tokio::spawn(follow(store.clone(), prefix.clone(), tx));
        let register = tokio::spawn(keep_registered(store, prefix, me, ttl, stop));
        Registry {
            rx,
            tasks: vec![follow, register],
        }
    }

    /// The live edges as last seen.
    pub fn live(&self) -> BTreeMap<i32, EdgeRecord> {
        self.rx.borrow().clone()
    }

    /// Waits for the registration task to revoke its lease (after `stop`).
    pub async fn finish(mut self) {
        if let Some(register) = self.tasks.pop() {
            let _ = tokio::time::timeout(Duration::from_secs(5), register).await;
        }
    }
}

async fn keep_registered(
    store: Arc<dyn MetaStore>,
    prefix: String,
    me: EdgeRecord,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let key = format!("{prefix}{}", me.node_id);
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

fn node_id_of(prefix: &str, key: &str) -> Option<i32> {
    key.strip_prefix(prefix)?.parse().ok()
}

async fn follow(
    store: Arc<dyn MetaStore>,
    prefix: String,
    tx: watch::Sender<BTreeMap<i32, EdgeRecord>>,
) {
    loop {
        let (kvs, revision) = match store.range(&prefix).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "listing edges failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut edges: BTreeMap<i32, EdgeRecord> = kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<EdgeRecord>(&kv.value).ok())
            .map(|r| (r.node_id, r))
            .collect();
        tx.send_replace(edges.clone());
        match store.watch(&prefix, revision).await {
            Ok(mut stream) => {
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(WatchEvent::Put(kv)) => {
                            if let Ok(r) = serde_json::from_slice::<EdgeRecord>(&kv.value) {
                                edges.insert(r.node_id, r);
                            }
                        }
                        Ok(WatchEvent::Delete { key, .. }) => {
                            if let Some(id) = node_id_of(&prefix, &key) {
                                edges.remove(&id);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "edge watch failed; reloading");
                            break;
                        }
                    }
                    tx.send_replace(edges.clone());
                }
            }
            Err(e) => tracing::warn!(error = %e, "edge watch could not start; retrying"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
