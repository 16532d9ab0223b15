//! The projection runner: feeds a [`Projection`] from an [`EventLog`] or a bus subscription,
//! in batches, in parallel by partition key, with checkpoints committed with the read model.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_bus::Envelope;
//! use ms_cqrs::{ApplyContext, ApplyError, EventLog, Projection, ProjectionRunner};
//! use sqlx::{Sqlite, SqliteConnection};
//!
//! /// Invoice totals per customer.
//! struct Totals;
//!
//! impl Projection<Sqlite> for Totals {
//!     fn name(&self) -> &str { "totals" }
//!     fn event_types(&self) -> &[&str] { &["invoicing.invoice.created"] }
//!     fn tables(&self) -> &[&str] { &["totals"] }
//!
//!     async fn setup(&self, conn: &mut SqliteConnection, ctx: &ApplyContext) -> Result<(), ApplyError> {
//!         let sql = format!("CREATE TABLE IF NOT EXISTS {} (customer TEXT PRIMARY KEY, cents BIGINT NOT NULL)", ctx.table("totals"));
//!         sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn).await?;
//!         Ok(())
//!     }
//!
//!     async fn apply(&self, conn: &mut SqliteConnection, event: &Envelope, ctx: &ApplyContext) -> Result<(), ApplyError> {
//!         #[derive(serde::Deserialize)]
//!         struct Created { customer: String, cents: i64 }
//!         let created: Created = event.json_data()?; // a payload that does not fit is parked
//!         let sql = format!(
//!             "INSERT INTO {} (customer, cents) VALUES ($1, $2) \
//!              ON CONFLICT (customer) DO UPDATE SET cents = cents + excluded.cents",
//!             ctx.table("totals"));
//!         sqlx::query(sqlx::AssertSqlSafe(sql)).bind(created.customer).bind(created.cents).execute(conn).await?;
//!         Ok(())
//!     }
//! }
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let log = EventLog::<Sqlite>::default();
//! log.migrate(&pool).await?;
//! let mut tx = pool.begin().await?;
//! for (customer, cents) in [("acme", 1200), ("acme", 800), ("globex", 500)] {
//!     let event = Envelope::builder("invoicing.invoice.created", "/invoicing")
//!         .json_data(&serde_json::json!({ "customer": customer, "cents": cents }))?
//!         .build()?;
//!     log.append(&mut *tx, &[event]).await?;
//! }
//! tx.commit().await?;
//!
//! let runner = ProjectionRunner::from_log(pool.clone(), Totals, &log).start().await?;
//! runner.wait_until(3).await?; // read your writes: position 3 is applied
//! let acme: i64 = sqlx::query_scalar("SELECT cents FROM totals WHERE customer = 'acme'") // the view
//!     .fetch_one(&pool)
//!     .await?;
//! assert_eq!(acme, 2000);
//! runner.shutdown().await?;
//! # Ok(()) }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
//!
//! # How it works
//!
//! - **Segments.** Events are routed by partition key (the `partitionkey` extension, else the
//!   subject, else the id) to one of [`segments`](RunnerBuilder::segments) tasks (default 1).
//!   A key's events are applied in order by its segment; segments run in parallel, each in its
//!   own transactions (Axon's sequencing policy).
//! - **Batches.** A segment applies up to [`batch_size`](RunnerBuilder::batch_size) events
//!   (default 500) in one transaction, or what arrived within
//!   [`batch_timeout`](RunnerBuilder::batch_timeout) (default 20 ms), and stores its
//!   checkpoint in the same transaction. A crash between the read model and its checkpoint is
//!   impossible: they commit together.
//! - **Checkpoints never pass an unapplied event.** A segment's checkpoint is the position
//!   up to which every one of *its* events is applied; the runner's position is the lowest of
//!   them. The log's positions have no gaps (see [`EventLog`]), so "every event up to N" is
//!   exact.
//! - **Failures.** A failing batch is rolled back and re-run one event per transaction, so the
//!   failing event is found and the ones before it commit. The [`ErrorPolicy`] retries it
//!   with backoff, then parks it (and, by default, its key's later events, in order) in the
//!   dead-letter table, or stops the runner. A database that fails is waited for, however
//!   long; it never parks anything. Parked events are listed with
//!   [`ProjectionHandle::dead_letters`] and applied again, in order, with
//!   [`ProjectionHandle::replay`].
//! - **Bus sources** ([`ProjectionRunner::from_bus`]) have no positions. Exactly-once comes
//!   from the events: an event with a `sequence` extension (its 1-based number among its
//!   key's events, as ms-cqrs's write side stamps it) is applied only after the previous one
//!   of its key (an early one is delivered again a little later; a repeated one is settled
//!   without applying), with the key's last sequence stored in the same transaction. A
//!   bus-fed projection must therefore see each key from its first event; feed it from an
//!   event log to build it from history. An early event whose predecessor has not come after
//!   200 deliveries (about ten seconds) is handed to the error policy as a sequence gap,
//!   rather than redelivered forever. An event without a `sequence` is applied once per
//!   source and id (its [`dedup_key`](ms_bus::Envelope::dedup_key), as CloudEvents
//!   identifies events: the same id from two sources is two events), recorded in the `_seen`
//!   table in the same transaction. Rows written there before keys were source + id hold the
//!   bare id and still count (an event applied then is not applied again), until a rebuild
//!   starts a version of its own.
//! - **Rebuilds** ([`ProjectionHandle::rebuild`]) build the next version beside the live one
//!   from position 0, with [`ApplyContext::replaying`] set, no further than the live version
//!   has got; then the live version stops, the new one catches up with it, and readers'
//!   views switch to it in one transaction. Events the old version had applied count as
//!   replayed, later ones as live: each event's side effects happen once.
//!
//! [`ApplyContext::replaying`]: crate::ApplyContext::replaying

