//! Unique NATS subjects and JetStream stream names per test on the shared server.

use futures_util::StreamExt as _;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::service::{ServiceSpec, cleanup_blocking, is_stale};

pub(crate) const SPEC: ServiceSpec = ServiceSpec {
    display: "NATS",
    var: crate::NATS_URL_VAR,
    default_url: "nats://127.0.0.1:4222",
    default_port: 4222,
};

/// A test's own corner of the shared NATS server: subjects under [`prefix`](Self::prefix)
/// and streams whose names start with it. Dropping the handle deletes those streams.
#[derive(Debug)]
pub struct TestNats {
    url: String,
    prefix: String,
}

/// Returns a fresh prefix on the NATS server, or `None` after a loud skip line when NATS is
/// not reachable.
///
/// # Panics
///
/// When a service URL is set but unusable, or when `MS_TEST_REQUIRE_SERVICES=1` and NATS
/// cannot be found.
pub async fn nats() -> Option<TestNats> {
    let url = SPEC.find(|url| url, from_container).await?;
    if !SWEPT.swap(true, Ordering::Relaxed) {
        delete_stale_streams(&url).await;
    }
    Some(TestNats {
        url,
        prefix: crate::unique_name(PREFIX),
    })
}

#[cfg(feature = "testcontainers")]
fn from_container() -> Option<String> {
    crate::containers::nats_url()
}

#[cfg(not(feature = "testcontainers"))]
fn from_container() -> Option<String> {
    None
}

/// The prefix of every test's subjects and streams.
const PREFIX: &str = "mst";

/// Whether this process already removed the streams that killed test runs left behind.
static SWEPT: AtomicBool = AtomicBool::new(false);

/// Deletes test streams older than [`STALE_AFTER`](crate::STALE_AFTER); failures are ignored.
async fn delete_stale_streams(url: &str) {
    let Ok(client) = async_nats::connect(url).await else {
        return;
    };
    let js = async_nats::jetstream::new(client);
    let mut names = js.stream_names();
    let mut stale = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        if is_stale(&name, PREFIX) {
            stale.push(name);
        }
    }
    for name in stale {
        let _ = js.delete_stream(&name).await;
    }
}

impl TestNats {
    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This test's prefix: letters, digits and `_`, valid in subjects and stream names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A subject of this test's own: `{prefix}.{name}`.
    pub fn subject(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// A stream name of this test's own (deleted on drop): `{prefix}_{name}`.
    pub fn stream(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix)
    }

    /// A new client connection to the server.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached: the test cannot go on.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url))
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let url = self.url.clone();
        let prefix = self.prefix.clone();
        cleanup_blocking(&format!("NATS streams {prefix}_*"), move || async move {
            let client = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
            let js = async_nats::jetstream::new(client);
            let mut names = js.stream_names();
            let mut ours = Vec::new();
            while let Some(name) = names.next().await {
                let name = name.map_err(|e| e.to_string())?;
                if name.starts_with(&format!("{prefix}_")) {
                    ours.push(name);
                }
            }
            for name in ours {
                js.delete_stream(&name).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        });
    }
}
