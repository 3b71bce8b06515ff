//! A live, in-memory copy of the cluster metadata.
//!
//! [`MetadataWatcher`] ranges over the cluster's prefix once, then follows a
//! watch from that revision, so no change is missed between the two. Readers
//! get a cheap `Arc` snapshot, or subscribe to be woken on every change. If the
//! watch breaks (metastore restart, compaction) it ranges again.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use runnel_metastore::{KeyValue, MetaError, MetaStore, WatchEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::keys::{KeyKind, Keys};
use crate::model::{ClusterMetadata, TopicState};
use crate::topic_config::TopicConfig;

/// Keeps a [`ClusterMetadata`] current; the background task stops on drop.
#[derive(Debug)]
pub struct MetadataWatcher {
    rx: watch::Receiver<Arc<ClusterMetadata>>,
    task: JoinHandle<()>,
}

impl Drop for MetadataWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetadataWatcher {
    /// Loads the current metadata and starts following changes. Fails only if
    /// the first load fails.
    pub async fn start(store: Arc<dyn MetaStore>, keys: Keys) -> Result<Self, MetaError> {
        let (initial, revision) = load(&*store, &keys).await?;
        let (tx, rx) = watch::channel(Arc::new(initial));
        let task = tokio::spawn(follow(store, keys, tx, revision));
        Ok(MetadataWatcher { rx, task })
    }

    /// The latest metadata.
    pub fn current(&self) -> Arc<ClusterMetadata> {
        self.rx.borrow().clone()
    }