mod handle;
mod pipeline;
mod policy;
mod progress;
mod segment;
mod shared;
mod status;
mod supervise;

use std::sync::Arc;
use std::time::Duration;

use ms_bus::propagation::{Propagation, TraceContextPropagation};
use ms_bus::{Subscriber, Subscription};
use ms_outbox::TableName;

pub use handle::{ParkedEvent, ProjectionHandle, ProjectionMonitor};
pub use policy::{
    DEFAULT_MAX_RETRY_DELAY, DEFAULT_RETRIES, DEFAULT_RETRY_DELAY, ErrorPolicy, LastResort,
};
pub use status::{RunnerState, RunnerStatus};

use crate::event_log::EventLog;
use crate::store::{Store, Tables};
use crate::{Projection, ProjectionError};
use pipeline::Feed;
use shared::{Config, Shared};

/// The default number of segments (parallel key lanes).
pub const DEFAULT_SEGMENTS: u16 = 1;
/// The most segments a runner may have.
pub const MAX_SEGMENTS: u16 = 256;
/// The default number of events per transaction.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// The default longest wait for a batch to fill.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_millis(20);
/// The default interval at which an idle runner looks at its event log again.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The default prefix of the runner's tables (`ms_cqrs_projections`, `ms_cqrs_checkpoints`,
/// `ms_cqrs_dead_letters`, `ms_cqrs_key_sequences`, `ms_cqrs_seen`).
pub const DEFAULT_TABLE_PREFIX: &str = "ms_cqrs";

/// Starts projection runners; see the [module docs](self).
#[derive(Debug)]
pub struct ProjectionRunner;

impl ProjectionRunner {
    /// A runner that feeds `projection` from an event log.
    pub fn from_log<DB: Store, P: Projection<DB>>(
        pool: sqlx::Pool<DB>,
        projection: P,
        log: &EventLog<DB>,
    ) -> RunnerBuilder<DB, P> {
        RunnerBuilder::new(pool, projection, Feed::Log(log.clone()))
    }

