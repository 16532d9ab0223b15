//! gRPC health (`grpc.health.v1.Health`, via `tonic-health`) driven by the same registry: a task
//! evaluates readiness periodically and sets `SERVING` / `NOT_SERVING` for the configured
//! service names, and `NOT_SERVING` as soon as shutdown begins.
//!
//! ```
//! use ms_health::{check_fn, CheckResult, GrpcHealthReporter, HealthRegistry};
//! use tonic_health::pb::{health_server::Health, HealthCheckRequest};
//! use tonic_health::server::{HealthReporter, HealthService};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = HealthRegistry::builder()
//!     .readiness("db", check_fn(|| async { CheckResult::pass() }))
//!     .build()?;
//! let reporter = HealthReporter::new();
//! // In a server: `Server::builder().add_service(HealthServer::new(service))`.
//! let service = HealthService::from_health_reporter(reporter.clone());
//!
//! let task = GrpcHealthReporter::new(registry.clone(), reporter)
//!     .service("shop.v1.Orders")
//!     .spawn();
//!
//! registry.begin_shutdown();
//! task.await?; // the task sets NOT_SERVING and ends once shutdown begins
//! let request = tonic::Request::new(HealthCheckRequest { service: "shop.v1.Orders".into() });
//! let status = service.check(request).await?.into_inner().status;
//! assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::registry::HealthRegistry;

/// How often the reporter evaluates readiness, unless configured otherwise.
///
/// Readiness results are cached per check ([`DEFAULT_CACHE_TTL`](crate::DEFAULT_CACHE_TTL)), so
/// polling more often than that only re-reads the cache; a few seconds keeps gRPC clients'
/// view within one Kubernetes probe period. Shutdown does not wait for the poll.
pub const DEFAULT_GRPC_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps a `tonic-health` [`HealthReporter`] in step with the registry's readiness.
///
/// The overall server status (service name `""`) is always reported; add the names of your
/// gRPC services with [`GrpcHealthReporter::service`] or [`GrpcHealthReporter::named_service`].
#[derive(Debug)]
pub struct GrpcHealthReporter {
    registry: HealthRegistry,
    reporter: HealthReporter,
    services: Vec<String>,
    interval: Duration,
}

impl GrpcHealthReporter {
    /// A reporter for the overall server status only, polling every
    /// [`DEFAULT_GRPC_POLL_INTERVAL`].
    pub fn new(registry: HealthRegistry, reporter: HealthReporter) -> Self {
        Self {
            registry,
            reporter,
            services: vec![String::new()],
            interval: DEFAULT_GRPC_POLL_INTERVAL,
        }
    }

    /// Also reports the status of the service named `name` (fully qualified, e.g.
    /// `"shop.v1.Orders"`).
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if !self.services.contains(&name) {
            self.services.push(name);
        }
        self
    }

    /// Also reports the status of the tonic service `S`, by its [`NamedService::NAME`].
    #[must_use]
    pub fn named_service<S: NamedService>(self) -> Self {
        self.service(S::NAME)
    }

    /// How often readiness is evaluated. A zero interval is raised to one millisecond, since a
    /// zero-period timer cannot exist.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Runs [`GrpcHealthReporter::run`] on a new task.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Sets every service to `NOT_SERVING`, then evaluates readiness now and every interval,
    /// setting `SERVING` or `NOT_SERVING`, until shutdown begins; then sets every service to
    /// `NOT_SERVING` and returns.
    pub async fn run(self) {
        // Until the first evaluation says otherwise the service is not known to be ready, and a
        // client asking meanwhile should hear NOT_SERVING rather than "service not registered".
        self.set_all(ServingStatus::NotServing).await;
        let mut last = Some(ServingStatus::NotServing);
        let shutdown = self.registry.shutdown_begun();
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = ticks.tick() => {
                    let status = if self.registry.readiness().await.is_healthy() {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    // Shutdown may have begun while the checks ran; never report SERVING after it.
                    if self.registry.is_shutting_down() {
                        break;
                    }
                    // Setting an unchanged status would wake every `Watch` stream for nothing.
                    if last != Some(status) {
                        self.set_all(status).await;
                        last = Some(status);
                    }
                }
            }
        }
        self.set_all(ServingStatus::NotServing).await;
    }

    async fn set_all(&self, status: ServingStatus) {
        tracing::debug!(%status, services = ?self.services, "setting gRPC serving status");
        for name in &self.services {
            self.reporter.set_service_status(name, status).await;
        }
    }
}
