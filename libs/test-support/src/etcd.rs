//! A real etcd server as a child process.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;

/// How long a started etcd gets to report itself healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A single-member etcd cluster listening on free loopback ports, with its
/// data directory and log (`etcd.log`) in a temporary directory. Killed (and
/// waited for) on drop.
///
/// Needs the `etcd` binary (Debian: `apt-get install -y etcd-server`); panics
/// with a message saying so when it is missing.
pub struct EtcdServer {
    child: Child,
    client_port: u16,
    dir: TempDir,
}

impl std::fmt::Debug for EtcdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdServer")
            .field("pid", &self.child.id())
            .field("endpoint", &self.endpoint())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl EtcdServer {
    /// Starts etcd and waits until it answers `/health`. Panics if the binary
    /// is missing or the server does not become healthy (after retrying
    /// with fresh ports, in case another process took one).
    ///
    /// This blocks for the second or so etcd needs to start; call it before
    /// starting anything that must not be blocked, or from `spawn_blocking`.
    #[allow(clippy::panic)]
    pub fn start() -> Self {
        let bin = find_etcd();
        let mut errors = Vec::new();
        for _ in 0..3 {
            match Self::try_start(&bin) {
                Ok(server) => return server,
                Err(e) => errors.push(e),
            }
        }
        panic!(
            "etcd ({}) did not start:\n{}",
            bin.display(),
            errors.join("\n---\n")
        );
    }

    fn try_start(bin: &Path) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("runnel-etcd-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        let client_port = free_port();
        let peer_port = free_port();
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.path().join("etcd.log");
        let log = File::create(&log_path).map_err(|e| format!("creating {log_path:?}: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cloning the log file handle: {e}"))?;
        let mut command = Command::new(bin);
        // An ETCD_* variable in the test's environment would override flags.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        command
            .arg("--name=n0")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=n0={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = command
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let mut server = EtcdServer {
            child,
            client_port,
            dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match server.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "etcd exited early ({status}); log:\n{}",
                        server.log_tail()
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for etcd: {e}")),
            }
            if healthy(client_port) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd not healthy after {READY_TIMEOUT:?}; log:\n{}",
                    server.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:port` of the client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:port`, the form etcd clients take.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// `etcd://127.0.0.1:port`, the form runnel's metastore URL takes.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// Where etcd writes its log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True if etcd's `/health` endpoint reports a healthy member.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(3)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).is_err() {
        return false;
    }
    response.starts_with("HTTP/1.") && response.contains("\"health\":\"true\"")
}

/// The etcd binary: on PATH, else in /usr/bin or /usr/local/bin.
#[allow(clippy::panic)]
fn find_etcd() -> PathBuf {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let candidates = path_dirs
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("etcd"));
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the `etcd` binary is needed by this test but was not found on PATH, in /usr/bin or \
         in /usr/local/bin. Install it by running the project's setup script `tests/setup.sh`, \
         or with `apt-get install -y etcd-server`."
    );
}
