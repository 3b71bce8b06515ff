//! An in-process cluster (coordinator, storage node, ingest) on an in-memory
//! metastore, with one or more edges in front, all on loopback ports.
//! Shared by the edge's integration tests (`runnel dev` is the way to run a
//! whole cluster with an edge for real clients).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use runnel_cluster::{Keys, MetadataWatcher};
use runnel_metastore::{EmbeddedStore, MetaStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    /// Port of the first edge's Kafka listener (0: any free port).
    pub kafka_port: u16,
    pub coordinator_port: u16,
    pub storage_port: u16,
    pub ingest_port: u16,
    /// Storage data directory; a temporary one when unset.
    pub data_dir: Option<PathBuf>,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    /// Template for every edge's config (node id and addresses are set per
    /// edge).
    pub edge: runnel_edge::EdgeConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: "127.0.0.1".into(),
            kafka_port: 0,
            coordinator_port: 0,
            storage_port: 0,
            ingest_port: 0,
            data_dir: None,
            auto_create_topics: false,
            default_partitions: 1,
            edge: runnel_edge::EdgeConfig::default(),
        }
    }
}

type Task = JoinHandle<anyhow::Result<()>>;

/// A running edge with its own shutdown switch.
pub struct EdgeHandle {
    pub address: String,
    pub node_id: i32,
    stop: watch::Sender<bool>,
    task: Task,
}

impl EdgeHandle {
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}

pub struct Cluster {
    pub store: Arc<dyn MetaStore>,
    pub coordinator: String,
    pub storage: String,
    pub ingest: String,
    pub edges: Vec<EdgeHandle>,
    pub options: Options,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, Task)>,
    _tmp: Option<tempfile::TempDir>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, String)> {
    let l = TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    let a = runnel_rpc::advertised_address(l.local_addr()?);
    Ok((l, a))
}

impl Cluster {
    pub async fn start(options: Options) -> anyhow::Result<Cluster> {
        let store: Arc<dyn MetaStore> = Arc::new(EmbeddedStore::in_memory());
        let (tmp, data_dir) = match &options.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let (coordinator_l, coordinator) = bind(&options.host, options.coordinator_port).await?;
        let (storage_l, storage) = bind(&options.host, options.storage_port).await?;
        let (ingest_l, ingest) = bind(&options.host, options.ingest_port).await?;
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks: Vec<(&'static str, Task)> = Vec::new();

        let c = runnel_coordinator::CoordinatorConfig {
            advertised_address: Some(coordinator.clone()),
            ..Default::default()
        };
        let (s, rx) = (store.clone(), stop_rx.clone());
        tasks.push((
            "coordinator",
            tokio::spawn(async move {
                runnel_coordinator::serve(c, s, coordinator_l, stopped(rx))
                    .await
                    .map_err(Into::into)
            }),
        ));
        let st = runnel_storage::StorageConfig {
            node_id: 1,
            data_dir: data_dir.join("storage"),
            advertised_address: Some(storage.clone()),
            flush: "interval".into(),
            ..Default::default()
        };
        let (s, rx) = (store.clone(), stop_rx.clone());
        tasks.push((
            "storage",
            tokio::spawn(async move {
                runnel_storage::serve(st, s, storage_l, stopped(rx))
                    .await
                    .map_err(Into::into)
            }),
        ));
        let i = runnel_ingest::IngestConfig::default();
        let (s, rx) = (store.clone(), stop_rx.clone());
        tasks.push((
            "ingest",
            tokio::spawn(async move {
                runnel_ingest::serve(i, s, ingest_l, stopped(rx))
                    .await
                    .map_err(Into::into)
            }),
        ));

        let watcher = MetadataWatcher::start(store.clone(), Keys::new("runnel")).await?;
        let ready = watcher
            .wait_until(Duration::from_secs(30), |md| {
                md.controller.is_some() && !md.nodes.is_empty() && md.cluster_id.is_some()
            })
            .await;
        anyhow::ensure!(ready.is_some(), "the cluster did not become ready in 30 s");

        let mut cluster = Cluster {
            store,
            coordinator,
            storage,
            ingest,
            edges: Vec::new(),
            options: options.clone(),
            stop,
            tasks,
            _tmp: tmp,
        };
        cluster.add_edge(1, options.kafka_port).await?;
        Ok(cluster)
    }

    /// The first edge's Kafka address.
    pub fn kafka(&self) -> &str {
        &self.edges[0].address
    }

    /// Starts another edge (broker id `node_id`) on `port` (0: any).
    pub async fn add_edge(&mut self, node_id: i32, port: u16) -> anyhow::Result<String> {
        let (listener, address) = bind(&self.options.host, port).await?;
        let config = runnel_edge::EdgeConfig {
            node_id,
            ingest_address: self.ingest.clone(),
            coordinator_address: Some(self.coordinator.clone()),
            auto_create_topics: self.options.auto_create_topics,
            default_partitions: self.options.default_partitions,
            ..self.options.edge.clone()
        };
        let (stop, rx) = watch::channel(false);
        let store = self.store.clone();
        let task: Task = tokio::spawn(async move {
            runnel_edge::serve(config, store, listener, stopped(rx))
                .await
                .map_err(Into::into)
        });
        self.edges.push(EdgeHandle {
            address: address.clone(),
            node_id,
            stop,
            task,
        });
        Ok(address)
    }

    /// Stops the edge with broker id `node_id` (it leaves the registry) and
    /// returns its address.
    pub async fn stop_edge(&mut self, node_id: i32) -> anyhow::Result<String> {
        let i = self
            .edges
            .iter()
            .position(|e| e.node_id == node_id)
            .ok_or_else(|| anyhow::anyhow!("no edge {node_id}"))?;
        let edge = self.edges.remove(i);
        let address = edge.address.clone();
        edge.stop().await?;
        Ok(address)
    }

    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for e in self.edges.drain(..) {
            e.stop().await?;
        }
        let _ = self.stop.send(true);
        for (name, task) in self.tasks.drain(..) {
            task.await
                .with_context(|| format!("{name} panicked"))?
                .with_context(|| format!("{name} failed"))?;
        }
        Ok(())
    }
}

