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
/// Where the management API is not reachable (or private vhosts are turned off with
/// [`AMQP_PRIVATE_VHOSTS_VAR`](crate::AMQP_PRIVATE_VHOSTS_VAR)`=0`), the test gets the URL's
/// own virtual host and a [`namespace`](Self::namespace) that its buses put in front of every
/// exchange and queue name instead, and nothing is deleted at the end (AMQP cannot list
/// queues; the next run that has the management API removes them once
/// [stale](crate::STALE_AFTER)). A loud line says so.
#[derive(Debug)]
pub struct TestAmqp {
    url: String,
    vhost: String,
    prefix: String,
    management: Option<Management>,
}

/// Returns a private virtual host on RabbitMQ (or a namespace in the shared one, see
/// [`TestAmqp`]), or `None` after a loud skip line when RabbitMQ is not reachable.
///
/// # Panics
///
/// When a service URL or setting is set but unusable, when `MS_TEST_REQUIRE_SERVICES=1` and
/// RabbitMQ cannot be found, when `MS_TEST_AMQP_PRIVATE_VHOSTS=1` and the management API does
/// not answer, or when the management API refuses to create the virtual host.
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
        let management = match private_vhosts()? {
            Some(false) => None,
            required => {
                let found = find_management(&url, management_url).await?;
                if required == Some(true) && found.is_none() {
                    return Err(format!(
                        "{}=1 but the RabbitMQ management API does not answer on port \
                         {MANAGEMENT_PORT} of the AMQP host (enable rabbitmq_management or set {})",
                        crate::AMQP_PRIVATE_VHOSTS_VAR,
                        crate::AMQP_MANAGEMENT_URL_VAR
                    ));
                }
                found
            }
        };
        let vhost = match &management {
            Some(api) => {
                if !SWEPT.swap(true, Ordering::Relaxed) {
                    let shared = percent_decode(url.path().trim_start_matches('/'));
                    api.delete_stale(if shared.is_empty() { "/" } else { &shared })
                        .await;
                }
                api.create_vhost(&prefix).await?;
                url.set_path(&format!("/{prefix}"));
                prefix.clone()
            }
            None => {
                let vhost = percent_decode(url.path().trim_start_matches('/'));
                let vhost = if vhost.is_empty() {
                    "/".to_owned()
                } else {
                    vhost
                };
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!(
                        "ms-testkit: no private RabbitMQ virtual host ({}); the test's exchanges and \
                         queues are namespaced `{prefix}` in vhost `{vhost}`, and stay there until a run \
                         with the management API removes them\n",
                        if std::env::var(crate::AMQP_PRIVATE_VHOSTS_VAR).is_ok() {
                            format!("{}=0", crate::AMQP_PRIVATE_VHOSTS_VAR)
                        } else {
                            format!(
                                "management API not reachable: enable rabbitmq_management or set {}",
                                crate::AMQP_MANAGEMENT_URL_VAR
                            )
                        }
                    )
                    .as_bytes(),
                );
                vhost
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

    /// A unique prefix for names (no other test has it), with or without a private vhost.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace this test's buses must use (ms-bus's `AmqpBusBuilder::namespace`), and
    /// that the names of the test's own declarations must carry: `None` with a private vhost
    /// (nothing else is there, so the bus's default names are tested), the unique
    /// [`prefix`](Self::prefix) without one.
    pub fn namespace(&self) -> Option<&str> {
        if self.has_private_vhost() {
            None
        } else {
            Some(&self.prefix)
        }
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

/// [`AMQP_PRIVATE_VHOSTS_VAR`](crate::AMQP_PRIVATE_VHOSTS_VAR): `Some(false)` off, `Some(true)`
/// required, `None` wherever the management API answers.
fn private_vhosts() -> Result<Option<bool>, String> {
    parse_private_vhosts(
        std::env::var(crate::AMQP_PRIVATE_VHOSTS_VAR)
            .ok()
            .as_deref(),
    )
}

fn parse_private_vhosts(value: Option<&str>) -> Result<Option<bool>, String> {
    match value {
        None => Ok(None),
        Some(value) => crate::service::flag(value).map(Some).ok_or_else(|| {
            format!(
                "{} is `{value}`: use 1 (private vhosts, through the management API) or 0 \
                 (a namespace in the URL's own vhost)",
                crate::AMQP_PRIVATE_VHOSTS_VAR
            )
        }),
    }
}

/// The management API: the container's, else the one named by
/// [`AMQP_MANAGEMENT_URL_VAR`](crate::AMQP_MANAGEMENT_URL_VAR) (which must then answer), else
/// the usual port on the AMQP host if it answers.
async fn find_management(
    amqp: &url::Url,
    from_container: Option<String>,
) -> Result<Option<Management>, String> {
    match from_container.or_else(|| std::env::var(crate::AMQP_MANAGEMENT_URL_VAR).ok()) {
        Some(explicit) => Management::new(&explicit, amqp).map(Some),
        None => {
            let host = amqp.host_str().unwrap_or("127.0.0.1");
            let guess = format!("http://{host}:{MANAGEMENT_PORT}");
            let addr = loopback_addr(&guess, MANAGEMENT_PORT).map_err(|e| e.to_string())?;
            if port_answers(addr).await {
                Management::new(&guess, amqp).map(Some)
            } else {
                Ok(None)
            }
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

    /// Deletes what killed or namespaced test runs left behind, once older than
    /// [`STALE_AFTER`](crate::STALE_AFTER): test vhosts, and namespaced exchanges and queues
    /// in the `shared` vhost. Failures are ignored (another process may be sweeping the same
    /// ones).
    async fn delete_stale(&self, shared: &str) {
        #[derive(serde::Deserialize)]
        struct Named {
            name: String,
        }
        let list = |path: String| async move {
            let body = self.send(http::Method::GET, &path, "").await.ok()?;
            serde_json::from_slice::<Vec<Named>>(&body).ok()
        };
        for vhost in list("/api/vhosts".to_owned()).await.unwrap_or_default() {
            if is_stale(&vhost.name, PREFIX) {
                let _ = self.delete_vhost(&vhost.name).await;
            }
        }
        let shared = path_segment(shared);
        for kind in ["queues", "exchanges"] {
            let path = format!("/api/{kind}/{shared}?columns=name");
            for object in list(path).await.unwrap_or_default() {
                if is_stale(&object.name, PREFIX) {
                    let path = format!("/api/{kind}/{shared}/{}", path_segment(&object.name));
                    let _ = self.send(http::Method::DELETE, &path, "").await;
                }
            }
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

/// `s` as one segment of a management API path (vhost `/` is `%2F`, and namespaced names
/// contain `/`).
fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_vhosts_setting_is_off_required_or_unset_and_nothing_else() {
        assert_eq!(parse_private_vhosts(None), Ok(None));
        for off in ["0", "false", "off", " NO "] {
            assert_eq!(parse_private_vhosts(Some(off)), Ok(Some(false)), "{off}");
        }
        for on in ["1", "true", "yes", "On"] {
            assert_eq!(parse_private_vhosts(Some(on)), Ok(Some(true)), "{on}");
        }
        for wrong in ["", "2", "private", "vhost"] {
            let error = parse_private_vhosts(Some(wrong)).unwrap_err();
            assert!(error.contains(crate::AMQP_PRIVATE_VHOSTS_VAR), "{error}");
        }
    }

    #[test]
    fn management_paths_encode_the_default_vhost_and_namespaced_names() {
        assert_eq!(path_segment("/"), "%2F");
        assert_eq!(
            path_segment("mst_0a/invoicing.invoice:g"),
            "mst%5F0a%2Finvoicing%2Einvoice%3Ag"
        );
    }
}
