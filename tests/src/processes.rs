//! Every role as its own `runnel` process on a real etcd.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use runnel_client::Admin;
use runnel_test_support::{ChildProcess, EtcdServer, free_port};
use tempfile::TempDir;

use crate::{SOON, eventually, init_tracing, start_etcd, unique_name};

/// The `runnel` binary the process tests run.
///
/// - `RUNNEL_BIN` names one explicitly (e.g. a release build in CI);
/// - otherwise `<target dir>/<profile>/runnel` (the target directory from
///   `CARGO_TARGET_DIR` or the workspace's `target/`, the profile the tests
///   are built with) when it is newer than every source file of the
///   workspace (`*.rs`, `*.proto`, `Cargo.toml`, `Cargo.lock`), which is the
///   case after `cargo build`/`cargo test --workspace`;
/// - otherwise the tests run `cargo build -p runnel` once per test binary
///   and use the executable cargo reports.
///
/// So the processes always run the code of this checkout, and a test run
/// that already built the binary does not build it again (a `-p runnel`
/// build can resolve features differently from a workspace build and
/// recompile dependencies).
///
/// Blocking; from async code call it through `spawn_blocking`.
pub fn runnel_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("RUNNEL_BIN") {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "RUNNEL_BIN={} is not a file; unset it to let the tests find or build `runnel`",
                bin.display()
            );
            return bin;
        }
        let workspace = workspace_dir();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|d| workspace.join(d))
            .unwrap_or_else(|| workspace.join("target"));
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let built = target.join(profile).join("runnel");
        let built_at = std::fs::metadata(&built).and_then(|m| m.modified()).ok();
        match built_at {
            Some(t) if t >= newest_source(&workspace) => built,
            _ => build_runnel(&workspace),
        }
    })
    .clone()
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// The newest modification time of the workspace's sources.
fn newest_source(workspace: &Path) -> std::time::SystemTime {
    fn walk(dir: &Path, newest: &mut std::time::SystemTime) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if path.is_dir() {
                walk(&path, newest);
            } else if (name.ends_with(".rs")
                || name.ends_with(".proto")
                || name == "Cargo.toml"
                || name == "Cargo.lock")
                && let Ok(t) = entry.metadata().and_then(|m| m.modified())
            {
                *newest = (*newest).max(t);
            }
        }
    }
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for file in ["Cargo.toml", "Cargo.lock"] {
        if let Ok(t) = std::fs::metadata(workspace.join(file)).and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    for dir in ["libs", "services", "proto"] {
        walk(&workspace.join(dir), &mut newest);
    }
    newest
}

fn build_runnel(workspace: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace)
        .args(["build", "-p", "runnel", "--bin", "runnel"])
        .arg("--message-format=json-render-diagnostics");
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "running `{} build -p runnel` to get the runnel binary: {e}; build it yourself and set RUNNEL_BIN",
            cargo.to_string_lossy()
        )
    });
    assert!(
        output.status.success(),
        "`cargo build -p runnel` failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let executable = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "runnel")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back();
    let executable = executable.unwrap_or_else(|| {
        panic!("`cargo build -p runnel` reported no runnel executable; output:\n{stdout}")
    });
    assert!(
        executable.is_file(),
        "{} does not exist",
        executable.display()
    );
    executable
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    Coordinator,
    Storage,
    Ingest,
}

impl RoleKind {
    /// The subcommand of the binary.
    pub fn command(self) -> &'static str {
        match self {
            RoleKind::Coordinator => "coordinator",
            RoleKind::Storage => "storage",
            RoleKind::Ingest => "ingest",
        }
    }

    /// The fully qualified gRPC service the role serves.
    pub fn service(self) -> &'static str {
        match self {
            RoleKind::Coordinator => "runnel.coordinator.v1.CoordinatorService",
            RoleKind::Storage => "runnel.storage.v1.StorageService",
            RoleKind::Ingest => "runnel.ingest.v1.IngestService",
        }
    }
}

/// One `runnel <role>` process.
#[derive(Debug)]
pub struct Role {
    pub kind: RoleKind,
    /// Instance id (coordinator) or node id (storage); 0 for ingest.
    pub id: i32,
    /// gRPC host:port.
    pub address: String,
    /// Prometheus host:port.
    pub metrics_address: String,
    /// Where a storage node keeps its logs.
    pub data_dir: Option<PathBuf>,
    pub process: ChildProcess,
}

impl Role {
    /// Waits until the role's own service answers health checks with SERVING.
    pub async fn wait_healthy(&mut self) {
        self.process
            .wait_healthy(&self.address, self.kind.service(), SOON)
            .await;
    }

    /// SIGKILL: no flush, no deregistration, no lease revocation.
    pub fn kill_9(&mut self) {
        self.process.kill_9();
    }

