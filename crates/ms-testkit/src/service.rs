//! Finding a service: environment variable, usual local address, testcontainers, or a loud skip.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use crate::TestkitError;

/// The PostgreSQL URL for tests: an administrative connection that may create databases.
pub const POSTGRES_URL_VAR: &str = "MS_TEST_POSTGRES_URL";
/// The NATS URL for tests (JetStream must be enabled on that server).
pub const NATS_URL_VAR: &str = "MS_TEST_NATS_URL";
/// The AMQP 0-9-1 (RabbitMQ) URL for tests.
pub const AMQP_URL_VAR: &str = "MS_TEST_AMQP_URL";
/// The RabbitMQ management API URL, used to create a private virtual host per test.
/// Defaults to port 15672 on the AMQP host with the AMQP URL's credentials.
pub const AMQP_MANAGEMENT_URL_VAR: &str = "MS_TEST_AMQP_MANAGEMENT_URL";
/// The Kafka broker for tests, as `kafka://host:port` (a loopback address). Unset, the kit
/// tries `127.0.0.1:9092`, then testcontainers, then starts a tansu of its own.
pub const KAFKA_URL_VAR: &str = "MS_TEST_KAFKA_URL";
/// Whether tests get a private RabbitMQ virtual host: `0` (or `false`) never (each test's
/// exchanges and queues are namespaced in the AMQP URL's own virtual host, as on a machine
/// without the management plugin, even where the management API answers), `1` (or `true`)
/// always (a management API that does not answer fails the test); unset, wherever the
/// management API answers.
pub const AMQP_PRIVATE_VHOSTS_VAR: &str = "MS_TEST_AMQP_PRIVATE_VHOSTS";
/// When `1` (or `true`), a service that cannot be found fails the test instead of skipping it.
pub const REQUIRE_SERVICES_VAR: &str = "MS_TEST_REQUIRE_SERVICES";

/// How long a TCP probe of a service's port may take before we call it absent.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether missing services fail tests ([`REQUIRE_SERVICES_VAR`] is `1` or `true`).
pub fn require_services() -> bool {
    std::env::var(REQUIRE_SERVICES_VAR).is_ok_and(|v| flag(&v) == Some(true))
}

/// A boolean setting's value: `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off` (any case);
/// `None` for anything else.
pub(crate) fn flag(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A name no other test (in this or another process) will pick: `{prefix}_{uuid}`, where
/// `uuid` is a UUID v7 in 32 hex digits.
///
/// Letters, digits and `_` only, so the name is valid as an identifier, a stream name and a
/// vhost; `ms_test_` plus 32 digits stays under PostgreSQL's 63-byte limit. The UUID's
/// timestamp tells a later run when the resource was made (see [`STALE_AFTER`]).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// How old a resource made by [`unique_name`] must be before a later test run removes it.
///
/// Resources are normally removed when their handle drops; a test process that was killed
/// leaves them behind. No test runs for six hours, so older ones are leftovers.
pub const STALE_AFTER: Duration = Duration::from_secs(6 * 60 * 60);

/// Whether `name` was made by [`unique_name`] with `prefix` (followed by anything) more than
/// [`STALE_AFTER`] ago. Names of another shape are never stale: they are not ours.
pub(crate) fn is_stale(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    let Some(Ok(id)) = rest.get(..32).map(uuid::Uuid::try_parse) else {
        return false;
    };
    let Some((secs, nanos)) = id.get_timestamp().map(|ts| ts.to_unix()) else {
        return false;
    };
    let made = std::time::UNIX_EPOCH + Duration::new(secs, nanos);
    std::time::SystemTime::now()
        .duration_since(made)
        .is_ok_and(|age| age > STALE_AFTER)
}

/// One kind of service the kit can find.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServiceSpec {
    /// A name for people: "PostgreSQL".
    pub(crate) display: &'static str,
    /// Its URL variable.
    pub(crate) var: &'static str,
    /// Where it usually runs on a developer's machine.
    pub(crate) default_url: &'static str,
    /// Its default port, when the URL names none.
    pub(crate) default_port: u16,
}

/// Where a service's URL came from, which decides what happens when it does not answer.
#[derive(Debug)]
pub(crate) enum Located {
    /// From the environment or the default address, and it answered.
    Url(String),
    /// Nothing answered; the caller should skip (or the kit already panicked).
    Absent,
}

impl ServiceSpec {
    /// Finds the service's URL following the order in the crate docs, short of testcontainers
    /// (the caller tries those, since each service starts its own image).
    pub(crate) async fn locate(&self) -> Located {
        if let Ok(url) = std::env::var(self.var) {
            let url = url.trim().to_owned();
            let addr = match self.loopback_addr(&url) {
                Ok(addr) => addr,
                Err(e) => panic!("{}: {e}", self.var),
            };
            assert!(
                port_answers(addr).await,
                "{} is set to `{url}` but nothing answers at {addr}: start {} or unset {}",
                self.var,
                self.display,
                self.var
            );
            return Located::Url(url);
        }
        match self.loopback_addr(self.default_url) {
            Ok(addr) if port_answers(addr).await => Located::Url(self.default_url.to_owned()),
            _ => Located::Absent,
        }
    }

