//! ms-outbox's scheduled messages: what a million rows waiting in the future cost the relay,
//! and how late a due message is published, all in the same run, on PostgreSQL and SQLite.
//!
//! Each backend has two outboxes in one database: `ms_outbox_none`, whose scheduled table is
//! empty, and `ms_outbox_future`, whose scheduled table holds 1,000,000 rows due from tomorrow
//! on (one second apart, ~200-byte envelopes, filled by one statement in one transaction:
//! `generate_series` on PostgreSQL, a recursive CTE on SQLite; not measured, then `ANALYZE`).
//! The same relay (2 workers, batches of 1,000, into an in-process sink that counts what it is
//! given, as `outbox`'s `pg_memory_sink`) runs on each:
//!
//! - `outbox_schedule/{pg,sqlite}_immediate/{none,1M_future}`: from a full outbox table of
//!   20,000 immediate rows to the relay's last commit.
//! - `outbox_schedule/{pg,sqlite}_due/{none,1M_future}`: from 20,000 scheduled rows already due
//!   (due a second ago) to the relay's last commit: the timer moves them into the outbox in
//!   rounds of 1,000 and the workers publish them, next to the million that are not due.
//! - `outbox_schedule_paired/{pg,sqlite}` (printed on stderr): the four drains back to back in
//!   each of 5 rounds, each round's ratio `1M_future` / `none` and their medians: the load of a
//!   shared machine moves between criterion's groups, minutes apart, and cancels out of a
//!   ratio measured within a second.
//! - `outbox_schedule/{pg,sqlite}_lateness_1000_per_s/{none,1M_future}` (printed on stderr, not
//!   a criterion figure): 5,000 messages due one per millisecond (1,000 per second for 5 s),
//!   scheduled 2 s ahead in transactions of 500 while the relay runs with its defaults; per
//!   message, lateness = the wall-clock time the sink receives it − its due time; the
//!   distribution (min, p50, p90, p99, max) and the count published before their due time
//!   (must be 0).
//!
//! Run: `cargo bench -p ms-benches --bench outbox_schedule -- --warm-up-time 1
//! --measurement-time 3`. PostgreSQL comes from `MS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the bench creates its own database
//! `ms_bench_outbox_schedule_<pid>` and drops it at the end (a group whose server does not
//! answer is skipped with a line on stderr). SQLite is a file in WAL mode in a temporary
//! directory.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use futures_util::future::BoxFuture;
use ms_benches::{BenchDb, median, rate, selected};
use ms_bus::{BusError, CommandSender, Envelope, EventPublisher};
use ms_outbox::{Backend, Outbox, OutboxMessage, Relay, RelayHandle, TableName};
use sqlx::{AssertSqlSafe, Executor as _};
use time::OffsetDateTime;

/// Rows drained per measured iteration.
const ROWS: u64 = 20_000;
/// Rows waiting in the future in the `1M_future` outbox's scheduled table.
const FUTURE: u64 = 1_000_000;
/// Rows per relay transaction.
const BATCH: usize = 1_000;
/// Relay workers.
const CONCURRENCY: usize = 2;
/// The topic every row is published to.
const TOPIC: &str = "invoicing.invoice";
/// Messages per enqueueing transaction: on PostgreSQL each distinct key holds an advisory lock
/// until commit, and the default lock table runs out with thousands of keys in one
/// transaction (as in `outbox`).
const ENQUEUE_CHUNK: usize = 500;
/// Rounds of the paired comparison.
const PAIRED_ROUNDS: usize = 5;
/// Messages of the lateness run, due one per millisecond.
const LATENESS_MESSAGES: u32 = 5_000;
/// How far ahead the lateness run schedules its first message: enqueueing all of them must be
/// done by then, or the first ones would be late because they were written late.
const LATENESS_LEAD: Duration = Duration::from_secs(2);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One invoice event, a fresh id.
fn message(n: u64) -> OutboxMessage {
    let envelope = Envelope::builder("invoicing.invoice.created", "/invoicing")
        .subject(format!("invoice-{n}"))
        .json_data(&serde_json::json!({ "amount_cents": 129_900 }))
        .expect("serializable data")
        .build()
        .expect("valid envelope");
    OutboxMessage::event(TOPIC, envelope)
}

