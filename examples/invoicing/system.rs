//! Starts the four services, each on its own loopback port with its own database, and stops
//! them gracefully: readiness fails first, the servers drain, then consumers and relays stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ms_bus::consumer::ConsumerHandle;
use ms_bus::{Envelope, EventPublisher as _};
use ms_health::{CheckOptions, CheckResult, HealthRegistry, Latch, check_fn};
use ms_outbox::{Relay, RelayHandle, ScheduledMessage};
use ms_tracing::{CorrelationIdLayer, ServerTraceLayer};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::bff::Bff;
use crate::bus::{self, SharedBus};
use crate::config::Config;
use crate::db::{Db, with_db};
use crate::gateway::{self, Gateway};
use crate::invoicing_service::{
    CUSTOMER_TOPIC, CustomerRegistered, Invoicing, TENANT_TOPIC, TenantChanged, TimerEvent, Workers,
};
use crate::payments::{self, Payments};
use crate::reporting::{Reporting, Runners};
use crate::{Error, trace_tree};

/// Where each service listens.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    /// The public gateway (REST).
    pub gateway: SocketAddr,
    /// The invoicing service (internal REST).
    pub invoicing: SocketAddr,
    /// The payments service's health probes (HTTP).
    pub payments_http: SocketAddr,
    /// The payments service's gRPC API and gRPC health.
    pub payments_grpc: SocketAddr,
    /// The reporting service (internal REST).
    pub reporting: SocketAddr,
}

/// The running system.
pub struct System {
    addresses: Addresses,
    database: String,
    bus_kind: String,
    bus: SharedBus,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<Result<(), std::io::Error>>>,
    registries: Vec<HealthRegistry>,
    relays: Vec<RelayHandle>,
    consumers: Vec<ConsumerHandle>,
    projections: Runners,
    invoicing: Arc<Invoicing>,
    payments: Arc<Payments>,
    payments_registry: HealthRegistry,
    payments_running: Mutex<Option<payments::Running>>,
    payments_up: Arc<std::sync::atomic::AtomicBool>,
    bff: Arc<Bff>,
    dbs: Vec<Db>,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("addresses", &self.addresses)
            .field("database", &self.database)
            .field("bus", &self.bus_kind)
            .finish_non_exhaustive()
    }
}

/// The tenants and customers the customers context announces at start.
const TENANTS: &[(&str, bool)] = &[("t-acme", true), ("t-globex", false)];
const CUSTOMERS: &[(&str, &str, &str)] = &[
    ("c-coyote", "t-acme", "Wile E. Coyote"),
    ("c-runner", "t-acme", "Road Runner Rentals"),
    ("c-scorpio", "t-globex", "Hank Scorpio"),
];

impl System {
    /// Starts every service on the configured infrastructure.
    pub async fn start(config: Config) -> Result<Self, Error> {
        trace_tree::install();
        let (dir, dbs) = open_databases(&config).await?;
        let [invoicing_db, payments_db, reporting_db] = dbs.clone();
        invoicing_db.migrate(crate::invoicing_service::DDL).await?;
        invoicing_db
            .upgrade_postgres(crate::invoicing_service::POSTGRES_UPGRADE)
            .await?;
        payments_db.migrate(payments::DDL).await?;
        reporting_db.migrate(crate::reporting::DDL).await?;
        let migrated = Latch::new();
        migrated.set();

        let connected = bus::connect(&config).await?;
        let bus = connected.bus.clone();
        let (stop, _) = watch::channel(false);
        let mut system_servers = Vec::new();
        let mut registries = Vec::new();

        // Consumers subscribe before any relay publishes, so no event finds its group missing.
        let reporting = Reporting::new(reporting_db.clone());
        let projections = reporting.start(&bus).await?;
        let monitors = projections.monitors();
        let invoicing = Invoicing::new(invoicing_db.clone());
        let Workers {
            consumers: invoicing_consumers,
        } = invoicing.start_workers(&bus).await?;
        let relays = vec![relay(&invoicing_db, &bus), relay(&payments_db, &bus)];

        // Reporting.
        let registry = base_registry(&config, &reporting_db, &migrated, connected.check.clone())
            .readiness("projection-invoices", monitors[0].check())
            .readiness("projection-payments", monitors[1].check())
            .build()?;
        let reporting_addr =
            serve(reporting.router(), &registry, &stop, &mut system_servers).await?;
        registries.push(registry);

        // Invoicing.
        let registry = base_registry(&config, &invoicing_db, &migrated, connected.check.clone())
            .readiness("outbox-relay", relays[0].check())
            .readiness("customer-directory", invoicing_consumers[0].check())
            .readiness("payment-results", invoicing_consumers[2].check())
            .build()?;
        let invoicing_addr =
            serve(invoicing.router(), &registry, &stop, &mut system_servers).await?;
        registries.push(registry);
        let consumers = invoicing_consumers;

        // Payments: HTTP probes on one port, gRPC (API and health) on another.
        let payments_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let payments_registry =
            base_registry(&config, &payments_db, &migrated, connected.check.clone())
                .readiness("outbox-relay", relays[1].check())
                .readiness("charge-consumer", running_check(payments_up.clone()))
                .build()?;
        let payments_http = serve(
            Router::new(),
            &payments_registry,
            &stop,
            &mut system_servers,
        )
        .await?;
        let payments = Payments::new(payments_db.clone());
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await?;
        let payments_grpc = payments::local(&grpc_listener)?;
        let running = payments
            .start(&bus, grpc_listener, &payments_registry)
            .await?;
        payments_up.store(true, std::sync::atomic::Ordering::Release);

        let (gateway_addr, bff, registry) = start_gateway(
            &config,
            (invoicing_addr, reporting_addr, payments_grpc),
            &stop,
            &mut system_servers,
        )
        .await?;
        registries.push(registry);

        let system = Self {
            addresses: Addresses {
                gateway: gateway_addr,
                invoicing: invoicing_addr,
                payments_http,
                payments_grpc,
                reporting: reporting_addr,
            },
            database: invoicing_db.kind().to_owned(),
            bus_kind: connected.kind,
            bus,
            stop,
            servers: system_servers,
            registries,
            relays,
            consumers,
            projections,
            invoicing,
            payments,
            payments_registry,
            payments_running: Mutex::new(Some(running)),
            payments_up,
            bff,
            dbs: dbs.to_vec(),
            _dir: dir,
        };
        system.announce_customers().await?;
        Ok(system)
    }

