//! ms-outbox relay throughput and latency, next to the physical limits and the fastest Rust
//! peer, all in the same run:
//!
//! - `outbox_limits/raw_pg_drain/N`: the raw SQL drain loop alone, one connection, `DELETE …
//!   WHERE shard = 0 AND id = ANY(ARRAY(SELECT id … ORDER BY id LIMIT N FOR UPDATE SKIP
//!   LOCKED)) RETURNING id, destination, envelope` until the table is empty, on ms-outbox's own
//!   table (made by its migration). Nothing is published: what PostgreSQL lets one client
//!   drain, the ceiling of a relay into an in-memory publisher.
//! - `outbox_limits/raw_jetstream_publish`: the raw async-nats client publishing the same
//!   envelopes (structured JSON body, 6 headers, a fresh `Nats-Msg-Id` each) to a JetStream
//!   stream on file storage, 1,024 acks in flight, awaited in order: the ceiling of a relay to
//!   JetStream, whatever the database.
//! - `outbox_peer/outbox_postgres_*`: the fastest Rust peer, `outbox-postgres` 0.3 (with
//!   `outbox-core` 0.6), driven as its README says: its own migration (table `outbox_events`,
//!   `jsonb` payload, a `NOTIFY` trigger), `PostgresOutbox` storage, an `OutboxManager` with
//!   `batch_size` 1,000 running from a full table until every row is `Sent`. Its `Transport`
//!   takes one event at a time and its processor awaits each publish before the next, so the
//!   JetStream transport publishes one message and awaits its ack: one ack in flight, all its
//!   API allows. `…_memory_sink` counts events in process.
//! - `outbox_ours/*`: ms-outbox's `Relay` (2 workers) from a full table to its last commit:
//!   PostgreSQL into an in-process sink (the fair match of the peer's sink) with batches of
//!   1, 100 and 1,000, into ms-bus's memory adapter with a consumer group counting
//!   deliveries, and into JetStream through ms-bus's NATS adapter (1,024 acks in flight, binary
//!   mode: what the relay really publishes); SQLite (a file in WAL mode) into the sink.
//! - `outbox_ours/latency_1000_per_s` (not a criterion bench: printed on stderr, one line per
//!   figure): a writer commits one event per millisecond for 5 s while the relay runs, woken
//!   by LISTEN/NOTIFY; per event, from `commit()` returning to the sink receiving it.
//! - `outbox_paired` (printed on stderr too): the raw drain, ours (and, as a diagnostic, ours
//!   with every row under one key, so in one shard like the raw drain's) and the peer back to
//!   back in each of 7 rounds (and the raw publish, ours, ours with 64 keys and with one key,
//!   and the peer to JetStream: per-key order limits the pipelining within a key), with each
//!   round's ratios and their medians: the goals are ratios, and on a shared machine the load
//!   moves between criterion's groups, minutes apart.
//!
//! Every row carries a CloudEvents structured-JSON envelope of about 200 bytes (ours: one
//! invoice per row, keys spread over the outbox's 32 shards; the raw drain's rows sit in one
//! shard). Filling the table is not measured and is followed by `ANALYZE` for all three, as
//! autovacuum keeps a live table's statistics; each measured iteration drains a full table to
//! empty.
//!
//! Run: `cargo bench -p ms-benches --bench outbox -- --warm-up-time 1 --measurement-time 3`.
//! PostgreSQL comes from `MS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the bench creates its own database
//! `ms_bench_outbox_<pid>` and drops it at the end. NATS comes from `MS_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`); the bench creates its own streams (`MS_BENCH_OUTBOX_<pid>`,
//! `benchoutbox<pid>_…`) and deletes them at the end, also after a panic. A group whose
//! service does not answer is skipped with a line on stderr.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, stream};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ms_benches::{BenchDb, cleanup, median, rate, selected};
use ms_bus::Envelope;
use sqlx::Executor as _;
use sqlx::postgres::PgPool;

/// Rows drained per measured iteration with batches of 100 and more.
const ROWS: u64 = 20_000;
/// Rows drained per measured iteration with batches of 1 (one round trip per row).
const ROWS_ONE_BY_ONE: u64 = 2_000;

/// JetStream acks in flight when publishing a batch.
const ACK_WINDOW: usize = 1_024;

/// The raw drain's table: ms-outbox's own, made by its migration under another name, so that
/// the limit is measured on exactly the shape (columns, primary key `(shard, id)`, partial
/// indexes) the relay drains.
const RAW_TABLE: &str = "bench_outbox";

/// Fills the table server-side, all rows in one shard: one statement, one commit, not
/// measured.
const FILL: &str = "
INSERT INTO bench_outbox (shard, partition_key, kind, destination, envelope)
SELECT 0, 'invoice-' || g, 0, 'invoicing.invoice', $1 FROM generate_series(1, $2) AS g";

/// The physical limit: claim, delete and return a batch in one statement. The shard is named
/// because the primary key is `(shard, id)`. The claimed ids go through an array, so both
/// sides are index scans; the `id IN (SELECT …)` form makes the planner hash-join the whole
/// remaining table on every batch (`EXPLAIN ANALYZE`, 20,000 rows: 9.0 ms per 1,000-row batch
/// against 1.6 ms this way).
const DRAIN: &str = "DELETE FROM bench_outbox WHERE shard = 0 AND id = ANY(ARRAY(SELECT id FROM \
    bench_outbox WHERE shard = 0 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)) \
    RETURNING id, destination, envelope";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The envelope every row carries: an invoice event as CloudEvents structured JSON.
