//! One relay worker: claim a shard's batch, publish it, record the outcome, commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use ms_bus::{BusError, CommandSender, Envelope, EventPublisher};
use time::OffsetDateTime;

use super::config::{OnPoison, RelayConfig, Retention};
use super::status::RelayState;
use crate::MessageKind;
use crate::OutboxError;
use crate::backend::{BatchOutcome, Claim, FailedRow, Store, StoredRow};

/// The bus as the relay sees it: both halves, behind one object.
pub(crate) trait Target: Send + Sync + 'static {
    fn publish_batch<'a>(
        &'a self,
        kind: MessageKind,
        destination: &'a str,
        envelopes: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>>;
}

impl<P: EventPublisher + CommandSender + 'static> Target for P {
    fn publish_batch<'a>(
        &'a self,
        kind: MessageKind,
        destination: &'a str,
        envelopes: &'a [Envelope],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        match kind {
            MessageKind::Event => EventPublisher::publish_batch(self, destination, envelopes),
            MessageKind::Command => CommandSender::send_batch(self, destination, envelopes),
        }
    }
}

/// Everything a worker shares with the relay's other tasks.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) target: Arc<dyn Target>,
    pub(crate) config: RelayConfig,
    pub(crate) state: Arc<RelayState>,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) table: String,
}

/// What one round on a shard did.
pub(crate) enum Round {
    /// Another relay holds the shard.
    Busy,
    /// Rows were claimed; `full` means there may be more; `failed` means some could not be
    /// published (the worker backs off).
    Claimed { full: bool, failed: bool },
}

/// The rows of one destination, in id order.
struct Group {
    kind: MessageKind,
    destination: String,
    ids: Vec<i64>,
    rows: Vec<Meta>,
    envelopes: Vec<Envelope>,
}

struct Meta {
    key: String,
    last_attempt_at: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
    strikes: i32,
    attempts: i32,
}

pub(crate) async fn round(ctx: &Shared, shard: i16) -> Result<Round, OutboxError> {
    let config = &ctx.config;
    let hold_keys = config.on_poison == OnPoison::BlockKey;
    let limit = i64::try_from(config.batch_size).unwrap_or(i64::MAX);
    let keep_published = matches!(config.retention, Retention::Keep(_));
    let mut batch = match ctx
        .store
        .claim(shard, limit, hold_keys, keep_published)
        .await?
    {
        Claim::Busy => return Ok(Round::Busy),
        Claim::Batch(batch) => batch,
    };
    ctx.state.heartbeat();
    let rows = batch.take_rows();
    let claimed = rows.len();
    if claimed == 0 {
        // End the transaction now: a dropped one is rolled back only when its connection is
        // next used, and would hold the shard's lock until then.
        batch.finish(BatchOutcome::default()).await?;
        return Ok(Round::Claimed {
            full: false,
            failed: false,
        });
    }

    let mut outcome = BatchOutcome {
        keep_published,
        parked_blocks_key: hold_keys,
        ..BatchOutcome::default()
    };
    let groups = group(rows, &mut outcome);

    // When this round's publishing began: what it confirms proves the broker was up after
    // this instant (see `published`), not after the commit, which may come long after
    // another shard's rows failed.
    let sent_at = OffsetDateTime::now_utc();
    // Destinations are independent streams: publish them at once. Within one, order is the
    // adapters' `publish_batch` contract.
    let results = join_all(groups.iter().map(|g| {
        let publish = ctx
            .target
            .publish_batch(g.kind, &g.destination, &g.envelopes);
        timed(config.publish_timeout, publish)
    }))
    .await;

    let mut latencies = Latencies::default();
    let mut failed = !outcome.parked.is_empty();
    for (group, result) in groups.iter().zip(results) {
        match result {
            Ok(()) => {
                outcome.published.extend_from_slice(&group.ids);
                for meta in &group.rows {
                    latencies.push(meta.created_at);
                }
            }
            Err(error) => {
                failed = true;
                ctx.state
                    .error(format!("publish to {}: {error}", group.destination));
                isolate(ctx, group, &mut outcome, &mut latencies, hold_keys).await;
            }
        }
    }

    let published = outcome.published.len();
    let parked = outcome.parked.len();
    let failures = outcome.failed.len() + parked;
    batch.finish(outcome).await?;

    // Counted only once committed: until then a crash would publish them again.
    ctx.state.published(published, sent_at);
    ctx.state
        .failures
        .fetch_add(failures as u64, Ordering::Relaxed);
    ctx.state.parked.fetch_add(parked as u64, Ordering::Relaxed);
    record_metrics(ctx, published, failures, parked, &latencies);
    Ok(Round::Claimed {
        full: claimed >= ctx.config.batch_size,
        failed,
    })
}