    /// Finds the service (see [`locate`](Self::locate)), else asks testcontainers, else skips.
    pub(crate) async fn find<T>(
        &self,
        from_url: impl FnOnce(String) -> T,
        container: impl FnOnce() -> Option<T> + Send + 'static,
    ) -> Option<T>
    where
        T: Send + 'static,
    {
        if let Located::Url(url) = self.locate().await {
            return Some(from_url(url));
        }
        // Starting a container blocks for a while; keep it off the test's runtime threads.
        let found = tokio::task::spawn_blocking(container).await.ok().flatten();
        if found.is_none() {
            self.skip();
        }
        found
    }

    /// Parses the URL's host and port, refusing anything that is not a loopback address.
    pub(crate) fn loopback_addr(&self, raw: &str) -> Result<SocketAddr, TestkitError> {
        loopback_addr(raw, self.default_port)
    }

    /// Reports a missing service: panics when services are required, else prints one loud
    /// line on the real stderr (libtest's capture does not hide it) and returns.
    pub(crate) fn skip(&self) {
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed test>")
            .to_owned();
        let hint = format!(
            "{} not reachable (set {} or start it on {}{})",
            self.display,
            self.var,
            self.default_url,
            if cfg!(feature = "testcontainers") {
                "; testcontainers could not start it either"
            } else {
                "; or enable ms-testkit's `testcontainers` feature where Docker runs"
            }
        );
        assert!(
            !require_services(),
            "{REQUIRE_SERVICES_VAR}=1 and {hint}: test `{test}` cannot run"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {hint}");
    }
}

/// Parses a URL and checks that its host is a loopback address (127.0.0.0/8, `::1`, or a
/// name such as `localhost` that resolves only to those).
pub(crate) fn loopback_addr(raw: &str, default_port: u16) -> Result<SocketAddr, TestkitError> {
    let invalid = |reason: String| TestkitError::InvalidUrl {
        url: raw.to_owned(),
        reason,
    };
    let url = url::Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
    let host = url
        .host_str()
        .ok_or_else(|| invalid("no host".to_owned()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port().unwrap_or(default_port);
    let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        (host, port)
            .to_socket_addrs()
            .map_err(|e| invalid(format!("cannot resolve `{host}`: {e}")))?
            .collect()
    };
    match addrs.first() {
        Some(first) if addrs.iter().all(|a| a.ip().is_loopback()) => Ok(*first),
        Some(_) => Err(invalid(format!(
            "`{host}` is not a loopback address; tests only talk to this machine"
        ))),
        None => Err(invalid(format!("`{host}` resolves to nothing"))),
    }
}

/// Whether a TCP connection to `addr` succeeds within [`PROBE_TIMEOUT`].
pub(crate) async fn port_answers(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Runs an async clean-up to completion from a `Drop` impl.
///
/// Drop cannot await, and the test's own runtime may be shutting down (or be a
/// current-thread runtime we must not block), so the clean-up gets a thread and a runtime of
/// its own. Failures are printed, never panicked: a failed clean-up must not hide the test's
/// own result.
pub(crate) fn cleanup_blocking<F>(what: &str, make: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let joined = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(make())
    })
    .join();
    let outcome = match joined {
        Ok(result) => result,
        Err(_) => Err("clean-up thread panicked".to_owned()),
    };
    if let Err(e) = outcome {
        let _ = writeln!(
            std::io::stderr(),
            "ms-testkit: could not clean up {what}: {e}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_accepted() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "nats://localhost:4222",
            "amqp://guest:guest@[::1]:5672/%2f",
            "nats://127.0.0.9",
        ] {
            assert!(loopback_addr(url, 1).is_ok(), "{url}");
        }
        assert_eq!(
            loopback_addr("nats://127.0.0.9", 4222).unwrap().port(),
            4222
        );
    }

    #[test]
    fn other_hosts_are_refused() {
        for url in [
            "postgres://postgres@10.0.0.1:5432/postgres",
            "nats://192.168.1.4:4222",
            "amqp://8.8.8.8",
            "not a url",
            "unix:/tmp/socket",
        ] {
            assert!(loopback_addr(url, 1).is_err(), "{url}");
        }
    }

    #[test]
    fn only_old_names_of_our_shape_are_stale() {
        assert!(!is_stale(&unique_name("ms_test"), "ms_test"));
        let old = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, 1_000_000, 0));
        assert!(is_stale(&format!("ms_test_{}", old.simple()), "ms_test"));
        assert!(is_stale(&format!("mst_{}_events", old.simple()), "mst"));
        for foreign in ["ms_test", "ms_test_", "ms_test_short", "orders", "mst_zzzz"] {
            assert!(!is_stale(foreign, "ms_test"), "{foreign}");
        }
        assert!(!is_stale(&format!("other_{}", old.simple()), "ms_test"));
    }

    #[test]
    fn unique_names_differ_and_are_identifiers() {
        let a = unique_name("ms_test");
        let b = unique_name("ms_test");
        assert_ne!(a, b);
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{a}"
        );
        assert!(a.len() <= 63, "{a} is too long for a PostgreSQL identifier");
    }
}