fn envelope() -> Envelope {
    Envelope::builder("invoicing.invoice.created", "/invoicing")
        .subject("invoice-1042")
        .json_data(&serde_json::json!({ "amount_cents": 129_900 }))
        .expect("serializable data")
        .build()
        .expect("valid envelope")
}

fn envelope_text() -> String {
    String::from_utf8(ms_bus::codec::to_json(&envelope()).to_vec()).expect("JSON is UTF-8")
}

/// Empties the table and fills it with `rows` rows in one commit (not measured).
async fn refill(pool: &PgPool, envelope: &str, rows: u64) {
    pool.execute("TRUNCATE bench_outbox")
        .await
        .expect("truncate");
    sqlx::query(FILL)
        .bind(envelope)
        .bind(i64::try_from(rows).expect("row count"))
        .execute(pool)
        .await
        .expect("fill");
    // Current statistics, as autovacuum keeps them on a live table (right after a refill the
    // planner would otherwise guess from stale ones); done alike for the peer and ours.
    pool.execute("ANALYZE bench_outbox").await.expect("analyze");
}

/// The raw drain loop on one connection; returns the rows drained.
async fn raw_drain(conn: &mut sqlx::PgConnection, batch: i64) -> u64 {
    let mut drained = 0;
    loop {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(DRAIN)
            .bind(batch)
            .fetch_all(&mut *conn)
            .await
            .expect("drain");
        if rows.is_empty() {
            return drained;
        }
        drained += rows.len() as u64;
        std::hint::black_box(rows);
    }
}

fn raw_pg_drain(c: &mut Criterion, rt: &tokio::runtime::Runtime, db: &BenchDb, text: &str) {
    let mut group = c.benchmark_group("outbox_limits");
    group.sample_size(10);
    // Each iteration drains a whole table: flat sampling keeps it to one per sample.
    group.sampling_mode(SamplingMode::Flat);
    for batch in [1_i64, 100, 1_000] {
        let rows = if batch == 1 { ROWS_ONE_BY_ONE } else { ROWS };
        group.throughput(Throughput::Elements(rows));
        group.bench_function(BenchmarkId::new("raw_pg_drain", batch), |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let mut conn = db.pool.acquire().await.expect("connection");
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    refill(&db.pool, text, rows).await;
                    let start = Instant::now();
                    let drained = raw_drain(&mut conn, batch).await;
                    measured += start.elapsed();
                    assert_eq!(drained, rows, "the drain saw every row once");
                }
                measured
            });
        });
    }
    group.finish();
}

/// A JetStream stream of the bench's own, deleted at the end of the run.
struct BenchStream {
    url: String,
    js: jetstream::Context,
    name: String,
    subject: String,
}

impl BenchStream {
    fn create(rt: &tokio::runtime::Runtime) -> Option<Self> {
        let url = std::env::var("MS_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let connected = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(3), async_nats::connect(&url)).await
        });
        let Ok(Ok(client)) = connected else {
            eprintln!("SKIPPED outbox JetStream groups: no NATS at {url}");
            return None;
        };
        let js = rt.block_on(async { jetstream::new(client) });
        let name = format!("MS_BENCH_OUTBOX_{}", std::process::id());
        let subject = format!("ms_bench_outbox_{}.invoicing.invoice", std::process::id());
        rt.block_on(async {
            js.create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("create the bench stream");
        });
        Some(Self {
            url,
            js,
            name,
            subject,
        })
    }

    /// Empties the stream between iterations (not measured), so each starts alike.
    async fn purge(&self) {
        self.js
            .get_stream(&self.name)
            .await
            .expect("the bench stream")
            .purge()
            .await
            .expect("purge");
    }
}

impl Drop for BenchStream {
    /// Deletes the streams of this process: the raw one and the ones ms-bus made for ours.
    fn drop(&mut self) {
        let url = self.url.clone();
        let pid = std::process::id();
        cleanup(
            &format!("NATS streams of process {pid}"),
            move || async move {
                let Ok(client) = async_nats::connect(&url).await else {
                    return;
                };
                let js = jetstream::new(client);
                let mut names = js.stream_names();
                let mut ours = Vec::new();
                while let Some(Ok(name)) = futures_util::StreamExt::next(&mut names).await {
                    if name == format!("MS_BENCH_OUTBOX_{pid}")
                        || name.starts_with(&format!("benchoutbox{pid}_"))
                    {
                        ours.push(name);
                    }
                }
                for name in ours {
                    let _ = js.delete_stream(&name).await;
                }
            },
        );
    }
}

/// The headers a relay writes next to a structured envelope: 6 of them, the message id fresh
/// so that JetStream's deduplication keeps every message.
fn jetstream_headers(id: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers.insert("content-type", "application/cloudevents+json");
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id);
    headers.insert("ce-type", "invoicing.invoice.created");
    headers.insert("ce-source", "/invoicing");
    headers
}

/// Raw pipelined publishing: up to [`ACK_WINDOW`] acks outstanding, awaited in order.
async fn raw_publish(stream: &BenchStream, ids: &[String], body: &bytes::Bytes) {
    let mut pending: VecDeque<PublishAckFuture> = VecDeque::with_capacity(ACK_WINDOW);
    for id in ids {
        let headers = jetstream_headers(id);
        if pending.len() >= ACK_WINDOW
            && let Some(ack) = pending.pop_front()
        {
            ack.await.expect("ack");
        }
        pending.push_back(
            stream
                .js
                .publish_with_headers(stream.subject.clone(), headers, body.clone())
                .await
                .expect("publish"),
        );
    }
    for ack in pending {
        ack.await.expect("ack");
    }
}