    /// What invoicing's timers did so far, in order: overdue messages delivered, charges
    /// retried, charges given up.
    pub fn timer_log(&self) -> Vec<TimerEvent> {
        self.invoicing.timer_log()
    }

    /// The messages invoicing has scheduled and that are not yet due, earliest first: all of
    /// them, or those of one invoice (`Outbox::scheduled`).
    pub async fn scheduled(&self, invoice: Option<&str>) -> Result<Vec<ScheduledMessage>, Error> {
        self.invoicing.scheduled(invoice).await
    }

    /// Where each service listens.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// "SQLite" or "PostgreSQL".
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The bus's name.
    pub fn bus(&self) -> &str {
        &self.bus_kind
    }

    /// The state of the BFF's breaker in front of payments.
    pub fn payments_breaker(&self) -> String {
        format!("{:?}", self.bff.breaker().state())
    }

    /// The customers context's announcements: tenants (one suspended) and their customers.
    /// Invoicing keeps its own copy from these events.
    async fn announce_customers(&self) -> Result<(), Error> {
        for (tenant, active) in TENANTS {
            let ty = if *active {
                "customers.tenant.activated"
            } else {
                "customers.tenant.suspended"
            };
            let event = Envelope::builder(ty, "/customers")
                .subject(*tenant)
                .json_data(&TenantChanged {
                    tenant_id: (*tenant).to_owned(),
                })?
                .build()?;
            self.bus.publish(TENANT_TOPIC, &event).await?;
        }
        for (customer, tenant, name) in CUSTOMERS {
            let event = Envelope::builder("customers.customer.registered", "/customers")
                .subject(*customer)
                .json_data(&CustomerRegistered {
                    customer_id: (*customer).to_owned(),
                    tenant_id: (*tenant).to_owned(),
                    name: (*name).to_owned(),
                })?
                .build()?;
            self.bus.publish(CUSTOMER_TOPIC, &event).await?;
        }
        Ok(())
    }

    /// Stops payments (its gRPC server and its charge consumer), as an outage would.
    pub async fn stop_payments(&self) -> Result<(), Error> {
        self.payments_up
            .store(false, std::sync::atomic::Ordering::Release);
        if let Some(running) = self.payments_running.lock().await.take() {
            running.stop().await?;
        }
        Ok(())
    }

    /// Starts payments again on the same gRPC port.
    pub async fn start_payments(&self) -> Result<(), Error> {
        let mut running = self.payments_running.lock().await;
        if running.is_none() {
            let listener = TcpListener::bind(self.addresses.payments_grpc).await?;
            *running = Some(
                self.payments
                    .start(&self.bus, listener, &self.payments_registry)
                    .await?,
            );
            self.payments_up
                .store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    /// Graceful shutdown: every service fails readiness, keeps serving for the drain delay,
    /// then its server stops taking connections and finishes the requests in flight; then
    /// the consumers finish their messages, the relays stop, the pools close.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        for server in self.servers {
            server.await.map_err(|e| Error::Config(e.to_string()))??;
        }
        if let Some(running) = self.payments_running.into_inner() {
            running.stop().await?;
        }
        for consumer in self.consumers {
            consumer.shutdown().await?;
        }
        self.projections.shutdown().await?;
        for relay in self.relays {
            relay.shutdown().await?;
        }
        for db in &self.dbs {
            db.close().await;
        }
        drop(self.registries);
        Ok(())
    }
}