    /// A receiver that wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterMetadata>> {
        self.rx.clone()
    }

    /// Waits until `pred` holds, up to `timeout`; returns the metadata that
    /// satisfied it.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&ClusterMetadata) -> bool,
    ) -> Option<Arc<ClusterMetadata>> {
        let mut rx = self.rx.clone();
        let wait = async {
            loop {
                let current = rx.borrow_and_update().clone();
                if pred(&current) {
                    return Some(current);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }
}

async fn load(store: &dyn MetaStore, keys: &Keys) -> Result<(ClusterMetadata, i64), MetaError> {
    let (kvs, revision) = store.range(keys.root()).await?;
    let mut md = ClusterMetadata {
        revision,
        ..Default::default()
    };
    for kv in kvs {
        apply(&mut md, keys, &WatchEvent::Put(kv));
    }
    md.revision = revision;
    Ok((md, revision))
}

async fn follow(
    store: Arc<dyn MetaStore>,
    keys: Keys,
    tx: watch::Sender<Arc<ClusterMetadata>>,
    mut revision: i64,
) {
    loop {
        match store.watch(keys.root(), revision).await {
            Ok(mut stream) => {
                while let Some(first) = stream.next().await {
                    let mut md = (**tx.borrow()).clone();
                    let mut result = first;
                    // Apply everything already queued before publishing once,
                    // so creating a big topic is not one clone per partition.
                    loop {
                        match result {
                            Ok(event) => {
                                revision = revision.max(event.revision());
                                apply(&mut md, &keys, &event);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "metadata watch failed; reloading");
                                break;
                            }
                        }
                        match stream.next().now_or_never() {
                            Some(Some(next)) => result = next,
                            _ => break,
                        }
                    }
                    md.revision = revision;
                    tx.send_replace(Arc::new(md));
                }
            }
            Err(e) => tracing::warn!(error = %e, "metadata watch could not start; retrying"),
        }
        // The stream ended or failed: take a fresh snapshot and continue.
        loop {
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            match load(&*store, &keys).await {
                Ok((md, rev)) => {
                    revision = rev;
                    tx.send_replace(Arc::new(md));
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "metadata reload failed; retrying"),
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %kv.key, error = %e, "ignoring malformed metadata record");
            None
        }
    }
}

/// Applies one change to the metadata.
pub fn apply(md: &mut ClusterMetadata, keys: &Keys, event: &WatchEvent) {
    let Some(kind) = keys.parse(event.key()) else {
        return;
    };
    match event {
        WatchEvent::Put(kv) => match kind {
            KeyKind::ClusterId => md.cluster_id = Some(String::from_utf8_lossy(&kv.value).into()),
            KeyKind::Controller => md.controller = decode(kv),
            KeyKind::Node(id) => {
                if let Some(node) = decode(kv) {
                    md.nodes.insert(id, node);
                }
            }
            KeyKind::Topic(name) => {
                if let Some(record) = decode::<crate::TopicRecord>(kv) {
                    let config = TopicConfig::resolve(&record.configs);
                    let mut partitions = md.orphan_partitions.remove(name).unwrap_or_default();
                    if let Some(old) = md.topics.remove(name)
                        && old.record.topic_id == record.topic_id
                    {
                        partitions.extend(old.partitions);
                    }
                    md.topics.insert(
                        name.to_string(),
                        TopicState {
                            record,
                            config,
                            partitions,
                        },
                    );
                }
            }
            KeyKind::Partition(topic, p) => {
                if let Some(record) = decode(kv) {
                    match md.topics.get_mut(topic) {
                        Some(t) => {
                            t.partitions.insert(p, record);
                        }
                        None => {
                            md.orphan_partitions
                                .entry(topic.to_string())
                                .or_default()
                                .insert(p, record);
                        }
                    }
                }
            }
            KeyKind::Edge(id) => {
                if let Some(edge) = decode::<crate::model::EdgeRecord>(kv) {
                    md.edges.insert(id, edge);
                }
            }
            KeyKind::GroupsNode(id) => {
                if let Some(node) = decode(kv) {
                    md.groups_nodes.insert(id, node);
                }
            }
            KeyKind::GroupShard(shard) => {
                if let Some(owner) = decode(kv) {
                    md.group_shards.insert(shard, owner);
                }
            }
        },
        WatchEvent::Delete { .. } => match kind {
            KeyKind::ClusterId => md.cluster_id = None,
            KeyKind::Controller => md.controller = None,
            KeyKind::Node(id) => {
                md.nodes.remove(&id);
            }
            KeyKind::Topic(name) => {
                if let Some(old) = md.topics.remove(name)
                    && !old.partitions.is_empty()
                {
                    md.orphan_partitions
                        .insert(name.to_string(), old.partitions);
                }
            }
            KeyKind::Partition(topic, p) => {
                if let Some(t) = md.topics.get_mut(topic) {
                    t.partitions.remove(&p);
                }
                if let Some(o) = md.orphan_partitions.get_mut(topic) {
                    o.remove(&p);
                    if o.is_empty() {
                        md.orphan_partitions.remove(topic);
                    }
                }
            }
            KeyKind::Edge(id) => {
                md.edges.remove(&id);
            }
            KeyKind::GroupsNode(id) => {
                md.groups_nodes.remove(&id);
            }
            KeyKind::GroupShard(shard) => {
                md.group_shards.remove(&shard);
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::EdgeRecord;

    #[test]
    fn edges_come_and_go() {
        let keys = Keys::new("c");
        let mut md = ClusterMetadata::default();
        let edge = EdgeRecord {
            node_id: 3,
            host: "h".into(),
            port: 9092,
            started_at_ms: 1,
        };
        let put = WatchEvent::Put(KeyValue {
            key: keys.edge(3),
            value: serde_json::to_vec(&edge).unwrap().into(),
            create_revision: 1,
            mod_revision: 1,
            lease: Some(1),
        });
        apply(&mut md, &keys, &put);
        assert_eq!(md.edges.get(&3), Some(&edge));
        let delete = WatchEvent::Delete {
            key: keys.edge(3),
            mod_revision: 2,
        };
        apply(&mut md, &keys, &delete);
        assert!(md.edges.is_empty());
    }
}