/// Fresh message ids for one iteration, made before the clock starts.
fn fresh_ids(rows: u64) -> Vec<String> {
    (0..rows).map(|_| envelope().id().to_owned()).collect()
}

fn raw_jetstream_publish(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    stream: &BenchStream,
    text: &str,
) {
    let body = bytes::Bytes::from(text.to_owned());
    let mut group = c.benchmark_group("outbox_limits");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(ROWS));
    group.bench_function("raw_jetstream_publish", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let body = &body;
            async move {
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    let ids = fresh_ids(ROWS);
                    stream.purge().await;
                    let start = Instant::now();
                    raw_publish(stream, &ids, body).await;
                    measured += start.elapsed();
                }
                measured
            }
        });
    });
    group.finish();
}

/// The peer: `outbox-postgres` 0.3 on `outbox-core` 0.6 (sqlx 0.8).
mod peer {
    use super::{
        BenchDb, BenchStream, Duration, Instant, ROWS, SamplingMode, Throughput, jetstream_headers,
    };
    use std::str::FromStr as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use criterion::Criterion;
    use outbox_core::prelude::*;
    use outbox_postgres::PostgresOutbox;
    use serde_json::Value;
    use sqlx_08::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

    /// The crate's own migration, `migrations/20260213152819_init.sql` of outbox-postgres
    /// 0.3.0 (also in its README), verbatim.
    const MIGRATION: &str = "
create type status as enum (
    'Pending',
    'Processing',
    'Sent'
    );

create table outbox_events
(
    id                uuid primary key     default gen_random_uuid(),
    idempotency_token text                 default null,
    event_type        text        not null,
    payload           jsonb       not null,
    status            status      not null default 'Pending',
    created_at        timestamptz not null default now(),
    locked_until      timestamptz not null default '-infinity'
);
CREATE INDEX idx_outbox_processing_queue
    ON outbox_events (locked_until ASC, status)
    WHERE status IN ('Pending', 'Processing');
CREATE UNIQUE INDEX idx_outbox_idempotency
    ON outbox_events (idempotency_token);

create or replace function notify_outbox_event() returns trigger as
$$
begin
    perform pg_notify('outbox_event', 'ping');
    return new;
end;
$$ language plpgsql;

create trigger outbox_events_notify_trigger
    after insert or update
    on outbox_events
    for each row
execute function notify_outbox_event();";

    /// Rows as its `PostgresWriter` writes them (fresh uuid, no token, `Pending`), made
    /// server-side in one commit, not measured.
    const FILL: &str = "
INSERT INTO outbox_events (id, idempotency_token, event_type, payload, status, created_at, locked_until)
SELECT gen_random_uuid(), NULL, 'invoicing.invoice.created', $1::jsonb, 'Pending', now(), '-infinity'
FROM generate_series(1, $2)";

    /// Counts what the peer delivered and wakes the bench when a run's target is reached.
    #[derive(Default)]
    struct Progress {
        delivered: AtomicU64,
        target: AtomicU64,
        done: tokio::sync::Notify,
    }

    impl Progress {
        fn start(&self, target: u64) {
            self.delivered.store(0, Ordering::SeqCst);
            self.target.store(target, Ordering::SeqCst);
        }

        fn delivered(&self) {
            if self.delivered.fetch_add(1, Ordering::Relaxed) + 1
                == self.target.load(Ordering::Relaxed)
            {
                self.done.notify_one();
            }
        }
    }

    /// The in-process sink: takes the event and counts it.
    struct MemorySink(Arc<Progress>);

    #[async_trait::async_trait]
    impl Transport<Value> for MemorySink {
        async fn publish(&self, event: Event<Value>) -> Result<(), OutboxError> {
            std::hint::black_box(event);
            self.0.delivered();
            Ok(())
        }
    }

    /// JetStream with acks, as far as `Transport` allows: one publish, then its ack.
    struct JetStreamSink {
        js: async_nats::jetstream::Context,
        subject: String,
        progress: Arc<Progress>,
    }

    #[async_trait::async_trait]
    impl Transport<Value> for JetStreamSink {
        async fn publish(&self, event: Event<Value>) -> Result<(), OutboxError> {
            let id = event.id.as_uuid().to_string();
            let body = serde_json::to_vec(&event.payload)
                .map_err(|e| OutboxError::BrokerError(e.to_string()))?;
            self.js
                .publish_with_headers(self.subject.clone(), jetstream_headers(&id), body.into())
                .await
                .map_err(|e| OutboxError::BrokerError(e.to_string()))?
                .await
                .map_err(|e| OutboxError::BrokerError(e.to_string()))?;
            self.progress.delivered();
            Ok(())
        }
    }

    pub(super) struct Peer {
        pool: PgPool,
        payload: Value,
    }

    impl Peer {
        pub(super) fn setup(rt: &tokio::runtime::Runtime, db: &BenchDb, text: &str) -> Self {
            let options = PgConnectOptions::from_str(&db.url)
                .expect("a PostgreSQL URL")
                .database(&db.name);
            let pool = rt.block_on(async {
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .connect_with(options)
                    .await
                    .expect("connect (sqlx 0.8)");
                sqlx_08::raw_sql(MIGRATION)
                    .execute(&pool)
                    .await
                    .expect("the peer's migration");
                pool
            });
            Self {
                pool,
                payload: serde_json::from_str(text).expect("the envelope is JSON"),
            }
        }