    /// A runner that feeds `projection` from a bus subscription (a consumer group of a topic,
    /// or a command destination).
    pub fn from_bus<DB: Store, P: Projection<DB>>(
        pool: sqlx::Pool<DB>,
        projection: P,
        subscriber: Arc<dyn Subscriber>,
        subscription: Subscription,
    ) -> RunnerBuilder<DB, P> {
        RunnerBuilder::new(pool, projection, Feed::Bus(subscriber, subscription))
    }
}

/// Configures a runner; [`start`](Self::start) starts it.
pub struct RunnerBuilder<DB: Store, P> {
    pool: sqlx::Pool<DB>,
    projection: P,
    feed: Feed<DB>,
    config: Config,
    prefix: Option<TableName>,
    propagation: Arc<dyn Propagation>,
}

impl<DB: Store, P: Projection<DB>> RunnerBuilder<DB, P> {
    fn new(pool: sqlx::Pool<DB>, projection: P, feed: Feed<DB>) -> Self {
        Self {
            pool,
            projection,
            feed,
            config: Config {
                segments: DEFAULT_SEGMENTS,
                batch_size: DEFAULT_BATCH_SIZE,
                batch_timeout: DEFAULT_BATCH_TIMEOUT,
                poll_interval: DEFAULT_POLL_INTERVAL,
                policy: ErrorPolicy::default(),
            },
            prefix: None,
            propagation: Arc::new(TraceContextPropagation::default()),
        }
    }

    /// Parallel key lanes (default [`DEFAULT_SEGMENTS`], at most [`MAX_SEGMENTS`]). A
    /// log-fed read model keeps a checkpoint per segment, so the number is fixed for a version
    /// of it: change it with a rebuild. A bus-fed one keeps its state per key and may change
    /// it at any start.
    #[must_use]
    pub fn segments(mut self, segments: u16) -> Self {
        self.config.segments = segments.clamp(1, MAX_SEGMENTS);
        self
    }

    /// Events per transaction (default [`DEFAULT_BATCH_SIZE`]; 1 stores a checkpoint per
    /// event).
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.config.batch_size = batch_size.max(1);
        self
    }

    /// The longest wait for a batch to fill (default [`DEFAULT_BATCH_TIMEOUT`]). A log
    /// runner that has read everything does not wait.
    #[must_use]
    pub fn batch_timeout(mut self, timeout: Duration) -> Self {
        self.config.batch_timeout = timeout;
        self
    }

    /// How often an idle log runner looks for new events (default [`DEFAULT_POLL_INTERVAL`]).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// What happens when an event cannot be applied (default: [`ErrorPolicy::park_key`]).
    #[must_use]
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// How each event's trace context and correlation ID are made current while it is
    /// applied (default: ms-bus's [`TraceContextPropagation`]: a consumer span whose parent is
    /// the event's `traceparent`, and its correlation ID).
    #[must_use]
    pub fn propagation(mut self, propagation: Arc<dyn Propagation>) -> Self {
        self.propagation = propagation;
        self
    }

    /// The prefix of the runner's own tables (default [`DEFAULT_TABLE_PREFIX`]).
    #[must_use]
    pub fn table_prefix(mut self, prefix: TableName) -> Self {
        self.prefix = Some(prefix);
        self
    }

    /// Creates the runner's tables if needed, sets up the live version of the read model
    /// (version 1 the first time) and its views, and starts feeding it from its checkpoints.
    pub async fn start(self) -> Result<ProjectionHandle<DB, P>, ProjectionError> {
        let prefix = match self.prefix {
            Some(prefix) => prefix,
            None => TableName::new(DEFAULT_TABLE_PREFIX)?,
        };
        for table in self.projection.tables() {
            TableName::new(table)?;
        }
        let shared = Arc::new(Shared {
            name: self.projection.name().into(),
            pool: self.pool,
            projection: Arc::new(self.projection),
            tables: Tables::new(&prefix),
            config: self.config,
            propagation: self.propagation,
        });
        handle::start(shared, self.feed).await
    }
}