/// The gateway and its BFF, in front of invoicing, reporting and payments' gRPC API.
async fn start_gateway(
    config: &Config,
    (invoicing_addr, reporting_addr, payments_grpc): (SocketAddr, SocketAddr, SocketAddr),
    stop: &watch::Sender<bool>,
    servers: &mut Vec<JoinHandle<Result<(), std::io::Error>>>,
) -> Result<(SocketAddr, Arc<Bff>, HealthRegistry), Error> {
    let http = crate::http::client();
    let bff = Bff::new(
        http.clone(),
        format!("http://{invoicing_addr}"),
        format!("http://{reporting_addr}"),
        &format!("http://{payments_grpc}"),
    )?;
    let gateway = Arc::new(Gateway {
        http: http.clone(),
        invoicing: format!("http://{invoicing_addr}"),
        reporting: format!("http://{reporting_addr}"),
        bff: bff.clone(),
    });
    let registry = gateway_registry(config, http, invoicing_addr, reporting_addr)?;
    let addr = serve(gateway::router(gateway, config), &registry, stop, servers).await?;
    Ok((addr, bff, registry))
}

async fn open_databases(config: &Config) -> Result<(Option<tempfile::TempDir>, [Db; 3]), Error> {
    match &config.database_url {
        Some(url) => Ok((
            None,
            [
                Db::postgres(url, "invoicing").await?,
                Db::postgres(url, "payments").await?,
                Db::postgres(url, "reporting").await?,
            ],
        )),
        None => {
            let dir = tempfile::Builder::new().prefix("ms-invoicing-").tempdir()?;
            let dbs = [
                Db::sqlite(dir.path(), "invoicing").await?,
                Db::sqlite(dir.path(), "payments").await?,
                Db::sqlite(dir.path(), "reporting").await?,
            ];
            Ok((Some(dir), dbs))
        }
    }
}

fn relay(db: &Db, bus: &SharedBus) -> RelayHandle {
    with_db!(db, |parts| {
        Relay::builder(&parts.outbox, &parts.pool, bus.clone())
            .poll_interval(Duration::from_millis(20))
            .build()
            .spawn()
    })
}

/// A service's health registry with what every service checks: its database, its migrations
/// (startup), the broker connection.
fn base_registry(
    config: &Config,
    db: &Db,
    migrated: &Latch,
    bus: Option<Arc<dyn ms_health::Check>>,
) -> ms_health::HealthRegistryBuilder {
    let mut builder = HealthRegistry::builder()
        .drain_delay(config.drain_delay)
        .details(ms_health::Details::OnRequest)
        .readiness("database", db.check())
        .startup("migrations", migrated.clone());
    if let Some(bus) = bus {
        builder = builder.readiness("broker", bus);
    }
    builder
}

/// Fails while `up` is false (payments stopped by `--chaos`).
fn running_check(up: Arc<std::sync::atomic::AtomicBool>) -> impl ms_health::Check {
    check_fn(move || {
        let up = up.load(std::sync::atomic::Ordering::Acquire);
        async move {
            if up {
                CheckResult::pass()
            } else {
                CheckResult::fail("stopped")
            }
        }
    })
}

/// The gateway is ready when the services it routes to are; payments is optional (the
/// dashboard degrades without it).
fn gateway_registry(
    config: &Config,
    http: crate::http::HttpClient,
    invoicing: SocketAddr,
    reporting: SocketAddr,
) -> Result<HealthRegistry, Error> {
    let backend = move |addr: SocketAddr| {
        let http = http.clone();
        check_fn(move || {
            let http = http.clone();
            async move {
                let url = format!("http://{addr}/readyz");
                match crate::http::json_request(http::Method::GET, &url, None) {
                    Ok(request) => match crate::http::send(&http, request).await {
                        Ok(reply) if reply.status.is_success() => CheckResult::pass(),
                        Ok(reply) => CheckResult::fail(format!("{url} answered {}", reply.status)),
                        Err(error) => CheckResult::fail(error.to_string()),
                    },
                    Err(error) => CheckResult::fail(error.to_string()),
                }
            }
        })
    };
    Ok(HealthRegistry::builder()
        .drain_delay(config.drain_delay)
        .details(ms_health::Details::OnRequest)
        .register("invoicing", backend(invoicing), CheckOptions::readiness())
        .register(
            "reporting",
            backend(reporting),
            CheckOptions::readiness().non_critical(),
        )
        .startup("routes", {
            let latch = Latch::new();
            latch.set();
            latch
        })
        .build()?)
}

/// Serves `routes` and the health probes on a new loopback port, with correlation IDs and
/// server spans; stops gracefully when `stop` turns true.
async fn serve(
    routes: Router,
    registry: &HealthRegistry,
    stop: &watch::Sender<bool>,
    servers: &mut Vec<JoinHandle<Result<(), std::io::Error>>>,
) -> Result<SocketAddr, Error> {
    let app = routes
        .merge(ms_health::router(registry.clone()))
        .merge(crate::metrics::router())
        .layer(axum::middleware::from_fn(crate::http::access_log))
        .layer(ServerTraceLayer::new().skip_path(crate::metrics::METRICS_PATH))
        .layer(CorrelationIdLayer::new());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut stopped = stop.subscribe();
    let shutdown = registry.shutdown_on(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    servers.push(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }));
    Ok(addr)
}