        async fn refill(&self, rows: u64) {
            sqlx_08::query("TRUNCATE outbox_events")
                .execute(&self.pool)
                .await
                .expect("truncate");
            sqlx_08::query(FILL)
                .bind(&self.payload)
                .bind(i64::try_from(rows).expect("row count"))
                .execute(&self.pool)
                .await
                .expect("fill");
            sqlx_08::query("ANALYZE outbox_events")
                .execute(&self.pool)
                .await
                .expect("analyze");
        }

        /// Waits until no row is left unsent: the peer marks a batch `Sent` after publishing
        /// it, so the last batch's update is part of the drain.
        async fn wait_all_sent(&self) {
            loop {
                let left: i64 = sqlx_08::query_scalar(
                    "SELECT count(*) FROM outbox_events WHERE status <> 'Sent'",
                )
                .fetch_one(&self.pool)
                .await
                .expect("count");
                if left == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        /// One drain of `rows` rows through the peer's manager into `transport`; the time
        /// from the manager's start to the last row `Sent`.
        async fn drain<T>(&self, transport: Arc<T>, progress: &Progress, rows: u64) -> Duration
        where
            T: Transport<Value> + 'static,
        {
            self.refill(rows).await;
            progress.start(rows);
            let mut config = OutboxConfig::<Value>::default();
            config.batch_size = 1_000;
            let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
            let start = Instant::now();
            let manager = OutboxManagerBuilder::new()
                .storage(Arc::new(PostgresOutbox::new(
                    self.pool.clone(),
                    Arc::new(config.clone()),
                )))
                .publisher(transport)
                .config(Arc::new(config))
                .shutdown_rx(shutdown_rx)
                .build()
                .expect("the peer's manager");
            let worker = tokio::spawn(manager.run());
            progress.done.notified().await;
            self.wait_all_sent().await;
            let elapsed = start.elapsed();
            shutdown.send(true).expect("the manager listens");
            worker
                .await
                .expect("the manager's task")
                .expect("the manager");
            elapsed
        }
    }

    impl Peer {
        /// One full-table drain into the in-process sink.
        pub(super) async fn drain_memory(&self, rows: u64) -> Duration {
            let progress = Arc::new(Progress::default());
            let sink = Arc::new(MemorySink(progress.clone()));
            self.drain(sink, &progress, rows).await
        }

        /// One full-table drain into JetStream (the stream purged first, not measured).
        pub(super) async fn drain_jetstream(&self, stream: &BenchStream, rows: u64) -> Duration {
            let progress = Arc::new(Progress::default());
            let sink = Arc::new(JetStreamSink {
                js: stream.js.clone(),
                subject: stream.subject.clone(),
                progress: progress.clone(),
            });
            stream.purge().await;
            self.drain(sink, &progress, rows).await
        }
    }

    pub(super) fn bench(
        c: &mut Criterion,
        rt: &tokio::runtime::Runtime,
        peer: &Peer,
        stream: Option<&BenchStream>,
    ) {
        let mut group = c.benchmark_group("outbox_peer");
        group.sample_size(10);
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Elements(ROWS));
        group.bench_function("outbox_postgres_batch_1000_memory_sink", |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    measured += peer.drain_memory(ROWS).await;
                }
                measured
            });
        });
        if let Some(stream) = stream {
            group.bench_function("outbox_postgres_batch_1000_jetstream", |b| {
                b.to_async(rt).iter_custom(|iters| async move {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        measured += peer.drain_jetstream(stream, ROWS).await;
                    }
                    measured
                });
            });
        }
        group.finish();
    }
}

