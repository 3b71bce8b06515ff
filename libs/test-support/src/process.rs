//! A server binary as a child process: started with its output in a log
//! file, waited for through gRPC health, killed with SIGKILL or stopped with
//! SIGTERM, restarted with the same arguments, and killed on drop.

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How many log lines a failure message shows.
const TAIL_LINES: usize = 40;

/// A child process with its log (stdout and stderr) in `<log dir>/<name>.log`.
///
/// Every start appends to the same log, after a `=== start N ===` line, so a
/// restarted process's history stays in one place. Variables named
/// `RUNNEL_*` are not inherited from the test's environment (they would
/// override flags in surprising ways); set them with [`ChildProcess::env`].
pub struct ChildProcess {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log_path: PathBuf,
    _log_dir: Option<TempDir>,
    child: Option<Child>,
    starts: u32,
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("log", &self.log_path)
            .finish()
    }
}

impl ChildProcess {
    /// A process that is not started yet; its log goes to `log_dir` (a new
    /// temporary directory when None).
    #[allow(clippy::panic)]
    pub fn new(name: &str, program: impl AsRef<Path>, log_dir: Option<&Path>) -> Self {
        let (log_dir, owned) = match log_dir {
            Some(dir) => (dir.to_path_buf(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("runnel-proc-")
                    .tempdir()
                    .unwrap_or_else(|e| panic!("creating a temporary directory: {e}"));
                (dir.path().to_path_buf(), Some(dir))
            }
        };
        ChildProcess {
            name: name.to_string(),
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
            log_path: log_dir.join(format!("{name}.log")),
            _log_dir: owned,
            child: None,
            starts: 0,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Starts the process (it must not be running). Panics if it cannot be
    /// spawned.
    pub fn start(mut self) -> Self {
        self.spawn();
        self
    }

    #[allow(clippy::panic)]
    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "{} is already running; stop it first",
            self.name
        );
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path.display()));
        let _ = writeln!(log, "=== start {} of {} ===", self.starts, self.name);
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning a log file handle: {e}"));
        let mut command = Command::new(&self.program);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RUNNEL_") {
                command.env_remove(name);
            }
        }
        // Plain text in the log files.
        command.env("NO_COLOR", "1");
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,h2=warn,hyper=warn,tower=warn");
        }
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} ({}): {e}", self.name, self.program.display()));
        self.child = Some(child);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status if the process has exited (and reaps it), None while
    /// it runs or when it was never started.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.exited().is_none() && self.child.is_some()
    }

    /// Kills the process with SIGKILL (no chance to flush or deregister) and
    /// reaps it.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // std's Child::kill sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
            self.note("killed with SIGKILL");
        }
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets and state but
    /// does nothing — a node cut off from everyone, as far as they can tell.
    pub fn pause(&mut self) {
        self.signal("-STOP", "paused with SIGSTOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("-CONT", "resumed with SIGCONT");
    }

    fn signal(&mut self, signal: &str, note: &str) {
        let Some(pid) = self.pid() else {
            return;
        };
        let sent = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {signal} {pid} failed");
        self.note(note);
    }

    /// Asks the process to stop with SIGTERM and waits up to `grace` for it
    /// to exit, then kills it. Returns its exit status if it stopped by
    /// itself.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let signalled = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + grace;
        while signalled && Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.note(&format!("stopped with SIGTERM ({status})"));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.note("did not stop on SIGTERM; killed with SIGKILL");
        None
    }

    /// Starts the process again with the same arguments (killing it first if
    /// it still runs).
    pub fn restart(&mut self) {
        self.kill_9();
        self.spawn();
    }

    fn note(&self, what: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(log, "=== {} {what} ===", self.name);
        }
    }

    /// Waits until the gRPC server at `address` (host:port) answers a health
    /// check for `service` ("" for the server as a whole) with SERVING.
    /// Panics with the log's tail if the process exits or `timeout` passes.
    #[allow(clippy::panic)]
    pub async fn wait_healthy(&mut self, address: &str, service: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) before it was healthy; last {TAIL_LINES} log lines ({}):\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(TAIL_LINES)
                );
            }
            if self.child.is_none() {
                panic!("{} is not running", self.name);
            }
            let last = match health_status(address, service).await {
                Ok(ServingStatus::Serving) => return,
                Ok(other) => format!("health status {other:?}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "{} at {address} not SERVING after {timeout:?} ({last}); last {TAIL_LINES} log lines ({}):\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One gRPC health check of `service` at `address` (host:port).
pub async fn health_status(address: &str, service: &str) -> Result<ServingStatus, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("invalid address {address:?}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| format!("health check: {}: {}", s.code(), s.message()))?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}