/// The in-process sink: counts what it is given and, for the lateness run, when (wall clock,
/// to compare with due times).
#[derive(Default)]
struct Sink {
    delivered: AtomicU64,
    arrivals: Option<Mutex<Vec<(String, OffsetDateTime)>>>,
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
            let now = OffsetDateTime::now_utc();
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

/// What a drain starts from.
#[derive(Clone, Copy)]
enum Load {
    /// Immediate rows in the outbox table.
    Immediate,
    /// Scheduled rows due a second ago, in the scheduled table.
    Due,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Self::Immediate => "immediate",
            Self::Due => "due",
        }
    }
}

/// A backend's two outboxes: the same schema, one with an empty scheduled table, one with
/// [`FUTURE`] rows in it.
struct Outboxes<DB: Backend> {
    pool: sqlx::Pool<DB>,
    none: Outbox<DB>,
    future: Outbox<DB>,
    /// `"pg"` or `"sqlite"`, the figures' prefix.
    label: &'static str,
}

impl<DB: Backend> Outboxes<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    /// Migrates both outboxes and fills the future one's scheduled table (not measured).
    async fn setup(pool: sqlx::Pool<DB>, label: &'static str) -> Self {
        let none = Outbox::<DB>::new(TableName::new("ms_outbox_none").expect("valid"));
        let future = Outbox::<DB>::new(TableName::new("ms_outbox_future").expect("valid"));
        none.migrate(&pool).await.expect("migrate");
        future.migrate(&pool).await.expect("migrate");
        let outboxes = Self {
            pool,
            none,
            future,
            label,
        };
        outboxes.fill_future().await;
        outboxes
    }

    /// The scheduled table of `outbox`: the migration names it `<table>_scheduled`.
    fn scheduled_table(outbox: &Outbox<DB>) -> String {
        format!(r#""{}_scheduled""#, outbox.table().table())
    }

    fn postgres() -> bool {
        <DB as sqlx::Database>::NAME == "PostgreSQL"
    }

    /// One message scheduled through the API for tomorrow (so its row is exactly what an
    /// application writes), then copied server-side in one statement into [`FUTURE`] rows, a
    /// second apart, each its own id and key.
    async fn fill_future(&self) {
        let tomorrow = OffsetDateTime::now_utc() + time::Duration::days(1);
        let mut tx = self.pool.begin().await.expect("begin");
        self.future
            .enqueue(&mut *tx, message(0).deliver_at(tomorrow))
            .await
            .expect("enqueue the template");
        tx.commit().await.expect("commit");
        let table = Self::scheduled_table(&self.future);
        let copies = i64::try_from(FUTURE - 1).expect("row count");
        let start = Instant::now();
        let fill = if Self::postgres() {
            format!(
                "INSERT INTO {table} (message_id, shard, partition_key, key_lock, kind, \
                     destination, envelope, created_at, due_at) \
                 SELECT t.message_id || '-' || g, t.shard, t.partition_key || '-' || g, \
                     t.key_lock, t.kind, t.destination, t.envelope, t.created_at, \
                     t.due_at + g * interval '1 second' \
                 FROM {table} t CROSS JOIN generate_series(1, {copies}) AS g"
            )
        } else {
            format!(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {copies}) \
                 INSERT INTO {table} (message_id, shard, partition_key, key_lock, kind, \
                     destination, envelope, created_at, due_at) \
                 SELECT t.message_id || '-' || n, t.shard, t.partition_key || '-' || n, \
                     t.key_lock, t.kind, t.destination, t.envelope, t.created_at, \
                     t.due_at + n * 1000 \
                 FROM {table} t, g"
            )
        };
        // One statement is one transaction on both backends.
        self.pool
            .execute(AssertSqlSafe(fill))
            .await
            .expect("fill the future rows");
        self.pool
            .execute(AssertSqlSafe(format!("ANALYZE {table}")))
            .await
            .expect("analyze");
        let backlog = self.future.backlog(&self.pool).await.expect("backlog");
        assert_eq!(backlog.scheduled, FUTURE);
        eprintln!(
            "outbox_schedule/{}: {FUTURE} future rows written in {:.1} s (not measured)",
            self.label,
            start.elapsed().as_secs_f64()
        );
    }

    /// Empties the outbox table and writes [`ROWS`] rows for `load` (not measured).
    async fn refill(&self, outbox: &Outbox<DB>, load: Load) {
        let table = outbox.table().quoted();
        let empty = if Self::postgres() {
            "TRUNCATE"
        } else {
            "DELETE FROM"
        };
        self.pool
            .execute(AssertSqlSafe(format!("{empty} {table}")))
            .await
            .expect("empty the outbox");
        let past = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        let mut messages = (0..ROWS)
            .map(|n| match load {
                Load::Immediate => message(n),
                Load::Due => message(n).deliver_at(past),
            })
            .peekable();
        while messages.peek().is_some() {
            let mut tx = self.pool.begin().await.expect("begin");
            outbox
                .enqueue_all(&mut *tx, messages.by_ref().take(ENQUEUE_CHUNK))
                .await
                .expect("enqueue");
            tx.commit().await.expect("commit");
        }
        // Current statistics, as autovacuum keeps them on a live table.
        let analyze = match load {
            Load::Immediate => table,
            Load::Due => Self::scheduled_table(outbox),
        };
        self.pool
            .execute(AssertSqlSafe(format!("ANALYZE {analyze}")))
            .await
            .expect("analyze");
    }

    /// One drain of [`ROWS`] rows to the relay's last commit; the time from the relay's start.
    async fn drain(&self, outbox: &Outbox<DB>, load: Load) -> Duration {
        self.refill(outbox, load).await;
        let sink = Arc::new(Sink::default());
        let start = Instant::now();
        let handle = Relay::builder(outbox, &self.pool, sink.clone())
            .batch_size(BATCH)
            .concurrency(CONCURRENCY)
            .build()
            .spawn();
        wait_published(&handle, ROWS).await;
        let elapsed = start.elapsed();
        handle.shutdown().await.expect("relay shutdown");
        assert!(sink.delivered.load(Ordering::Relaxed) >= ROWS);
        elapsed
    }

    fn outbox(&self, future: bool) -> &Outbox<DB> {
        if future { &self.future } else { &self.none }
    }

    fn bench(&self, c: &mut Criterion, rt: &tokio::runtime::Runtime) {
        let mut group = c.benchmark_group("outbox_schedule");
        group.sample_size(10);
        // Each iteration drains a whole table: flat sampling keeps it to one per sample.
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::Elements(ROWS));
        for load in [Load::Immediate, Load::Due] {
            for future in [false, true] {
                let id = BenchmarkId::new(
                    format!("{}_{}", self.label, load.name()),
                    if future { "1M_future" } else { "none" },
                );
                group.bench_function(id, |b| {
                    b.to_async(rt).iter_custom(|iters| async move {
                        let mut measured = Duration::ZERO;
                        for _ in 0..iters {
                            measured += self.drain(self.outbox(future), load).await;
                        }
                        measured
                    });
                });
            }
        }
        group.finish();
    }

    /// The four drains back to back per round; each round's ratio future / none.
    async fn paired(&self) {
        let name = format!("outbox_schedule_paired/{}", self.label);
        let (mut immediate, mut due) = (Vec::new(), Vec::new());
        for round in 1..=PAIRED_ROUNDS {
            let mut line = format!("{name} round {round}:");
            for (load, ratios) in [(Load::Immediate, &mut immediate), (Load::Due, &mut due)] {
                let none = rate(ROWS, self.drain(&self.none, load).await);
                let future = rate(ROWS, self.drain(&self.future, load).await);
                ratios.push(future / none);
                // Writing to a String cannot fail.
                let _ = write!(
                    line,
                    " {} none {none:.0}/s, 1M_future {future:.0}/s ({:.0} %);",
                    load.name(),
                    100.0 * future / none
                );
            }
            eprintln!("{line}");
        }
        eprintln!(
            "{name}: median over {PAIRED_ROUNDS} rounds, 1M_future / none: immediate rows {:.0} %, due scheduled rows {:.0} %",
            100.0 * median(immediate),
            100.0 * median(due)
        );
    }

    /// [`LATENESS_MESSAGES`] messages due one per millisecond, scheduled ahead while the
    /// relay runs with its defaults; lateness = arrival at the sink − due time.
    async fn lateness(&self, future: bool) {
        let name = format!(
            "outbox_schedule/{}_lateness_1000_per_s/{}",
            self.label,
            if future { "1M_future" } else { "none" }
        );
        let outbox = self.outbox(future);
        self.pool
            .execute(AssertSqlSafe(format!(
                "DELETE FROM {}",
                outbox.table().quoted()
            )))
            .await
            .expect("empty the outbox");
        let sink = Arc::new(Sink::timed());
        let handle = Relay::builder(outbox, &self.pool, sink.clone())
            .batch_size(BATCH)
            .concurrency(CONCURRENCY)
            .build()
            .spawn();
        // Let the relay's listener connect before the first commit.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = OffsetDateTime::now_utc() + LATENESS_LEAD;
        let mut due = HashMap::with_capacity(LATENESS_MESSAGES as usize);
        let mut messages = (0..LATENESS_MESSAGES)
            .map(|n| {
                let at = first + time::Duration::milliseconds(i64::from(n));
                let message = message(u64::from(n)).deliver_at(at);
                let id = message.envelope().id().to_owned();
                due.insert(id, message.due_at().expect("scheduled"));
                message
            })
            .collect::<Vec<_>>()
            .into_iter()
            .peekable();
        while messages.peek().is_some() {
            let mut tx = self.pool.begin().await.expect("begin");
            outbox
                .enqueue_all(&mut *tx, messages.by_ref().take(ENQUEUE_CHUNK))
                .await
                .expect("enqueue");
            tx.commit().await.expect("commit");
        }
        let written = OffsetDateTime::now_utc();
        assert!(
            written < first,
            "{name}: scheduling took longer than the lead of {LATENESS_LEAD:?}"
        );
        tokio::time::timeout(
            Duration::from_secs(120),
            wait_published(&handle, u64::from(LATENESS_MESSAGES)),
        )
        .await
        .expect("every due message published within 2 minutes");
        handle.shutdown().await.expect("relay shutdown");
        let arrivals = sink
            .arrivals
            .as_ref()
            .expect("timed sink")
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // The first arrival of each message (at least once: a redelivery is not lateness).
        let mut first_arrival: HashMap<&str, OffsetDateTime> = HashMap::new();
        for (id, at) in &arrivals {
            first_arrival.entry(id.as_str()).or_insert(*at);
        }
        let mut lateness: Vec<f64> = due
            .iter()
            .map(|(id, due)| (first_arrival[id.as_str()] - *due).as_seconds_f64() * 1_000.0)
            .collect();
        lateness.sort_by(f64::total_cmp);
        let early = lateness.iter().filter(|late| **late < 0.0).count();
        // The nearest-rank percentile, in milliseconds.
        let at = |percent: usize| lateness[((lateness.len() - 1) * percent).div_ceil(100)];
        eprintln!(
            "{name}: {LATENESS_MESSAGES} messages due 1 ms apart from {:.1} s after scheduling (written in {:.2} s, transactions of {ENQUEUE_CHUNK}), relay defaults but batch {BATCH}, concurrency {CONCURRENCY}; {} published, {early} before their due time",
            LATENESS_LEAD.as_secs_f64(),
            (written - (first - LATENESS_LEAD)).as_seconds_f64(),
            arrivals.len()
        );
        eprintln!(
            "{name}: lateness min = {:.3} ms, p50 = {:.3} ms, p90 = {:.3} ms, p99 = {:.3} ms, max = {:.3} ms",
            lateness[0],
            at(50),
            at(90),
            at(99),
            at(100)
        );
    }
}