/// Ours: ms-outbox's relay, on the same machine in the same run.
mod ours {
    use super::{
        BenchDb, BenchStream, Duration, Instant, ROWS, ROWS_ONE_BY_ONE, SamplingMode, Throughput,
    };
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};

    use criterion::{BenchmarkId, Criterion};
    use futures_util::future::BoxFuture;
    use ms_bus::memory::MemoryBus;
    use ms_bus::nats::NatsBus;
    use ms_bus::{BusError, CommandSender, Envelope, EventPublisher};
    use ms_outbox::{Backend, Outbox, OutboxMessage, Relay, RelayHandle, TableName};
    use sqlx::Executor as _;

    /// The topic every row is published to.
    const TOPIC: &str = "invoicing.invoice";
    /// Rows per relay transaction in the runs that do not vary it.
    const BATCH: usize = 1_000;
    /// Relay workers (shards drained at once).
    const CONCURRENCY: usize = 2;

    /// How the rows' partition keys fall.
    #[derive(Clone, Copy, PartialEq)]
    pub(super) enum Keys {
        /// Each row its own invoice: keys spread over the outbox's shards.
        PerInvoice,
        /// One key for every row: one shard, drained one batch after another as the raw drain
        /// drains its one shard (a diagnostic, not a workload).
        One,
        /// This many keys (customers, say), rows spread over them in turn: each batch holds a
        /// few keys with many rows each, the shape where per-key order costs pipelining.
        Few(u64),
    }

    /// One invoice event per row, fresh ids (JetStream deduplicates by envelope id).
    fn messages(rows: u64, keys: Keys) -> Vec<OutboxMessage> {
        (0..rows)
            .map(|n| {
                let envelope = Envelope::builder("invoicing.invoice.created", "/invoicing")
                    .subject(format!("invoice-{n}"))
                    .json_data(&serde_json::json!({ "amount_cents": 129_900 }))
                    .expect("serializable data")
                    .build()
                    .expect("valid envelope");
                let message = OutboxMessage::event(TOPIC, envelope);
                match keys {
                    Keys::PerInvoice => message,
                    Keys::One => message.partition_key("invoicing"),
                    Keys::Few(keys) => message.partition_key(format!("customer-{}", n % keys)),
                }
            })
            .collect()
    }

    /// The in-process sink: counts what it is given (and, for the latency run, when).
    #[derive(Default)]
    pub(super) struct Sink {
        delivered: AtomicU64,
        arrivals: Option<Mutex<Vec<(String, Instant)>>>,
    }

    impl Sink {
        fn timed() -> Self {
            Self {
                delivered: AtomicU64::new(0),
                arrivals: Some(Mutex::new(Vec::new())),
            }
        }

        fn take(&self, events: &[Envelope]) {
            std::hint::black_box(events);
            if let Some(arrivals) = &self.arrivals {
                let now = Instant::now();
                arrivals
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(events.iter().map(|e| (e.id().to_owned(), now)));
            }
            self.delivered
                .fetch_add(events.len() as u64, Ordering::Relaxed);
        }
    }

    impl EventPublisher for Sink {
        fn publish<'a>(
            &'a self,
            _topic: &'a str,
            event: &'a Envelope,
        ) -> BoxFuture<'a, Result<(), BusError>> {
            self.take(std::slice::from_ref(event));
            Box::pin(std::future::ready(Ok(())))
        }

        fn publish_batch<'a>(
            &'a self,
            _topic: &'a str,
            events: &'a [Envelope],
        ) -> BoxFuture<'a, Result<(), BusError>> {
            self.take(events);
            Box::pin(std::future::ready(Ok(())))
        }
    }

    impl CommandSender for Sink {
        fn send<'a>(
            &'a self,
            _destination: &'a str,
            command: &'a Envelope,
        ) -> BoxFuture<'a, Result<(), BusError>> {
            self.take(std::slice::from_ref(command));
            Box::pin(std::future::ready(Ok(())))
        }

        fn send_batch<'a>(
            &'a self,
            _destination: &'a str,
            commands: &'a [Envelope],
        ) -> BoxFuture<'a, Result<(), BusError>> {
            self.take(commands);
            Box::pin(std::future::ready(Ok(())))
        }
    }

    /// Messages per enqueueing transaction when filling: on PostgreSQL each distinct key holds
    /// an advisory lock until commit, and the default lock table (`max_locks_per_transaction`
    /// 64 × connections) runs out with 20,000 keys in one transaction.
    const ENQUEUE_CHUNK: usize = 500;

    /// Empties the outbox table and enqueues `rows` messages (not measured).
    async fn refill<DB: Backend>(outbox: &Outbox<DB>, pool: &sqlx::Pool<DB>, rows: u64, keys: Keys)
    where
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    {
        let table = outbox.table().quoted();
        let postgres = <DB as sqlx::Database>::NAME == "PostgreSQL";
        let empty = if postgres { "TRUNCATE" } else { "DELETE FROM" };
        pool.execute(sqlx::AssertSqlSafe(format!("{empty} {table}")))
            .await
            .expect("empty the outbox");
        let mut messages = messages(rows, keys).into_iter().peekable();
        while messages.peek().is_some() {
            let mut tx = pool.begin().await.expect("begin");
            outbox
                .enqueue_all(&mut *tx, messages.by_ref().take(ENQUEUE_CHUNK))
                .await
                .expect("enqueue");
            tx.commit().await.expect("commit");
        }
        // Current statistics, as for the raw drain and the peer.
        pool.execute(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
            .await
            .expect("analyze");
    }

    /// Waits until the relay has committed `rows` rows away (its counter moves after each
    /// commit, so the last batch's delete is part of the drain).
    async fn wait_published(handle: &RelayHandle, rows: u64) {
        while handle.status().published < rows {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// One drain of a full table to empty through a relay started for it; the time from the
    /// relay's start to its last commit.
    async fn drain<DB, P>(
        outbox: &Outbox<DB>,
        pool: &sqlx::Pool<DB>,
        bus: P,
        batch: usize,
        rows: u64,
        keys: Keys,
    ) -> Duration
    where
        DB: Backend,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        P: EventPublisher + CommandSender + 'static,
    {
        refill(outbox, pool, rows, keys).await;
        let start = Instant::now();
        let handle = Relay::builder(outbox, pool, bus)
            .batch_size(batch)
            .concurrency(CONCURRENCY)
            .build()
            .spawn();
        wait_published(&handle, rows).await;
        let elapsed = start.elapsed();
        handle.shutdown().await.expect("relay shutdown");
        elapsed
    }

    pub(super) fn postgres_outbox(
        rt: &tokio::runtime::Runtime,
        db: &BenchDb,
    ) -> Outbox<sqlx::Postgres> {
        let outbox = Outbox::<sqlx::Postgres>::new(TableName::new("ms_outbox").expect("valid"));
        rt.block_on(outbox.migrate(&db.pool)).expect("migrate");
        outbox
    }

    /// PostgreSQL → in-process sink, batches of 1, 100, 1,000.
    pub(super) fn ours_pg_memory(
        c: &mut Criterion,
        rt: &tokio::runtime::Runtime,
        db: &BenchDb,
        outbox: &Outbox<sqlx::Postgres>,
    ) {
        let mut group = c.benchmark_group("outbox_ours");
        group.sample_size(10);
        group.sampling_mode(SamplingMode::Flat);
        for batch in [1_usize, 100, 1_000] {
            let rows = if batch == 1 { ROWS_ONE_BY_ONE } else { ROWS };
            group.throughput(Throughput::Elements(rows));
            group.bench_function(BenchmarkId::new("pg_memory_sink", batch), |b| {
                b.to_async(rt).iter_custom(|iters| async move {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        let sink = Arc::new(Sink::default());
                        measured += drain(
                            outbox,
                            &db.pool,
                            sink.clone(),
                            batch,
                            rows,
                            Keys::PerInvoice,
                        )
                        .await;
                        assert!(sink.delivered.load(Ordering::Relaxed) >= rows);
                    }
                    measured
                });
            });
        }
        // The same into ms-bus's memory adapter with one consumer group counting deliveries:
        // done when the group has them all and the relay has committed.
        group.throughput(Throughput::Elements(ROWS));
        group.bench_function(BenchmarkId::new("pg_memory_bus", BATCH), |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let bus = MemoryBus::new();
                let count = Arc::new(AtomicU64::new(0));
                let consumer = {
                    let count = count.clone();
                    ms_bus::consumer::Consumer::new(
                        ms_bus::Subscription::events(TOPIC, "reporting").expect("valid"),
                    )
                    .partition_key_order(false)
                    .serve(
                        &bus,
                        tower::service_fn(move |_m: ms_bus::consumer::Message| {
                            count.fetch_add(1, Ordering::Relaxed);
                            std::future::ready(Ok::<(), std::convert::Infallible>(()))
                        }),
                    )
                    .await
                    .expect("consumer")
                };
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    count.store(0, Ordering::Relaxed);
                    refill(outbox, &db.pool, ROWS, Keys::PerInvoice).await;
                    let start = Instant::now();
                    let handle = Relay::builder(outbox, &db.pool, bus.clone())
                        .batch_size(BATCH)
                        .concurrency(CONCURRENCY)
                        .build()
                        .spawn();
                    wait_published(&handle, ROWS).await;
                    while count.load(Ordering::Relaxed) < ROWS {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    measured += start.elapsed();
                    handle.shutdown().await.expect("relay shutdown");
                }
                consumer.shutdown().await.expect("consumer shutdown");
                measured
            });
        });
        group.finish();
    }

    /// PostgreSQL → NATS JetStream through ms-bus's adapter, batches of 1,000, the same
    /// 1,024 acks in flight as the raw publisher.
    /// ms-bus's NATS adapter with its own prefix (so its stream is this process's), the same
    /// 1,024 acks in flight as the raw publisher.
    pub(super) struct OursNats {
        bus: NatsBus,
        stream_name: String,
    }

    impl OursNats {
        pub(super) fn new(rt: &tokio::runtime::Runtime, stream: &BenchStream) -> Self {
            let prefix = format!("benchoutbox{}", std::process::id());
            let bus = rt.block_on(async {
                let bus = NatsBus::builder(stream.js.client().clone())
                    .prefix(&prefix)
                    .expect("valid prefix")
                    .publish_window(super::ACK_WINDOW)
                    .build();
                bus.ensure_topic(TOPIC).await.expect("the topic's stream");
                bus
            });
            let stream_name = format!("{prefix}_EV_{}", TOPIC.replace('.', "_"));
            Self { bus, stream_name }
        }

        /// One full-table drain into JetStream (the stream purged first, not measured).
        pub(super) async fn drain(
            &self,
            stream: &BenchStream,
            outbox: &Outbox<sqlx::Postgres>,
            pool: &sqlx::PgPool,
            rows: u64,
            keys: Keys,
        ) -> Duration {
            let js_stream = stream
                .js
                .get_stream(&self.stream_name)
                .await
                .expect("stream");
            js_stream.purge().await.expect("purge");
            drain(outbox, pool, self.bus.clone(), BATCH, rows, keys).await
        }
    }

    /// One full-table drain from PostgreSQL into the in-process sink, batches of 1,000.
    pub(super) async fn drain_pg_sink(
        outbox: &Outbox<sqlx::Postgres>,
        pool: &sqlx::PgPool,
        rows: u64,
        keys: Keys,
    ) -> Duration {
        drain(outbox, pool, Arc::new(Sink::default()), BATCH, rows, keys).await
    }

    /// PostgreSQL → NATS JetStream through ms-bus's adapter, batches of 1,000.
    pub(super) fn ours_pg_nats(
        c: &mut Criterion,
        rt: &tokio::runtime::Runtime,
        db: &BenchDb,
        outbox: &Outbox<sqlx::Postgres>,
        stream: &BenchStream,
        nats: &OursNats,
    ) {
        let mut group = c.benchmark_group("outbox_ours");
        group.sample_size(10);
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Elements(ROWS));
        group.bench_function(BenchmarkId::new("pg_jetstream", BATCH), |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    measured += nats
                        .drain(stream, outbox, &db.pool, ROWS, Keys::PerInvoice)
                        .await;
                }
                measured
            });
        });
        group.finish();
    }

    /// SQLite (a file, WAL) → in-process sink, batches of 1,000.
    pub(super) fn ours_sqlite_memory(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("outbox.db"))
            .create_if_missing(true);
        let (pool, outbox) = rt.block_on(async {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .expect("SQLite");
            let outbox = Outbox::<sqlx::Sqlite>::new(TableName::new("ms_outbox").expect("valid"));
            outbox.migrate(&pool).await.expect("migrate");
            (pool, outbox)
        });
        let mut group = c.benchmark_group("outbox_ours");
        group.sample_size(10);
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Elements(ROWS));
        group.bench_function(BenchmarkId::new("sqlite_memory_sink", BATCH), |b| {
            b.to_async(rt).iter_custom(|iters| {
                let (pool, outbox) = (&pool, &outbox);
                async move {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        let sink = Arc::new(Sink::default());
                        measured +=
                            drain(outbox, pool, sink.clone(), BATCH, ROWS, Keys::PerInvoice).await;
                    }
                    measured
                }
            });
        });
        group.finish();
        rt.block_on(pool.close());
    }

    /// Commit-to-publish latency with LISTEN/NOTIFY wake-up: a writer commits one event per
    /// millisecond for 5 s while the relay runs; per event, from the writer's `commit()`
    /// returning to the sink receiving it. Criterion has no percentiles: printed on stderr.
    ///
    /// With `relay_async_commit`, the relay's sessions run with `synchronous_commit = off`
    /// (a bench-side experiment, not a relay setting): its commit then deletes published rows
    /// without waiting for an fsync; a crash could lose that delete, and the rows would be
    /// published again, which at-least-once delivery allows.
    pub(super) fn ours_latency_1000_per_s(
        rt: &tokio::runtime::Runtime,
        db: &BenchDb,
        outbox: &Outbox<sqlx::Postgres>,
        relay_async_commit: bool,
    ) {
        const EVENTS: u32 = 5_000;
        const WRITER_CONNECTIONS: u32 = 16;
        let name = if relay_async_commit {
            "outbox_ours/latency_1000_per_s_relay_async_commit"
        } else {
            "outbox_ours/latency_1000_per_s"
        };
        rt.block_on(async {
            db.pool
                .execute(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {}",
                    outbox.table().quoted()
                )))
                .await
                .expect("empty the outbox");
            let sink = Arc::new(Sink::timed());
            let relay_pool = if relay_async_commit {
                db.async_commit_pool(8).await
            } else {
                db.pool(8).await
            };
            let handle = Relay::builder(outbox, &relay_pool, sink.clone())
                .batch_size(BATCH)
                .concurrency(CONCURRENCY)
                .build()
                .spawn();
            // Let the relay's listener connect before the first commit.
            tokio::time::sleep(Duration::from_millis(200)).await;
            // One transaction per tick, each in its own task: the rate holds even when a commit
            // (an fsync) takes longer than a millisecond. The writers have a pool of their own:
            // queued behind a backlog of writers, the relay would measure the pool, not itself.
            let writer_pool = db.pool(WRITER_CONNECTIONS).await;
            let mut writers = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let start = Instant::now();
            for message in messages(u64::from(EVENTS), Keys::PerInvoice) {
                tick.tick().await;
                let (pool, outbox) = (writer_pool.clone(), outbox.clone());
                writers.spawn(async move {
                    let id = message.envelope().id().to_owned();
                    let mut tx = pool.begin().await.expect("begin");
                    outbox.enqueue(&mut *tx, message).await.expect("enqueue");
                    tx.commit().await.expect("commit");
                    (id, Instant::now())
                });
            }
            let committed = writers.join_all().await;
            let writing = start.elapsed();
            writer_pool.close().await;
            wait_published(&handle, u64::from(EVENTS)).await;
            handle.shutdown().await.expect("relay shutdown");
            relay_pool.close().await;
            let arrivals: HashMap<String, Instant> = sink
                .arrivals
                .as_ref()
                .expect("timed sink")
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect();
            let mut latencies: Vec<Duration> = committed
                .iter()
                .map(|(id, at)| arrivals[id].saturating_duration_since(*at))
                .collect();
            latencies.sort_unstable();
            // The nearest-rank percentile, in milliseconds.
            let at = |percent: usize| {
                let index = ((latencies.len() - 1) * percent).div_ceil(100);
                latencies[index].as_secs_f64() * 1_000.0
            };
            eprintln!(
                "{name}: {EVENTS} events committed one by one in {:.2} s ({:.0} events/s), {WRITER_CONNECTIONS} writer connections, relay batch {BATCH}, concurrency {CONCURRENCY} on a pool of its own, LISTEN/NOTIFY",
                writing.as_secs_f64(),
                f64::from(EVENTS) / writing.as_secs_f64()
            );
            eprintln!("{name}: p50 = {:.3} ms", at(50));
            eprintln!("{name}: p90 = {:.3} ms", at(90));
            eprintln!("{name}: p99 = {:.3} ms", at(99));
            eprintln!(
                "{name}: max = {:.3} ms",
                at(100)
            );
        });
    }
}