/// A raw Kafka protocol connection for tests that look at the wire.
pub struct KafkaConn {
    pub stream: tokio::net::TcpStream,
    correlation: i32,
}

impl KafkaConn {
    pub async fn connect(address: &str) -> anyhow::Result<KafkaConn> {
        Ok(KafkaConn {
            stream: tokio::net::TcpStream::connect(address).await?,
            correlation: 0,
        })
    }

    /// Sends raw bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads one response frame (without its length); `None` if the edge
    /// closed the connection.
    pub async fn read_frame(&mut self) -> anyhow::Result<Option<bytes::Bytes>> {
        use tokio::io::AsyncReadExt;
        let mut len = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(30), self.stream.read_exact(&mut len))
            .await?
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = i32::from_be_bytes(len) as usize;
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await?;
        Ok(Some(bytes::Bytes::from(buf)))
    }

    /// True once the edge has closed the connection (reads return EOF).
    pub async fn is_closed(&mut self) -> bool {
        matches!(self.read_frame().await, Ok(None) | Err(_))
    }

    /// Sends a request of type `T` at `version`; returns the correlation id.
    pub async fn send<T>(&mut self, request: &T, version: i16) -> anyhow::Result<i32>
    where
        T: kafka_protocol::protocol::Request,
    {
        use bytes::BufMut;
        use kafka_protocol::messages::RequestHeader;
        use kafka_protocol::protocol::{Encodable, StrBytes};
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(T::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("edge-test")));
        let mut body = bytes::BytesMut::new();
        header.encode(&mut body, T::header_version(version))?;
        request.encode(&mut body, version)?;
        let mut frame = bytes::BytesMut::with_capacity(body.len() + 4);
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.send_raw(&frame).await?;
        Ok(self.correlation)
    }

    /// Sends a request and decodes its response.
    pub async fn call<T>(&mut self, request: &T, version: i16) -> anyhow::Result<T::Response>
    where
        T: kafka_protocol::protocol::Request,
    {
        use kafka_protocol::messages::ResponseHeader;
        use kafka_protocol::protocol::{Decodable, HeaderVersion};
        let correlation = self.send(request, version).await?;
        let mut frame = self
            .read_frame()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the edge closed the connection"))?;
        let header_version = if T::KEY == 18 {
            0
        } else {
            <T::Response as HeaderVersion>::header_version(version)
        };
        let header = ResponseHeader::decode(&mut frame, header_version)?;
        anyhow::ensure!(
            header.correlation_id == correlation,
            "correlation id mismatch"
        );
        let response = <T::Response as Decodable>::decode(&mut frame, version)?;
        anyhow::ensure!(frame.is_empty(), "{} bytes after the response", frame.len());
        Ok(response)
    }
}