/// After a group's batch failed: finds the failing rows one at a time and publishes the
/// others. Rows before a failing row are published; the failing row is recorded; the rows after
/// it (without its key's, when keys are held) are tried again as a batch. When two attempts in
/// a row fail on their very first row, nothing is getting through (an outage, most likely):
/// the rest stays pending for the next round.
async fn isolate(
    ctx: &Shared,
    group: &Group,
    outcome: &mut BatchOutcome,
    latencies: &mut Latencies,
    hold_keys: bool,
) {
    let timeout = ctx.config.publish_timeout;
    let publish = |envelopes: Vec<Envelope>| async move {
        timed(
            timeout,
            ctx.target
                .publish_batch(group.kind, &group.destination, &envelopes),
        )
        .await
    };
    let mut pending: Vec<usize> = (0..group.ids.len()).collect();
    let mut held: Vec<&str> = Vec::new();
    let mut first_row_failures = 0;
    let mut batch_failed = true;
    while !pending.is_empty() {
        if !batch_failed {
            let envelopes = pending
                .iter()
                .map(|&i| group.envelopes[i].clone())
                .collect();
            if publish(envelopes).await.is_ok() {
                for &i in &pending {
                    outcome.published.push(group.ids[i]);
                    latencies.push(group.rows[i].created_at);
                }
                return;
            }
        }
        let mut failed_at = None;
        for (position, &i) in pending.iter().enumerate() {
            match publish(vec![group.envelopes[i].clone()]).await {
                Ok(()) => {
                    outcome.published.push(group.ids[i]);
                    latencies.push(group.rows[i].created_at);
                }
                Err(error) => {
                    record_failure(ctx, outcome, group.ids[i], &group.rows[i], &error);
                    failed_at = Some(position);
                    break;
                }
            }
        }
        let Some(position) = failed_at else { return };
        first_row_failures = if position == 0 {
            first_row_failures + 1
        } else {
            0
        };
        if first_row_failures >= 2 {
            return;
        }
        if hold_keys {
            held.push(&group.rows[pending[position]].key);
        }
        pending = pending[position + 1..]
            .iter()
            .copied()
            .filter(|&i| !held.contains(&group.rows[i].key.as_str()))
            .collect();
        batch_failed = false;
    }
}