/// Rounds of the paired comparison.
const PAIRED_ROUNDS: usize = 7;
/// Keys of the paired JetStream round's few-keys drain: 20,000 rows over 64 keys, two keys per
/// shard, so each batch of 1,000 holds about two keys.
const FEW_KEYS: u64 = 64;

/// The goals compare ours with limits measured minutes apart by criterion; on a shared
/// machine the load moves in between. This run measures the limit, ours and the peer back to
/// back in each round, and prints each round's ratios and their medians: the load cancels out
/// of a ratio as long as it holds for one round (about a second).
fn paired(
    rt: &tokio::runtime::Runtime,
    db: &BenchDb,
    text: &str,
    outbox: &ms_outbox::Outbox<sqlx::Postgres>,
    peer: &peer::Peer,
    nats: Option<(&BenchStream, &ours::OursNats)>,
) {
    rt.block_on(async {
        let body = bytes::Bytes::from(text.to_owned());
        let (mut to_drain, mut one_key_to_drain, mut to_peer, mut to_js, mut peer_to_limit) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut few_keys_to_js, mut one_key_to_js) = (Vec::new(), Vec::new());
        for round in 1..=PAIRED_ROUNDS {
            refill(&db.pool, text, ROWS).await;
            let mut conn = db.pool.acquire().await.expect("connection");
            let start = Instant::now();
            assert_eq!(raw_drain(&mut conn, 1_000).await, ROWS);
            let raw = rate(ROWS, start.elapsed());
            drop(conn);
            let ours = rate(
                ROWS,
                ours::drain_pg_sink(outbox, &db.pool, ROWS, ours::Keys::PerInvoice).await,
            );
            let one_key = rate(
                ROWS,
                ours::drain_pg_sink(outbox, &db.pool, ROWS, ours::Keys::One).await,
            );
            let theirs = rate(ROWS, peer.drain_memory(ROWS).await);
            eprintln!(
                "outbox_paired/memory round {round}: raw drain {raw:.0}/s, ours {ours:.0}/s ({:.0} % of raw), ours with one key {one_key:.0}/s ({:.0} % of raw), outbox-postgres {theirs:.0}/s ({:.0} % of raw)",
                100.0 * ours / raw,
                100.0 * one_key / raw,
                100.0 * theirs / raw
            );
            to_drain.push(ours / raw);
            one_key_to_drain.push(one_key / raw);
            to_peer.push(ours / theirs);
            if let Some((stream, nats)) = nats {
                let ids = fresh_ids(ROWS);
                stream.purge().await;
                let start = Instant::now();
                raw_publish(stream, &ids, &body).await;
                let raw_js = rate(ROWS, start.elapsed());
                let limit = raw.min(raw_js);
                let drain_js =
                    |keys| async move { rate(ROWS, nats.drain(stream, outbox, &db.pool, ROWS, keys).await) };
                let ours_js = drain_js(ours::Keys::PerInvoice).await;
                let few_keys_js = drain_js(ours::Keys::Few(FEW_KEYS)).await;
                let one_key_js = drain_js(ours::Keys::One).await;
                let theirs_js = rate(ROWS, peer.drain_jetstream(stream, ROWS).await);
                eprintln!(
                    "outbox_paired/jetstream round {round}: raw publish {raw_js:.0}/s, limit min(drain, publish) {limit:.0}/s, ours {ours_js:.0}/s ({:.0} % of limit), ours with {FEW_KEYS} keys {few_keys_js:.0}/s ({:.0} %), ours with one key {one_key_js:.0}/s ({:.0} %), outbox-postgres {theirs_js:.0}/s ({:.0} % of limit)",
                    100.0 * ours_js / limit,
                    100.0 * few_keys_js / limit,
                    100.0 * one_key_js / limit,
                    100.0 * theirs_js / limit
                );
                to_js.push(ours_js / limit);
                few_keys_to_js.push(few_keys_js / limit);
                one_key_to_js.push(one_key_js / limit);
                peer_to_limit.push(theirs_js / limit);
            }
        }
        eprintln!(
            "outbox_paired: median over {PAIRED_ROUNDS} rounds: PostgreSQL → in-process sink, ours = {:.0} % of the raw drain (goal ≥ 80 %), {:.2}× outbox-postgres; ours with one key (one shard, as the raw drain) = {:.0} % of the raw drain",
            100.0 * median(to_drain),
            median(to_peer),
            100.0 * median(one_key_to_drain)
        );
        if !to_js.is_empty() {
            eprintln!(
                "outbox_paired: median over {PAIRED_ROUNDS} rounds: PostgreSQL → JetStream, ours = {:.0} % of min(raw drain, raw publish) (goal ≥ 70 %), ours with {FEW_KEYS} keys = {:.0} %, ours with one key = {:.0} %, outbox-postgres = {:.0} %",
                100.0 * median(to_js),
                100.0 * median(few_keys_to_js),
                100.0 * median(one_key_to_js),
                100.0 * median(peer_to_limit)
            );
        }
    });
}

