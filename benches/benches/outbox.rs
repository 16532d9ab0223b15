//! ms-outbox relay throughput, next to the physical limits and the fastest Rust peer, all in
//! the same run:
//!
//! - `outbox_limits/raw_pg_drain/N`: the raw SQL drain loop alone, one connection, `DELETE …
//!   WHERE id IN (SELECT … ORDER BY id LIMIT N FOR UPDATE SKIP LOCKED) RETURNING …` until the
//!   table is empty, on a table shaped exactly like ms-outbox's. Nothing is published: this is
//!   what PostgreSQL allows a relay to drain, the ceiling of a relay to an in-memory publisher.
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
//!   API allows. `…_memory_sink` counts events in process (the fair peer of a relay into an
//!   in-memory publisher).
//!
//! Every outbox row carries the same CloudEvents structured-JSON envelope of about 200 bytes.
//! Filling the table is not measured; each measured iteration drains a full table to empty.
//!
//! Run: `cargo bench -p ms-benches --bench outbox -- --warm-up-time 1 --measurement-time 3`.
//! PostgreSQL comes from `MS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the bench creates its own database
//! `ms_bench_outbox_<pid>` and drops it at the end. NATS comes from `MS_TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`); the bench creates its own stream `MS_BENCH_OUTBOX_<pid>` and
//! deletes it at the end. A group whose service does not answer is
//! skipped with a line on stderr.

use std::collections::VecDeque;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, stream};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ms_bus::Envelope;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, Executor as _};

/// Rows drained per measured iteration with batches of 100 and more.
const ROWS: u64 = 20_000;
/// Rows drained per measured iteration with batches of 1 (one round trip per row).
const ROWS_ONE_BY_ONE: u64 = 2_000;

/// JetStream acks in flight when publishing a batch.
const ACK_WINDOW: usize = 1_024;

/// The outbox table, exactly as ms-outbox's migration creates it.
const CREATE_TABLE: &str = "
CREATE TABLE bench_outbox (
    id BIGSERIAL PRIMARY KEY, shard SMALLINT NOT NULL, partition_key TEXT NOT NULL,
    kind SMALLINT NOT NULL, destination TEXT NOT NULL, envelope TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(), attempts INTEGER NOT NULL DEFAULT 0,
    strikes INTEGER NOT NULL DEFAULT 0, available_at TIMESTAMPTZ, last_attempt_at TIMESTAMPTZ,
    last_error TEXT, published_at TIMESTAMPTZ);
CREATE INDEX ON bench_outbox (shard, id) WHERE published_at IS NULL;";

/// Fills the table server-side: one statement, one commit, not measured.
const FILL: &str = "
INSERT INTO bench_outbox (shard, partition_key, kind, destination, envelope)
SELECT 0, 'invoice-' || (g % 16), 0, 'invoicing.invoice', $1 FROM generate_series(1, $2) AS g";

/// The physical limit: claim, delete and return a batch in one statement.
const DRAIN: &str = "DELETE FROM bench_outbox WHERE id IN (SELECT id FROM bench_outbox \
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, destination, envelope";

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

/// A database of the bench's own, dropped at the end of the run.
struct BenchDb {
    admin: PgConnectOptions,
    /// The server's URL as given (its database is the admin one).
    url: String,
    name: String,
    pool: PgPool,
}

impl BenchDb {
    fn create(rt: &tokio::runtime::Runtime) -> Option<Self> {
        let url = std::env::var("MS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin = PgConnectOptions::from_str(&url).expect("a PostgreSQL URL");
        let name = format!("ms_bench_outbox_{}", std::process::id());
        let connected = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(3),
                sqlx::PgConnection::connect_with(&admin),
            )
            .await
        });
        let Ok(Ok(mut conn)) = connected else {
            eprintln!("SKIPPED outbox PostgreSQL groups: no PostgreSQL at {url}");
            return None;
        };
        let options = admin.clone().database(&name);
        let pool = rt.block_on(async {
            conn.execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
                .await
                .expect("CREATE DATABASE");
            conn.close().await.expect("close");
            PgPoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .expect("connect to the bench database")
        });
        Some(Self {
            admin,
            url,
            name,
            pool,
        })
    }

    fn drop_database(self, rt: &tokio::runtime::Runtime) {
        rt.block_on(async {
            self.pool.close().await;
            let mut conn = sqlx::PgConnection::connect_with(&self.admin)
                .await
                .expect("connect");
            conn.execute(AssertSqlSafe(format!(
                r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
                self.name
            )))
            .await
            .expect("DROP DATABASE");
        });
    }
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
        Some(Self { js, name, subject })
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

    fn delete(self, rt: &tokio::runtime::Runtime) {
        rt.block_on(async {
            self.js
                .delete_stream(&self.name)
                .await
                .expect("delete the bench stream");
        });
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
                let progress = Arc::new(Progress::default());
                let sink = Arc::new(MemorySink(progress.clone()));
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    measured += peer.drain(sink.clone(), &progress, ROWS).await;
                }
                measured
            });
        });
        if let Some(stream) = stream {
            group.bench_function("outbox_postgres_batch_1000_jetstream", |b| {
                b.to_async(rt).iter_custom(|iters| async move {
                    let progress = Arc::new(Progress::default());
                    let sink = Arc::new(JetStreamSink {
                        js: stream.js.clone(),
                        subject: stream.subject.clone(),
                        progress: progress.clone(),
                    });
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        stream.purge().await;
                        measured += peer.drain(sink.clone(), &progress, ROWS).await;
                    }
                    measured
                });
            });
        }
        group.finish();
    }
}

fn outbox(c: &mut Criterion) {
    let rt = runtime();
    let text = envelope_text();
    eprintln!(
        "outbox bench: every row carries a {}-byte envelope: {text}",
        text.len()
    );
    let db = BenchDb::create(&rt);
    let stream = BenchStream::create(&rt);
    if let Some(db) = &db {
        rt.block_on(async {
            db.pool.execute(CREATE_TABLE).await.expect("create table");
        });
        raw_pg_drain(c, &rt, db, &text);
    }
    if let Some(stream) = &stream {
        raw_jetstream_publish(c, &rt, stream, &text);
    }
    if let Some(db) = &db {
        let peer = peer::Peer::setup(&rt, db, &text);
        peer::bench(c, &rt, &peer, stream.as_ref());
    }
    if let Some(stream) = stream {
        stream.delete(&rt);
    }
    if let Some(db) = db {
        db.drop_database(&rt);
    }
}

criterion_group!(benches, outbox);
criterion_main!(benches);
