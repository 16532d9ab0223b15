//! A private RabbitMQ virtual host per test.

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::service::{ServiceSpec, cleanup_blocking, is_stale, loopback_addr, port_answers};

pub(crate) const SPEC: ServiceSpec = ServiceSpec {
    display: "RabbitMQ",
    var: crate::AMQP_URL_VAR,
    default_url: "amqp://guest:guest@127.0.0.1:5672/%2f",
    default_port: 5672,
};

/// The prefix of every test's vhost.
const PREFIX: &str = "mst";

/// Whether this process already removed the vhosts that killed test runs left behind.
static SWEPT: AtomicBool = AtomicBool::new(false);

/// The management API's usual port.
const MANAGEMENT_PORT: u16 = 15672;

/// A test's own virtual host on the shared RabbitMQ (created through the management API),
/// deleted with everything in it when this handle drops.
///
/// Where the management API is not reachable, the test gets the URL's own virtual host and a
/// unique [`prefix`](Self::prefix) for its exchange and queue names instead, and nothing is
/// deleted: say so loudly, since a prefix isolates only tests that use it.
#[derive(Debug)]
pub struct TestAmqp {
    url: String,
    vhost: String,
    prefix: String,
    management: Option<Management>,
}

/// Returns a private virtual host on RabbitMQ, or `None` after a loud skip line when RabbitMQ
/// is not reachable.
///
/// # Panics
///
/// When a service URL is set but unusable, when `MS_TEST_REQUIRE_SERVICES=1` and RabbitMQ
/// cannot be found, or when the management API refuses to create the virtual host.
pub async fn amqp() -> Option<TestAmqp> {
    let (base_url, management_url) = SPEC
        .find(
            |url| (url, None),
            || from_container().map(|(url, management)| (url, Some(management))),
        )
        .await?;
    Some(
        TestAmqp::create(&base_url, management_url)
            .await
            .unwrap_or_else(|e| panic!("preparing a RabbitMQ virtual host: {e}")),
    )
}

#[cfg(feature = "testcontainers")]
fn from_container() -> Option<(String, String)> {
    crate::containers::amqp_urls()
}

#[cfg(not(feature = "testcontainers"))]
fn from_container() -> Option<(String, String)> {
    None
}

impl TestAmqp {
    async fn create(base_url: &str, management_url: Option<String>) -> Result<Self, String> {
        let mut url = url::Url::parse(base_url).map_err(|e| e.to_string())?;
        let prefix = crate::unique_name(PREFIX);
        let management =
            match management_url.or_else(|| std::env::var(crate::AMQP_MANAGEMENT_URL_VAR).ok()) {
                Some(explicit) => Some(Management::new(&explicit, &url)?),
                None => {
                    let host = url.host_str().unwrap_or("127.0.0.1");
                    let guess = format!("http://{host}:{MANAGEMENT_PORT}");
                    let addr = loopback_addr(&guess, MANAGEMENT_PORT).map_err(|e| e.to_string())?;
                    if port_answers(addr).await {
                        Some(Management::new(&guess, &url)?)
                    } else {
                        None
                    }
                }
            };
        let vhost = match &management {
            Some(api) => {
                if !SWEPT.swap(true, Ordering::Relaxed) {
                    api.delete_stale_vhosts().await;
                }
                api.create_vhost(&prefix).await?;
                url.set_path(&format!("/{prefix}"));
                prefix.clone()
            }
            None => {
                let vhost = percent_decode(url.path().trim_start_matches('/'));
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!(
                        "ms-testkit: RabbitMQ management API not reachable; test isolated by name prefix `{prefix}` only (enable rabbitmq_management or set {})\n",
                        crate::AMQP_MANAGEMENT_URL_VAR
                    )
                    .as_bytes(),
                );
                if vhost.is_empty() {
                    "/".to_owned()
                } else {
                    vhost
                }
            }
        };
        Ok(Self {
            url: url.into(),
            vhost,
            prefix,
            management,
        })
    }

    /// The AMQP URL, pointing at this test's virtual host.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The virtual host's name.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// A unique prefix for exchange and queue names (needed only without a private vhost, but
    /// harmless with one).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the test has a private virtual host (true where the management API answers).
    pub fn has_private_vhost(&self) -> bool {
        self.management.is_some()
    }

    /// A new connection to this test's virtual host.
    ///
    /// # Panics
    ///
    /// When the broker cannot be reached: the test cannot go on.
    pub async fn connection(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url))
    }
}

impl Drop for TestAmqp {
    fn drop(&mut self) {
        if let Some(api) = self.management.clone() {
            let vhost = self.vhost.clone();
            cleanup_blocking(&format!("RabbitMQ vhost {vhost}"), move || async move {
                api.delete_vhost(&vhost).await
            });
        }
    }
}

/// The few calls of RabbitMQ's management HTTP API that the kit needs.
#[derive(Debug, Clone)]
struct Management {
    base: String,
    user: String,
    authorization: String,
}

impl Management {
    fn new(raw: &str, amqp: &url::Url) -> Result<Self, String> {
        let parsed = url::Url::parse(raw).map_err(|e| format!("{raw}: {e}"))?;
        loopback_addr(raw, MANAGEMENT_PORT).map_err(|e| e.to_string())?;
        // Credentials: the management URL's own, else the AMQP URL's, else RabbitMQ's default.
        let (user, password) = if parsed.username().is_empty() {
            (amqp.username(), amqp.password())
        } else {
            (parsed.username(), parsed.password())
        };
        let user = if user.is_empty() {
            "guest".to_owned()
        } else {
            percent_decode(user)
        };
        let password = percent_decode(password.unwrap_or("guest"));
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut base = parsed.clone();
        let _ = base.set_username("");
        let _ = base.set_password(None);
        Ok(Self {
            base: base.as_str().trim_end_matches('/').to_owned(),
            user,
            authorization: format!("Basic {token}"),
        })
    }

    async fn create_vhost(&self, vhost: &str) -> Result<(), String> {
        self.send(http::Method::PUT, &format!("/api/vhosts/{vhost}"), "{}")
            .await?;
        let permissions = r#"{"configure":".*","write":".*","read":".*"}"#;
        let user = url::form_urlencoded::byte_serialize(self.user.as_bytes()).collect::<String>();
        self.send(
            http::Method::PUT,
            &format!("/api/permissions/{vhost}/{user}"),
            permissions,
        )
        .await
        .map(drop)
    }

    async fn delete_vhost(&self, vhost: &str) -> Result<(), String> {
        self.send(http::Method::DELETE, &format!("/api/vhosts/{vhost}"), "")
            .await
            .map(drop)
    }

    /// Deletes test vhosts older than [`STALE_AFTER`](crate::STALE_AFTER); failures are
    /// ignored (another process may be sweeping the same ones).
    async fn delete_stale_vhosts(&self) {
        #[derive(serde::Deserialize)]
        struct Vhost {
            name: String,
        }
        let Ok(body) = self.send(http::Method::GET, "/api/vhosts", "").await else {
            return;
        };
        let Ok(vhosts) = serde_json::from_slice::<Vec<Vhost>>(&body) else {
            return;
        };
        for vhost in vhosts.iter().filter(|v| is_stale(&v.name, PREFIX)) {
            let _ = self.delete_vhost(&vhost.name).await;
        }
    }

    /// Sends one request; the response body on success, the status and body as the error.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: &'static str,
    ) -> Result<Bytes, String> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = http::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(http::header::AUTHORIZATION, &self.authorization)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .map_err(|e| e.to_string())?;
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&body)
            ))
        }
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