/// Splits a batch by destination, keeping id order; rows that cannot be decoded are parked at
/// once (retrying cannot fix them). When a parked row blocks its key, the later rows of its
/// key in the batch are left out (they stay pending, and later claims leave them out until the
/// parked row is replayed or discarded): published now, they would go out ahead of it.
fn group(rows: Vec<StoredRow>, outcome: &mut BatchOutcome) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut held: Vec<String> = Vec::new();
    for row in rows {
        if held.contains(&row.key) {
            continue;
        }
        let envelope = match MessageKind::from_code(row.kind) {
            None => Err(format!("unknown message kind {}", row.kind)),
            Some(kind) => ms_bus::codec::from_json(row.envelope.as_bytes())
                .map(|envelope| (kind, envelope))
                .map_err(|error| format!("the stored envelope cannot be decoded: {error}")),
        };
        let (kind, envelope) = match envelope {
            Ok(decoded) => decoded,
            Err(reason) => {
                outcome.parked.push((row.id, reason));
                if outcome.parked_blocks_key {
                    held.push(row.key);
                }
                continue;
            }
        };
        let meta = Meta {
            key: row.key,
            last_attempt_at: row.last_attempt_at,
            created_at: row.created_at,
            strikes: row.strikes,
            attempts: row.attempts,
        };
        let index = match groups
            .iter()
            .position(|g| g.kind == kind && g.destination == row.destination)
        {
            Some(index) => index,
            None => {
                groups.push(Group {
                    kind,
                    destination: row.destination,
                    ids: Vec::new(),
                    rows: Vec::new(),
                    envelopes: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[index];
        group.ids.push(row.id);
        group.rows.push(meta);
        group.envelopes.push(envelope);
    }
    groups
}

fn record_failure(
    ctx: &Shared,
    outcome: &mut BatchOutcome,
    id: i64,
    meta: &Meta,
    error: &BusError,
) {
    let config = &ctx.config;
    let message = error.to_string();
    // A name the bus refuses or an envelope the transport cannot carry fails the same way
    // every time: park at once.
    if !error.is_retryable() {
        outcome.parked.push((id, message));
        return;
    }
    // During a broker outage every row fails; those failures say nothing about the rows and
    // must not park them. A failure counts only while the broker is demonstrably up: the
    // relay published something since this row last failed (or, for its first failure, within
    // the strike window). An outage therefore costs a row at most one strike.
    let now = OffsetDateTime::now_utc();
    outcome.attempted_at = Some(now);
    let broker_up = match (ctx.state.last_published_at(), meta.last_attempt_at) {
        (Some(published), Some(previous_failure)) => published > previous_failure,
        (Some(published), None) => now - published < config.strike_window,
        (None, _) => false,
    };
    let strike = broker_up && !error.is_unavailable();
    if strike
        && meta.strikes.saturating_add(1) >= i32::try_from(config.max_attempts).unwrap_or(i32::MAX)
    {
        outcome.parked.push((
            id,
            format!("{message} (after {} attempts)", meta.attempts + 1),
        ));
        return;
    }
    outcome.failed.push(FailedRow {
        id,
        error: message,
        strike,
        retry_in: config.retry_delay(meta.attempts),
    });
}

async fn timed(
    limit: Duration,
    publish: BoxFuture<'_, Result<(), BusError>>,
) -> Result<(), BusError> {
    match tokio::time::timeout(limit, publish).await {
        Ok(result) => result,
        Err(_) => Err(BusError::NotConfirmed(
            format!("no confirmation within {limit:?}").into(),
        )),
    }
}

#[cfg(feature = "metrics")]
fn record_metrics(
    ctx: &Shared,
    published: usize,
    failures: usize,
    parked: usize,
    latencies: &Latencies,
) {
    let table = ctx.table.clone();
    metrics::counter!("ms_outbox_published_total", "table" => table.clone())
        .increment(published as u64);
    if failures > 0 {
        metrics::counter!("ms_outbox_publish_failures_total", "table" => table.clone())
            .increment(failures as u64);
    }
    if parked > 0 {
        metrics::counter!("ms_outbox_dead_lettered_total", "table" => table.clone())
            .increment(parked as u64);
    }
    let now = OffsetDateTime::now_utc();
    let histogram = metrics::histogram!("ms_outbox_enqueue_to_publish_seconds", "table" => table);
    for created in &latencies.0 {
        histogram.record((now - *created).as_seconds_f64().max(0.0));
    }
}

#[cfg(not(feature = "metrics"))]
fn record_metrics(_: &Shared, _: usize, _: usize, _: usize, _: &Latencies) {}

/// When the published rows were enqueued, for the latency histogram; without the `metrics`
/// feature nothing reads them, so nothing is kept (the relay's hot path stays as it was).
#[derive(Default)]
struct Latencies(#[cfg(feature = "metrics")] Vec<OffsetDateTime>);

impl Latencies {
    #[cfg(feature = "metrics")]
    fn push(&mut self, created_at: OffsetDateTime) {
        self.0.push(created_at);
    }

    #[cfg(not(feature = "metrics"))]
    #[allow(clippy::unused_self)] // The same call as with the feature, doing nothing.
    fn push(&mut self, _created_at: OffsetDateTime) {}
}
