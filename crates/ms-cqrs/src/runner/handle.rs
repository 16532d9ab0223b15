//! The handle of a running projection: status, read-your-writes, dead letters, rebuilds.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ms_bus::Envelope;
use ms_outbox::TableName;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::pipeline::{Feed, Pipeline};
use super::progress::{ALL_REPLAY, NO_REPLAY, Progress};
use super::segment::Control;
use super::shared::Shared;
use super::status::{RunnerState, RunnerStatus};
use crate::event_log::Appended;
use crate::projection::{ApplyContext, versioned};
use crate::store::{Registration, Store, from_micros};
use crate::{Projection, ProjectionError};

/// How often waiting calls look again when nothing told them to.
const RECHECK: Duration = Duration::from_millis(50);

/// What status readers see: the live pipeline's progress, and a rebuild's.
struct View {
    version: i32,
    live: Arc<Progress>,
    rebuilding: Option<(i32, Arc<Progress>)>,
}

struct Inner<DB: Store, P> {
    shared: Arc<Shared<DB, P>>,
    feed: Feed<DB>,
    live: tokio::sync::Mutex<Option<Pipeline>>,
    rebuild: tokio::sync::Mutex<()>,
    view: Arc<Mutex<View>>,
}

/// A running projection. Cheap to clone; the runner stops with
/// [`shutdown`](Self::shutdown) (dropping every handle leaves it running until the runtime
/// ends).
pub struct ProjectionHandle<DB: Store, P> {
    inner: Arc<Inner<DB, P>>,
}

impl<DB: Store, P> Clone for ProjectionHandle<DB, P> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// A cheap, type-erased view of a runner's status, for health checks and dashboards.
#[derive(Clone)]
pub struct ProjectionMonitor {
    name: Arc<str>,
    view: Arc<Mutex<View>>,
}

impl std::fmt::Debug for ProjectionMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionMonitor")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ProjectionMonitor {
    /// The runner's status now.
    pub fn status(&self) -> RunnerStatus {
        let (version, live, rebuilding) = match self.view.lock() {
            Ok(view) => (
                view.version,
                Arc::clone(&view.live),
                view.rebuilding.as_ref().map(|(v, p)| (*v, Arc::clone(p))),
            ),
            Err(poisoned) => {
                let view = poisoned.into_inner();
                (view.version, Arc::clone(&view.live), None)
            }
        };
        let position = live.position();
        RunnerStatus {
            name: self.name.to_string(),
            version,
            state: live.current_state(),
            position,
            head: live.head.load(Ordering::Acquire).max(position),
            oldest_pending_at: live.oldest_pending().map(from_micros),
            applied: live.applied.load(Ordering::Relaxed),
            skipped: live.skipped.load(Ordering::Relaxed),
            parked: live.parked.load(Ordering::Relaxed),
            out_of_order: live.out_of_order.load(Ordering::Relaxed),
            last_error: live.last_error(),
            rebuilding: rebuilding.map(|(v, p)| (v, p.position())),
        }
    }

    fn live(&self) -> Arc<Progress> {
        match self.view.lock() {
            Ok(view) => Arc::clone(&view.live),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().live),
        }
    }
}

/// An event the runner parked, with why.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ParkedEvent {
    /// The dead letter's id.
    pub id: i64,
    /// The read model version it was parked by.
    pub version: i32,
    /// Its partition key.
    pub key: String,
    /// Its log position (log sources).
    pub position: Option<i64>,
    /// The envelope, or `None` when the stored one does not decode (then `raw` holds it).
    pub envelope: Option<Envelope>,
    /// The stored envelope text.
    pub raw: String,
    /// The error, or why it waits (blocked behind an earlier parked event of its key).
    pub error: String,
    /// Whether it was parked only because an earlier event of its key was.
    pub blocked: bool,
    /// The retries spent on it.
    pub attempts: i32,
    /// When it was parked.
    pub parked_at: OffsetDateTime,
}

