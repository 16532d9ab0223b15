//! Starting services with testcontainers, where a Docker engine runs.
//!
//! The project's machines have no Docker engine: this module compiles there but has never run
//! there. Each service gets one container per test binary, started on first use by a thread
//! that owns it for the rest of the process (its own runtime, so no test's runtime shutting
//! down can stop it); testcontainers' reaper removes it when the process ends.

use std::sync::OnceLock;
use std::sync::mpsc;

use testcontainers_modules::nats::NatsServerCmd;
use testcontainers_modules::testcontainers::runners::AsyncRunner as _;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt as _};
use testcontainers_modules::{nats::Nats, postgres::Postgres, rabbitmq::RabbitMq};

static POSTGRES: OnceLock<Option<String>> = OnceLock::new();
static NATS: OnceLock<Option<String>> = OnceLock::new();
static AMQP: OnceLock<Option<(String, String)>> = OnceLock::new();
static KAFKA: OnceLock<Option<String>> = OnceLock::new();

pub(crate) fn postgres_url() -> Option<String> {
    POSTGRES
        .get_or_init(|| {
            hold_container("PostgreSQL", async {
                let node = Postgres::default()
                    .start()
                    .await
                    .map_err(|e| e.to_string())?;
                let port = node
                    .get_host_port_ipv4(5432)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((
                    node,
                    format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres"),
                ))
            })
        })
        .clone()
}

pub(crate) fn nats_url() -> Option<String> {
    NATS.get_or_init(|| {
        hold_container("NATS", async {
            let node = Nats::default()
                .with_cmd(&NatsServerCmd::default().with_jetstream())
                .start()
                .await
                .map_err(|e| e.to_string())?;
            let port = node
                .get_host_port_ipv4(4222)
                .await
                .map_err(|e| e.to_string())?;
            Ok((node, format!("nats://127.0.0.1:{port}")))
        })
    })
    .clone()
}

pub(crate) fn amqp_urls() -> Option<(String, String)> {
    AMQP.get_or_init(|| {
        hold_container("RabbitMQ", async {
            let node = RabbitMq::default()
                .start()
                .await
                .map_err(|e| e.to_string())?;
            let amqp = node
                .get_host_port_ipv4(5672)
                .await
                .map_err(|e| e.to_string())?;
            let http = node
                .get_host_port_ipv4(15672)
                .await
                .map_err(|e| e.to_string())?;
            Ok((
                node,
                (
                    format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
                    format!("http://guest:guest@127.0.0.1:{http}"),
                ),
            ))
        })
    })
    .clone()
}

/// `apache/kafka` (`KRaft`, one node), as `bootstrap.servers`.
pub(crate) fn kafka_servers() -> Option<String> {
    KAFKA
        .get_or_init(|| {
            hold_container("Kafka", async {
                let node = testcontainers_modules::kafka::apache::Kafka::default()
                    .start()
                    .await
                    .map_err(|e| e.to_string())?;
                let port = node
                    .get_host_port_ipv4(testcontainers_modules::kafka::apache::KAFKA_PORT)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((node, format!("127.0.0.1:{port}")))
            })
        })
        .clone()
}

/// Starts a container on a thread of its own and parks that thread, holding the container,
/// for the rest of the process. Returns what the start produced, or `None` when it failed.
fn hold_container<I, T, F>(what: &'static str, start: F) -> Option<T>
where
    I: testcontainers_modules::testcontainers::Image + 'static,
    T: Send + 'static,
    F: std::future::Future<Output = Result<(ContainerAsync<I>, T), String>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("ms-testkit-{what}-container"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                match start.await {
                    Ok((container, value)) => {
                        let _ = tx.send(Ok(value));
                        // Keep the container (and the runtime its handle needs) alive.
                        let _container = container;
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        });
    if spawned.is_err() {
        return None;
    }
    match rx.recv() {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("ms-testkit: testcontainers could not start {what}: {e}\n").as_bytes(),
            );
            None
        }
        Err(_) => None,
    }
}