fn outbox(c: &mut Criterion) {
    let rt = runtime();
    let text = envelope_text();
    eprintln!(
        "outbox bench: every row carries a {}-byte envelope: {text}",
        text.len()
    );
    let db = BenchDb::create(&rt, "outbox", "outbox PostgreSQL groups");
    let stream = BenchStream::create(&rt);
    if let Some(db) = &db {
        rt.block_on(async {
            ms_outbox::Outbox::<sqlx::Postgres>::new(
                ms_outbox::TableName::new(RAW_TABLE).expect("a valid table name"),
            )
            .migrate(&db.pool)
            .await
            .expect("ms-outbox's migration");
        });
        raw_pg_drain(c, &rt, db, &text);
    }
    if let Some(stream) = &stream {
        raw_jetstream_publish(c, &rt, stream, &text);
    }
    if let Some(db) = &db {
        let peer = peer::Peer::setup(&rt, db, &text);
        peer::bench(c, &rt, &peer, stream.as_ref());
        let outbox = ours::postgres_outbox(&rt, db);
        ours::ours_pg_memory(c, &rt, db, &outbox);
        let nats = stream.as_ref().map(|s| ours::OursNats::new(&rt, s));
        if let (Some(stream), Some(nats)) = (&stream, &nats) {
            ours::ours_pg_nats(c, &rt, db, &outbox, stream, nats);
        }
        if selected("outbox_ours/latency_1000_per_s") {
            ours::ours_latency_1000_per_s(&rt, db, &outbox, false);
        }
        if selected("outbox_ours/latency_1000_per_s_relay_async_commit") {
            ours::ours_latency_1000_per_s(&rt, db, &outbox, true);
        }
        if selected("outbox_paired") {
            paired(
                &rt,
                db,
                &text,
                &outbox,
                &peer,
                stream.as_ref().zip(nats.as_ref()),
            );
        }
    }
    ours::ours_sqlite_memory(c, &rt);
    // `db` and `stream` clean up when dropped, here or while a panic unwinds.
}

criterion_group!(benches, outbox);
criterion_main!(benches);
