//! Private server processes that a fault test may kill and restart.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::TestkitError;
use crate::service::port_answers;

/// How long a private server may take to listen after it was started.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(15);

/// A private `nats-server` with JetStream, on a spare loopback port, with its own store
/// directory (kept across [`restart`](Self::restart), so persisted streams survive a restart
/// like they do on a real server). Killed when dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), ms_testkit::TestkitError> {
/// let mut server = ms_testkit::NatsServer::start().await?;
/// let client = async_nats::connect(server.url()).await.unwrap();
/// server.kill().await?;      // SIGKILL: the broker vanishes mid-flight
/// server.restart().await?;   // same port, same store: the client reconnects
/// # drop(client); Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    process: PrivateProcess,
}

impl NatsServer {
    /// Starts the server and waits until it accepts connections.
    ///
    /// The program is `MS_TEST_NATS_SERVER_BIN` if set, else `nats-server` from `PATH`,
    /// `/usr/sbin` or `/usr/local/sbin`.
    pub async fn start() -> Result<Self, TestkitError> {
        let program = find_program("nats-server", "MS_TEST_NATS_SERVER_BIN")?;
        let dir = tempfile::Builder::new().prefix("ms-nats-").tempdir()?;
        let port = spare_port()?;
        let store = dir.path().join("jetstream");
        let log = dir.path().join("nats-server.log");
        let args = vec![
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-js".to_owned(),
            "-sd".to_owned(),
            store.display().to_string(),
            "-l".to_owned(),
            log.display().to_string(),
        ];
        let mut process = PrivateProcess {
            program,
            name: "nats-server",
            args,
            port,
            log,
            child: None,
            _dir: dir,
        };
        process.spawn().await?;
        Ok(Self { process })
    }

    /// The client URL: `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.process.port)
    }

    /// The port it listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// Whether the server process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.process.child.is_some()
    }

    /// Kills the server with SIGKILL, as a crash would, and waits until it is gone.
    pub async fn kill(&mut self) -> Result<(), TestkitError> {
        self.process.kill().await
    }

    /// Starts the server again on the same port with the same store; kills it first if it is
    /// still running.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.process.kill().await?;
        self.process.spawn().await
    }
}

/// The part of a private server that any program shares: spawn, wait for its port, kill.
#[derive(Debug)]
struct PrivateProcess {
    program: PathBuf,
    name: &'static str,
    args: Vec<String>,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
    // Held for its Drop: the store and log live as long as the server handle.
    _dir: tempfile::TempDir,
}

impl PrivateProcess {
    async fn spawn(&mut self) -> Result<(), TestkitError> {
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let started = Instant::now();
        while started.elapsed() < SERVER_START_TIMEOUT {
            if port_answers(addr).await {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(TestkitError::Setup {
                    service: self.name,
                    reason: format!("exited with {status}; its log: {}", tail(&self.log)),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.kill().await;
        Err(TestkitError::StartTimeout {
            program: self.name,
            port: self.port,
            waited_ms: SERVER_START_TIMEOUT.as_millis(),
            log: tail(&self.log),
        })
    }

    async fn kill(&mut self) -> Result<(), TestkitError> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }
}

/// A port nobody listens on right now. Another process could take it before the server
/// binds; on a test machine that race is rare enough, and the start error names the port.
fn spare_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn find_program(name: &'static str, override_var: &str) -> Result<PathBuf, TestkitError> {
    if let Ok(explicit) = std::env::var(override_var) {
        return Ok(PathBuf::from(explicit));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(TestkitError::ProgramNotFound { program: name })
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    const TAIL_BYTES: usize = 2000;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let start = text.len().saturating_sub(TAIL_BYTES);
            let start = (start..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            text[start..].to_owned()
        }
        Err(e) => format!("<no log: {e}>"),
    }
}
