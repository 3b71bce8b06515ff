//! Runs an edge instance: watch the cluster, register among the edges,
//! accept Kafka connections until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runnel_cluster::{Keys, MetadataWatcher};
use runnel_metastore::MetaStore;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::EdgeConfig;
use crate::error::EdgeError;
use crate::registry::{EdgeRecord, Registry};
use crate::state::{Edge, split_host_port};

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How long connections get to finish their request in flight at shutdown.
const DRAIN: Duration = Duration::from_secs(5);

fn check(config: &EdgeConfig) -> Result<(), EdgeError> {
    let bad = |m: String| Err(EdgeError::Config(m));
    if config.node_id < 0 {
        return bad(format!("node_id must be >= 0, not {}", config.node_id));
    }
    if config.default_partitions < 1 {
        return bad(format!(
            "default_partitions must be >= 1, not {}",
            config.default_partitions
        ));
    }
    if config.max_request_bytes < 1024 || config.max_request_bytes > i32::MAX as usize {
        return bad(format!(
            "max_request_bytes must be between 1024 and {}, not {}",
            i32::MAX,
            config.max_request_bytes
        ));
    }
    if config.max_connections == 0 {
        return bad("max_connections must be >= 1".into());
    }
    Ok(())
}

/// Serves the Kafka protocol on `listener` until `shutdown` resolves, then
/// stops accepting, lets connections finish their request in flight, and
/// leaves the edge registry.
pub async fn serve(
    config: EdgeConfig,
    store: Arc<dyn MetaStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EdgeError> {
    check(&config)?;
    let local = listener.local_addr()?;
    let advertised = config
        .advertised_address
        .clone()
        .unwrap_or_else(|| runnel_rpc::advertised_address(local));
    let (host, port) = split_host_port(&advertised).ok_or_else(|| {
        EdgeError::Config(format!(
            "advertised_address {advertised:?} is not host:port"
        ))
    })?;
    let keys = Keys::new(&config.cluster);
    let watcher = MetadataWatcher::start(store.clone(), keys.clone()).await?;
    let me = EdgeRecord {
        node_id: config.node_id,
        host,
        port,
        started_at_ms: runnel_cluster::now_ms(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let registry = Registry::start(
        store,
        &keys,
        me.clone(),
        Duration::from_secs(config.lease_ttl_secs),
        stop_rx.clone(),
    );
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let read_ahead = crate::conn::ReadAhead::new(config.max_queued_request_bytes);
    let edge = Arc::new(Edge {
        config,
        me,
        watcher,
        registry,
        pool: runnel_rpc::ChannelPool::new(),
    });
    tracing::info!(
        node_id = edge.node_id(),
        listen = %local,
        advertised = %advertised,
        "edge serving the Kafka protocol"
    );

    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics::counter!("runnel_edge_connections_rejected_total").increment(1);
            tracing::warn!(%peer, "connection limit reached; closing the new connection");
            drop(stream);
            continue;
        };
        metrics::counter!("runnel_edge_connections_total").increment(1);
        let edge = edge.clone();
        let stop = stop_rx.clone();
        let read_ahead = read_ahead.clone();
        connections.spawn(async move {
            let gauge = metrics::gauge!("runnel_edge_connections");
            gauge.increment(1.0);
            crate::conn::serve(edge, read_ahead, stream, peer, stop).await;
            gauge.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(connections = connections.len(), "edge shutting down");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    match Arc::try_unwrap(edge) {
        Ok(edge) => edge.registry.finish().await,
        Err(_) => tracing::debug!("edge state still shared at shutdown"),
    }
    Ok(())
}