pub(super) async fn start<DB: Store, P: Projection<DB>>(
    shared: Arc<Shared<DB, P>>,
    feed: Feed<DB>,
) -> Result<ProjectionHandle<DB, P>, ProjectionError> {
    DB::migrate_runner(&shared.pool, &shared.tables).await?;
    let segments = i32::from(shared.config.segments);
    let mut tx = shared.pool.begin().await?;
    let version = match DB::registration(&mut tx, &shared.tables, &shared.name).await? {
        // Log checkpoints are per segment; a bus source's state is per key, so its segments
        // may change freely.
        Some(registration) if registration.segments != segments && matches!(feed, Feed::Log(_)) => {
            return Err(ProjectionError::SegmentsChanged {
                name: shared.name.to_string(),
                stored: u16::try_from(registration.segments).unwrap_or(0),
                configured: shared.config.segments,
            });
        }
        Some(registration) => {
            if registration.segments != segments {
                let registration = Registration {
                    segments,
                    ..registration
                };
                DB::register(&mut tx, &shared.tables, &shared.name, registration).await?;
            }
            registration.live_version
        }
        None => {
            let registration = Registration {
                live_version: 1,
                segments,
            };
            DB::register(&mut tx, &shared.tables, &shared.name, registration).await?;
            1
        }
    };
    setup(&shared, &mut tx, version).await?;
    switch_views(&shared, &mut tx, version).await?;
    tx.commit().await?;

    let pipeline = Pipeline::start(&shared, &feed, version, NO_REPLAY).await?;
    let view = Arc::new(Mutex::new(View {
        version,
        live: Arc::clone(&pipeline.progress),
        rebuilding: None,
    }));
    Ok(ProjectionHandle {
        inner: Arc::new(Inner {
            shared,
            feed,
            live: tokio::sync::Mutex::new(Some(pipeline)),
            rebuild: tokio::sync::Mutex::new(()),
            view,
        }),
    })
}

async fn setup<DB: Store, P: Projection<DB>>(
    shared: &Shared<DB, P>,
    conn: &mut DB::Connection,
    version: i32,
) -> Result<(), ProjectionError> {
    let ctx = ApplyContext::new(
        Arc::clone(&shared.name),
        version,
        shared.projection.tables(),
    );
    shared
        .projection
        .setup(conn, &ctx)
        .await
        .map_err(|source| ProjectionError::Setup {
            name: shared.name.to_string(),
            version,
            source,
        })
}

/// Points each view at `version`'s table, in the caller's transaction.
async fn switch_views<DB: Store, P: Projection<DB>>(
    shared: &Shared<DB, P>,
    conn: &mut DB::Connection,
    version: i32,
) -> Result<(), ProjectionError> {
    for base in shared.projection.tables() {
        let view = TableName::new(base)?.quoted();
        let table = TableName::new(&versioned(base, version))?.quoted();
        DB::execute_ddl(
            conn,
            format!("DROP VIEW IF EXISTS {view}; CREATE VIEW {view} AS SELECT * FROM {table}"),
        )
        .await?;
    }
    Ok(())
}

impl<DB: Store, P: Projection<DB>> ProjectionHandle<DB, P> {
    /// The runner's status now.
    pub fn status(&self) -> RunnerStatus {
        self.monitor().status()
    }

    /// A type-erased status view for health checks.
    pub fn monitor(&self) -> ProjectionMonitor {
        ProjectionMonitor {
            name: Arc::clone(&self.inner.shared.name),
            view: Arc::clone(&self.inner.view),
        }
    }

    /// Waits until every event up to log `position` is applied to the live read model (read
    /// your own writes). Fails if the runner stops first.
    pub async fn wait_until(&self, position: i64) -> Result<(), ProjectionError> {
        if matches!(self.inner.feed, Feed::Bus(..)) {
            return Err(ProjectionError::NoPositions(
                self.inner.shared.name.to_string(),
            ));
        }
        let monitor = self.monitor();
        loop {
            let live = monitor.live();
            if live.position() >= position {
                return Ok(());
            }
            match live.state() {
                RunnerState::Failed(reason) => return Err(self.stopped(reason)),
                RunnerState::Stopped => {
                    // A rebuild stops the old version and holds the pipeline slot while it
                    // switches: wait for the new one. Only a shut-down runner has none.
                    if let Ok(live) = self.inner.live.try_lock()
                        && live.is_none()
                    {
                        return Err(self.stopped("shut down".to_owned()));
                    }
                }
                _ => {}
            }
            let mut changes = live.subscribe_position();
            let _ = tokio::time::timeout(RECHECK, changes.changed()).await;
        }
    }