    /// Starts the process again with the same flags, data directory and
    /// ports, and waits until it is healthy.
    pub async fn restart(&mut self) {
        self.process.restart();
        self.wait_healthy().await;
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// What a [`ProcessCluster`] runs.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Coordinator instances (ids 1, 2, …).
    pub coordinators: usize,
    /// Storage nodes (ids 1, 2, …), each with its own data directory.
    pub storage_nodes: usize,
    pub ingest: bool,
    /// Lease TTL of coordinators and storage nodes: how soon a dead one is
    /// noticed.
    pub lease_ttl_secs: u64,
}

impl Default for ProcessSpec {
    fn default() -> Self {
        ProcessSpec {
            coordinators: 1,
            storage_nodes: 2,
            ingest: true,
            lease_ttl_secs: 3,
        }
    }
}

/// A real etcd and `runnel` role processes on free loopback ports. Every
/// process is killed on drop; when a test panics, the tail of every role's
/// log is printed.
pub struct ProcessCluster {
    pub etcd: EtcdServer,
    /// The cluster name (metastore prefix).
    pub name: String,
    pub coordinators: Vec<Role>,
    pub storage: Vec<Role>,
    pub ingest: Option<Role>,
    pub dir: TempDir,
}

impl std::fmt::Debug for ProcessCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCluster")
            .field("name", &self.name)
            .field("etcd", &self.etcd)
            .field("coordinators", &self.coordinators)
            .field("storage", &self.storage)
            .field("ingest", &self.ingest)
            .finish()
    }
}

impl ProcessCluster {
    /// Starts etcd and the processes, and waits until each is healthy, a
    /// controller is elected and every storage node is registered.
    pub async fn start(spec: ProcessSpec) -> Self {
        init_tracing();
        let bin = tokio::task::spawn_blocking(runnel_binary).await.unwrap();
        let etcd = start_etcd().await;
        let name = unique_name("procs");
        let dir = tempfile::Builder::new()
            .prefix("runnel-e2e-procs-")
            .tempdir()
            .unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let ttl = spec.lease_ttl_secs.to_string();
        let role = |kind: RoleKind, id: i32, label: String, data_dir: Option<PathBuf>| {
            let address = format!("127.0.0.1:{}", free_port());
            let metrics_address = format!("127.0.0.1:{}", free_port());
            let mut process = ChildProcess::new(&label, &bin, Some(&logs))
                .arg(kind.command())
                .args(["--listen", &address])
                .args(["--metastore", &etcd.url()])
                .args(["--cluster", &name])
                .args(["--metrics-listen", &metrics_address]);
            process = match kind {
                RoleKind::Coordinator => process
                    .args(["--instance-id", &id.to_string()])
                    .args(["--lease-ttl-secs", &ttl]),
                RoleKind::Storage => process
                    .args(["--node-id", &id.to_string()])
                    .arg("--data-dir")
                    .arg(
                        data_dir
                            .as_ref()
                            .expect("a storage node needs a data directory"),
                    )
                    .args(["--lease-ttl-secs", &ttl]),
                RoleKind::Ingest => process,
            };
            Role {
                kind,
                id,
                address,
                metrics_address,
                data_dir,
                process: process.start(),
            }
        };
        let coordinators: Vec<Role> = (1..=spec.coordinators as i32)
            .map(|id| role(RoleKind::Coordinator, id, format!("coordinator-{id}"), None))
            .collect();
        let storage: Vec<Role> = (1..=spec.storage_nodes as i32)
            .map(|id| {
                let data_dir = dir.path().join(format!("storage-{id}"));
                role(
                    RoleKind::Storage,
                    id,
                    format!("storage-{id}"),
                    Some(data_dir),
                )
            })
            .collect();
        let ingest = spec
            .ingest
            .then(|| role(RoleKind::Ingest, 0, "ingest".to_string(), None));
        let mut cluster = ProcessCluster {
            etcd,
            name,
            coordinators,
            storage,
            ingest,
            dir,
        };
        for r in cluster.roles_mut() {
            r.wait_healthy().await;
        }
        let coordinator = cluster.coordinator().to_string();
        cluster.wait_ready(&coordinator).await;
        cluster
    }

    /// Every role process.
    pub fn roles_mut(&mut self) -> impl Iterator<Item = &mut Role> {
        self.coordinators
            .iter_mut()
            .chain(self.storage.iter_mut())
            .chain(self.ingest.iter_mut())
    }

    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.coordinators
            .iter()
            .chain(self.storage.iter())
            .chain(self.ingest.iter())
    }

    /// The first coordinator's address.
    pub fn coordinator(&self) -> &str {
        &self.coordinators[0].address
    }

    pub fn ingest(&self) -> &str {
        &self
            .ingest
            .as_ref()
            .expect("this cluster has no ingest")
            .address
    }

    /// The storage node with this id.
    pub fn storage_node(&mut self, node_id: i32) -> &mut Role {
        self.storage
            .iter_mut()
            .find(|r| r.id == node_id)
            .unwrap_or_else(|| panic!("no storage node {node_id}"))
    }

    /// Waits until, as `coordinator` sees it, a controller is elected and
    /// every storage node of the cluster is registered.
    pub async fn wait_ready(&self, coordinator: &str) {
        let admin = Admin::connect(coordinator).unwrap();
        let nodes = self.storage.len();
        eventually("process cluster ready", SOON, || {
            let admin = admin.clone();
            async move {
                let md = admin.metadata(&[]).await.map_err(|e| e.to_string())?;
                if md.controller_id < 0 || md.cluster_id.is_empty() || md.nodes.len() != nodes {
                    return Err(format!(
                        "controller {}, cluster id {:?}, {} of {nodes} storage nodes",
                        md.controller_id,
                        md.cluster_id,
                        md.nodes.len()
                    ));
                }
                Ok(())
            }
        })
        .await;
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for r in self.roles() {
                eprintln!(
                    "----- last lines of {} ({}) -----\n{}",
                    r.process.name(),
                    r.process.log_path().display(),
                    r.log_tail(40)
                );
            }
        }
        for r in self.roles_mut() {
            r.kill_9();
        }
    }
}