/// Waits until the relay has committed `rows` rows away.
async fn wait_published(handle: &RelayHandle, rows: u64) {
    while handle.status().published < rows {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Everything for one backend: criterion's drains, the paired rounds, the lateness runs.
fn run<DB: Backend>(c: &mut Criterion, rt: &tokio::runtime::Runtime, outboxes: &Outboxes<DB>)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    outboxes.bench(c, rt);
    if selected(&format!("outbox_schedule_paired/{}", outboxes.label)) {
        rt.block_on(outboxes.paired());
    }
    for future in [false, true] {
        let name = format!(
            "outbox_schedule/{}_lateness_1000_per_s/{}",
            outboxes.label,
            if future { "1M_future" } else { "none" }
        );
        if selected(&name) {
            rt.block_on(outboxes.lateness(future));
        }
    }
}

fn outbox_schedule(c: &mut Criterion) {
    let rt = runtime();
    if let Some(db) = BenchDb::create(&rt, "outbox_schedule", "outbox_schedule PostgreSQL groups") {
        let outboxes = rt.block_on(Outboxes::<sqlx::Postgres>::setup(db.pool.clone(), "pg"));
        run(c, &rt, &outboxes);
        rt.block_on(outboxes.pool.close());
        // `db` drops its database here, or while a panic unwinds.
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("outbox.db"))
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .create_if_missing(true);
    let outboxes = rt.block_on(async {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("SQLite");
        Outboxes::<sqlx::Sqlite>::setup(pool, "sqlite").await
    });
    run(c, &rt, &outboxes);
    rt.block_on(outboxes.pool.close());
}

criterion_group!(benches, outbox_schedule);
criterion_main!(benches);