    /// Waits until an appended event is applied: [`wait_until`](Self::wait_until) its
    /// position, once the log has given it one. Log sources only.
    pub async fn wait_for(&self, appended: Appended) -> Result<(), ProjectionError> {
        let Feed::Log(log) = &self.inner.feed else {
            return Err(ProjectionError::NoPositions(
                self.inner.shared.name.to_string(),
            ));
        };
        loop {
            if let Some(position) = log.position_of(&self.inner.shared.pool, appended).await? {
                return self.wait_until(position).await;
            }
            if let RunnerState::Failed(reason) = self.monitor().live().state() {
                return Err(self.stopped(reason));
            }
            tokio::time::sleep(RECHECK).await;
        }
    }

    fn stopped(&self, reason: String) -> ProjectionError {
        ProjectionError::Stopped {
            name: self.inner.shared.name.to_string(),
            reason,
        }
    }

    /// The parked events of the live version, oldest first.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<ParkedEvent>, ProjectionError> {
        let version = self.status().version;
        let shared = &self.inner.shared;
        let mut conn = shared.pool.acquire().await?;
        let rows = DB::parked(
            &mut conn,
            &shared.tables,
            &shared.name,
            version,
            None,
            i64::from(limit),
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| ParkedEvent {
                id: row.id,
                version: row.version,
                key: row.key,
                position: row.position,
                envelope: ms_bus::codec::from_json(row.envelope.as_bytes()).ok(),
                raw: row.envelope,
                error: row.error,
                blocked: row.blocked,
                attempts: row.attempts,
                parked_at: from_micros(row.parked_at),
            })
            .collect())
    }

    /// Applies the parked events of `key` again, in order, in one transaction, and unblocks
    /// the key; returns how many. If one fails again, nothing changes and the error says why.
    pub async fn replay(&self, key: &str) -> Result<u64, ProjectionError> {
        let (reply, answer) = oneshot::channel();
        self.control(
            key,
            Control::Replay {
                key: key.to_owned(),
                reply,
            },
            answer,
        )
        .await
    }

    /// Deletes the parked events of `key` without applying them, and unblocks the key.
    pub async fn discard(&self, key: &str) -> Result<u64, ProjectionError> {
        let (reply, answer) = oneshot::channel();
        self.control(
            key,
            Control::Discard {
                key: key.to_owned(),
                reply,
            },
            answer,
        )
        .await
    }

    async fn control(
        &self,
        key: &str,
        control: Control,
        answer: oneshot::Receiver<Result<u64, ProjectionError>>,
    ) -> Result<u64, ProjectionError> {
        {
            let live = self.inner.live.lock().await;
            let pipeline = live
                .as_ref()
                .ok_or_else(|| self.stopped("shut down".to_owned()))?;
            if !pipeline.control(key, control).await {
                return Err(self.stopped("the runner has stopped".to_owned()));
            }
        }
        answer
            .await
            .map_err(|_| self.stopped("the runner has stopped".to_owned()))?
    }

    /// Rebuilds the read model: builds the next version beside the live one from the start of
    /// the log, then switches readers to it (see the [module docs](super)). Returns the new
    /// version once it is live. The old version's tables stay until
    /// [`drop_version`](Self::drop_version).
    pub async fn rebuild(&self) -> Result<i32, ProjectionError> {
        let shared = &self.inner.shared;
        if matches!(self.inner.feed, Feed::Bus(..)) {
            return Err(ProjectionError::NotReplayable(shared.name.to_string()));
        }
        let Ok(_rebuilding) = self.inner.rebuild.try_lock() else {
            return Err(ProjectionError::RebuildInProgress(shared.name.to_string()));
        };
        // The switch needs the live version running: it hands over where that one stopped.
        if self.inner.live.lock().await.is_none() {
            return Err(self.stopped("shut down".to_owned()));
        }
        let old_version = self.status().version;
        let version = old_version + 1;
        let mut tx = shared.pool.begin().await?;
        drop_tables(shared, &mut tx, version).await?;
        DB::forget_version(&mut tx, &shared.tables, &shared.name, version).await?;
        setup(shared, &mut tx, version).await?;
        tx.commit().await?;

        let new = Pipeline::start(shared, &self.inner.feed, version, ALL_REPLAY).await?;
        if let Ok(mut view) = self.inner.view.lock() {
            view.rebuilding = Some((version, Arc::clone(&new.progress)));
        }
        let result = self.catch_up_and_switch(&new, version).await;
        if let Err(e) = result {
            new.shutdown().await;
            if let Ok(mut view) = self.inner.view.lock() {
                view.rebuilding = None;
            }
            return Err(e);
        }
        let old = self.inner.live.lock().await.replace(new);
        if let Some(old) = old {
            old.shutdown().await;
        }
        Ok(version)
    }

    async fn catch_up_and_switch(
        &self,
        new: &Pipeline,
        version: i32,
    ) -> Result<(), ProjectionError> {
        let shared = &self.inner.shared;
        // Follow the live version, never ahead of it.
        loop {
            let live = self.monitor().live();
            if let RunnerState::Failed(reason) = new.progress.state() {
                return Err(self.stopped(format!("the rebuild stopped: {reason}")));
            }
            let target = live.position();
            new.progress.cap.send_replace(target);
            if new.progress.position() >= target {
                break;
            }
            let mut changes = new.progress.subscribe_position();
            let _ = tokio::time::timeout(RECHECK, changes.changed()).await;
        }
        // Stop the live version; what it applied counts as history for the new one, what it
        // did not is live.
        let mut live = self.inner.live.lock().await;
        let old = live.take();
        let finals = match old {
            Some(old) => {
                let progress = Arc::clone(&old.progress);
                old.shutdown().await;
                progress.segment_positions()
            }
            None => vec![0; usize::from(shared.config.segments)],
        };
        for (until, last) in new.progress.replay_until.iter().zip(&finals) {
            until.store(*last, Ordering::Release);
        }
        new.progress.cap.send_replace(i64::MAX);
        let goal = finals.iter().copied().max().unwrap_or(0);
        while new.progress.position() < goal {
            if let RunnerState::Failed(reason) = new.progress.state() {
                return Err(self.stopped(format!("the rebuild stopped: {reason}")));
            }
            let mut changes = new.progress.subscribe_position();
            let _ = tokio::time::timeout(RECHECK, changes.changed()).await;
        }
        let mut tx = shared.pool.begin().await?;
        let registration = Registration {
            live_version: version,
            segments: i32::from(shared.config.segments),
        };
        DB::register(&mut tx, &shared.tables, &shared.name, registration).await?;
        switch_views(shared, &mut tx, version).await?;
        tx.commit().await?;
        if let Ok(mut view) = self.inner.view.lock() {
            view.version = version;
            view.live = Arc::clone(&new.progress);
            view.rebuilding = None;
        }
        drop(live);
        Ok(())
    }

    /// Drops the tables of a version that is not live (an old one after a rebuild) and what
    /// the runner kept about it.
    pub async fn drop_version(&self, version: i32) -> Result<(), ProjectionError> {
        let shared = &self.inner.shared;
        if version == self.status().version {
            return Err(self.stopped(format!("version {version} is live; it cannot be dropped")));
        }
        let mut tx = shared.pool.begin().await?;
        drop_tables(shared, &mut tx, version).await?;
        DB::forget_version(&mut tx, &shared.tables, &shared.name, version).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stops the runner: stops reading, lets every segment finish and commit what it holds.
    /// Returns the reason if the error policy had stopped it.
    pub async fn shutdown(&self) -> Result<(), ProjectionError> {
        let pipeline = self.inner.live.lock().await.take();
        let Some(pipeline) = pipeline else {
            return Ok(());
        };
        let progress = Arc::clone(&pipeline.progress);
        pipeline.shutdown().await;
        match progress.state() {
            RunnerState::Failed(reason) => Err(self.stopped(reason)),
            _ => Ok(()),
        }
    }
}

async fn drop_tables<DB: Store, P: Projection<DB>>(
    shared: &Shared<DB, P>,
    conn: &mut DB::Connection,
    version: i32,
) -> Result<(), ProjectionError> {
    for base in shared.projection.tables() {
        let table = TableName::new(&versioned(base, version))?.quoted();
        DB::execute_ddl(conn, format!("DROP TABLE IF EXISTS {table}")).await?;
    }
    Ok(())
}
