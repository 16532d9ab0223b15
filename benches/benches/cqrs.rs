//! ms-cqrs projection throughput into a PostgreSQL read model, next to the raw upsert rate
//! measured in the same run:
//!
//! - `raw_upsert/batched_500` (the limit): one connection reads the event log in pages of 500
//!   (`SELECT position, envelope … WHERE position > $1 ORDER BY position LIMIT 500`), decodes
//!   each stored CloudEvents JSON into an `Envelope` and its `data` into the amount, as a
//!   projection must, and upserts it into the read model, 500 upserts per transaction: the
//!   runner's work without its bookkeeping (checkpoints, segments, status).
//! - `raw_upsert/per_event`: the same, one transaction per event.
//! - `cqrs_runner/batch_500/{1,2}`: ms-cqrs's `ProjectionRunner::from_log` with one and two
//!   segments, batches of 500 (a checkpoint per batch, in the batch's transaction), from
//!   `start()` until `wait_until(head)` returns: the runner's start (its tables exist; the
//!   read model's `CREATE TABLE IF NOT EXISTS` and view) is inside the measured time.
//! - `cqrs_runner/batch_1`: the same with batches of 1 (a checkpoint per event).
//! - `cqrs_paired` (printed on stderr): the limits and ours back to back in each of 7
//!   rounds, with each round's ratios and their medians. The goal, ours with a checkpoint per
//!   batch ≥ 60 % of the raw batched rate, is a ratio; on a shared machine the load moves
//!   between criterion's groups, minutes apart, so it is judged on these. Each round also
//!   runs the raw batched loop and ours (batch 500, 1 segment) again with one vCPU kept busy
//!   by a spinning thread (see [`BusyCpu`]: both are bound by round-trip latency, which on a
//!   virtual machine depends on whether the vCPUs were idle).
//!
//! Every event is a CloudEvents envelope of about 200 bytes (`ledger.entry`, the account as
//! subject, `{"amount": n}` as data), appended through `EventLog::append` and sequenced before
//! anything is measured: 20,000 events over 1,000 accounts (2,000 for the one-by-one benches).
//! The read model is one row per account, `total += amount, applied += 1`, by
//! `INSERT … ON CONFLICT (key) DO UPDATE`, for ours and the limit alike (separate tables of the
//! same shape). Before each measured iteration the read model is truncated and the runner's
//! checkpoints are deleted (not measured); after it the read model is checked (every event
//! applied once).
//!
//! Run: `cargo bench -p ms-benches --bench cqrs -- --warm-up-time 1 --measurement-time 3`.
//! PostgreSQL comes from `MS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the bench creates its own database
//! `ms_bench_cqrs_<pid>` and drops it at the end, also after a panic. Without PostgreSQL the
//! bench says so on stderr and measures nothing.

use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use ms_benches::{BenchDb, median, rate, selected};
use ms_bus::Envelope;
use ms_cqrs::{ApplyContext, ApplyError, EventLog, Projection, ProjectionRunner};
use ms_outbox::TableName;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use sqlx::{AssertSqlSafe, Connection as _, Executor as _};

/// Events applied per measured iteration with batches of 500.
const EVENTS: u64 = 20_000;
/// Events applied per measured iteration one by one (a commit, so an fsync, per event).
const EVENTS_ONE_BY_ONE: u64 = 2_000;
/// Accounts the events are spread over (the partition keys).
const KEYS: u64 = 1_000;
/// Events per transaction, ours and the limit's.
const BATCH: usize = 500;
/// The log of [`EVENTS`] events and the one of [`EVENTS_ONE_BY_ONE`].
const LOG: &str = "bench_event_log";
const SMALL_LOG: &str = "bench_event_log_small";
/// The read model's logical name: ours writes `ledger_v1` (version 1, never rebuilt here).
const LEDGER: &str = "ledger";
const OURS_TABLE: &str = "ledger_v1";
/// The limit's read model: the same shape, its own table.
const RAW_TABLE: &str = "raw_ledger";
/// The event type.
const EVENT_TYPE: &str = "ledger.entry";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The `data` of every event.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    amount: i64,
}

/// The `n`-th event: account `n % KEYS`, an amount that varies with `n`.
fn event(n: u64) -> Envelope {
    Envelope::builder(EVENT_TYPE, "/ledger")
        .subject(format!("account-{:04}", n % KEYS))
        .json_data(&Entry {
            amount: i64::try_from(n % 9_973).expect("small") + 100,
        })
        .expect("serializable data")
        .build()
        .expect("valid envelope")
}

fn create_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, total BIGINT NOT NULL, \
         applied BIGINT NOT NULL)"
    )
}

/// The upsert, formatted per event by ours and the limit alike (the way the crate's docs
/// write a projection).
fn upsert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (key, total, applied) VALUES ($1, $2, 1) \
         ON CONFLICT (key) DO UPDATE SET total = {table}.total + excluded.total, \
         applied = {table}.applied + 1"
    )
}

/// The read model: per account, the sum of the amounts and how many events were applied.
struct Ledger {
    name: &'static str,
}

impl Projection<Postgres> for Ledger {
    fn name(&self) -> &str {
        self.name
    }

    fn event_types(&self) -> &[&str] {
        &[EVENT_TYPE]
    }

    fn tables(&self) -> &[&str] {
        &[LEDGER]
    }

    async fn setup(&self, conn: &mut PgConnection, ctx: &ApplyContext) -> Result<(), ApplyError> {
        conn.execute(AssertSqlSafe(create_sql(&ctx.table(LEDGER))))
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope,
        ctx: &ApplyContext,
    ) -> Result<(), ApplyError> {
        let entry: Entry = event.json_data()?;
        let key = event
            .subject()
            .ok_or_else(|| ApplyError::permanent("an entry without an account"))?;
        sqlx::query(AssertSqlSafe(upsert_sql(&ctx.table(LEDGER))))
            .bind(key)
            .bind(entry.amount)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// A log holding `events` events, appended through the API and sequenced (not measured).
async fn fill_log(pool: &PgPool, table: &str, events: u64) -> EventLog<Postgres> {
    let log = EventLog::<Postgres>::new(TableName::new(table).expect("a valid table name"));
    log.migrate(pool).await.expect("the event log's migration");
    let all: Vec<Envelope> = (0..events).map(event).collect();
    for chunk in all.chunks(1_000) {
        let mut tx = pool.begin().await.expect("begin");
        log.append(&mut *tx, chunk).await.expect("append");
        tx.commit().await.expect("commit");
    }
    while log.sequence(pool, 10_000).await.expect("sequence") > 0 {}
    assert_eq!(
        log.head(pool).await.expect("head"),
        i64::try_from(events).expect("small")
    );
    // Current statistics, as autovacuum keeps them on a live table (it is off on this server).
    pool.execute(AssertSqlSafe(format!("ANALYZE {table}")))
        .await
        .expect("analyze");
    log
}

/// Empties a read model (not measured).
async fn truncate(pool: &PgPool, table: &str) {
    pool.execute(AssertSqlSafe(format!("TRUNCATE {table}")))
        .await
        .expect("truncate");
}

/// Checks that every one of `events` events was applied exactly once.
async fn check(pool: &PgPool, table: &str, events: u64) {
    let (rows, applied): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), COALESCE(SUM(applied), 0)::BIGINT FROM {table}"
    )))
    .fetch_one(pool)
    .await
    .expect("read the read model");
    assert_eq!(
        u64::try_from(applied).expect("positive"),
        events,
        "every event applied once"
    );
    assert_eq!(u64::try_from(rows).expect("positive"), KEYS.min(events));
}

/// The limit: read the log in pages of [`BATCH`], decode, upsert, `per_tx` upserts per
/// transaction, on one connection. Returns the events applied.
async fn raw_upsert(conn: &mut PgConnection, log: &str, per_tx: usize) -> u64 {
    let read = format!(
        "SELECT position, envelope FROM {log} WHERE position > $1 ORDER BY position LIMIT $2"
    );
    let page = i64::try_from(BATCH).expect("small");
    let (mut after, mut applied) = (0_i64, 0_u64);
    loop {
        let rows: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(read.clone()))
            .bind(after)
            .bind(page)
            .fetch_all(&mut *conn)
            .await
            .expect("read the log");
        let Some((last, _)) = rows.last() else {
            return applied;
        };
        after = *last;
        for chunk in rows.chunks(per_tx) {
            let mut tx = conn.begin().await.expect("begin");
            for (_, text) in chunk {
                let event = ms_bus::codec::from_json(text.as_bytes()).expect("a stored envelope");
                let entry: Entry = event.json_data().expect("an entry");
                sqlx::query(AssertSqlSafe(upsert_sql(RAW_TABLE)))
                    .bind(event.subject().expect("an account"))
                    .bind(entry.amount)
                    .execute(&mut *tx)
                    .await
                    .expect("upsert");
            }
            tx.commit().await.expect("commit");
            applied += chunk.len() as u64;
        }
    }
}

/// One measured pass of the limit: truncate (not measured), apply everything, check.
///
/// The loop runs in a task on the runtime's workers, as the runner's reader and segments do,
/// not on the thread criterion blocks on.
async fn raw_pass(pool: &PgPool, log: &'static str, events: u64, per_tx: usize) -> Duration {
    truncate(pool, RAW_TABLE).await;
    let mut conn = pool.acquire().await.expect("connection");
    let (applied, took) = tokio::spawn(async move {
        let start = Instant::now();
        let applied = raw_upsert(&mut conn, log, per_tx).await;
        (applied, start.elapsed())
    })
    .await
    .expect("the raw loop");
    assert_eq!(applied, events);
    check(pool, RAW_TABLE, events).await;
    took
}

/// One of ours: a projection name per configuration (the registry keeps its segments).
#[derive(Clone, Copy)]
struct Ours {
    name: &'static str,
    segments: u16,
    batch: usize,
}

const OURS_500_1: Ours = Ours {
    name: "bench_batch_500_segments_1",
    segments: 1,
    batch: BATCH,
};
const OURS_500_2: Ours = Ours {
    name: "bench_batch_500_segments_2",
    segments: 2,
    batch: BATCH,
};
const OURS_1: Ours = Ours {
    name: "bench_batch_1",
    segments: 1,
    batch: 1,
};

/// One measured pass of ours: truncate the read model and delete the checkpoints (not
/// measured), then from `start()` to `wait_until(head)`; the shutdown and the check are not
/// measured.
async fn ours_pass(pool: &PgPool, log: &EventLog<Postgres>, events: u64, ours: Ours) -> Timed {
    truncate(pool, OURS_TABLE).await;
    sqlx::query("DELETE FROM ms_cqrs_checkpoints WHERE name = $1")
        .bind(ours.name)
        .execute(pool)
        .await
        .expect("reset the checkpoints");
    let head = i64::try_from(events).expect("small");
    let start = Instant::now();
    let runner = ProjectionRunner::from_log(pool.clone(), Ledger { name: ours.name }, log)
        .segments(ours.segments)
        .batch_size(ours.batch)
        .start()
        .await
        .expect("start the runner");
    let started = start.elapsed();
    runner.wait_until(head).await.expect("caught up");
    let took = start.elapsed();
    runner.shutdown().await.expect("shutdown");
    let status = runner.status();
    assert_eq!(status.applied, events, "{status:?}");
    check(pool, OURS_TABLE, events).await;
    Timed { took, started }
}

/// How long a pass of ours took, and how much of it `start()` was.
struct Timed {
    took: Duration,
    started: Duration,
}

/// The logs and the tables every group uses.
struct Setup {
    db: BenchDb,
    log: EventLog<Postgres>,
    small_log: EventLog<Postgres>,
}

impl Setup {
    fn new(rt: &tokio::runtime::Runtime) -> Option<Self> {
        let db = BenchDb::create(rt, "cqrs", "cqrs bench")?;
        let (log, small_log) = rt.block_on(async {
            let log = fill_log(&db.pool, LOG, EVENTS).await;
            let small_log = fill_log(&db.pool, SMALL_LOG, EVENTS_ONE_BY_ONE).await;
            db.pool
                .execute(AssertSqlSafe(create_sql(RAW_TABLE)))
                .await
                .expect("the limit's read model");
            // An untimed first start makes the runner's tables and the read model's.
            let first = ProjectionRunner::from_log(
                db.pool.clone(),
                Ledger {
                    name: OURS_500_1.name,
                },
                &small_log,
            )
            .start()
            .await
            .expect("start the runner");
            first.shutdown().await.expect("shutdown");
            (log, small_log)
        });
        Some(Self { db, log, small_log })
    }
}

fn limits(c: &mut Criterion, rt: &tokio::runtime::Runtime, setup: &Setup) {
    let mut group = c.benchmark_group("raw_upsert");
    group.sample_size(10);
    // Each iteration applies a whole log: flat sampling keeps it to one per sample.
    group.sampling_mode(SamplingMode::Flat);
    for (id, log, events, per_tx) in [
        ("batched_500", LOG, EVENTS, BATCH),
        ("per_event", SMALL_LOG, EVENTS_ONE_BY_ONE, 1),
    ] {
        group.throughput(Throughput::Elements(events));
        group.bench_function(id, |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    measured += raw_pass(&setup.db.pool, log, events, per_tx).await;
                }
                measured
            });
        });
    }
    group.finish();
}

fn runner(c: &mut Criterion, rt: &tokio::runtime::Runtime, setup: &Setup) {
    let mut group = c.benchmark_group("cqrs_runner");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for (id, log, events, ours) in [
        (
            BenchmarkId::new("batch_500", 1),
            &setup.log,
            EVENTS,
            OURS_500_1,
        ),
        (
            BenchmarkId::new("batch_500", 2),
            &setup.log,
            EVENTS,
            OURS_500_2,
        ),
        (
            BenchmarkId::from_parameter("batch_1"),
            &setup.small_log,
            EVENTS_ONE_BY_ONE,
            OURS_1,
        ),
    ] {
        group.throughput(Throughput::Elements(events));
        group.bench_function(id, |b| {
            b.to_async(rt).iter_custom(|iters| async move {
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    measured += ours_pass(&setup.db.pool, log, events, ours).await.took;
                }
                measured
            });
        });
    }
    group.finish();
}

/// Rounds of the paired comparison.
const PAIRED_ROUNDS: usize = 7;

/// A thread that spins until dropped, keeping one vCPU from going idle.
///
/// Both loops are bound by round trips to PostgreSQL, one statement at a time, and on this
/// virtual machine a round trip costs far more when the vCPUs sleep between them (waking an
/// idle vCPU is slow): measured here, the raw loop went from about 10 k to 25 k upserts/s with
/// a spinning thread beside it, while the runner, whose reader works ahead of its segments,
/// sat in between. The paired rounds therefore also compare the two with a spinner, where
/// neither pays for waking idle vCPUs.
struct BusyCpu {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyCpu {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BusyCpu {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The limits and ours back to back in each round; each round's ratios and their medians on
/// stderr: the load of a shared machine cancels out of a ratio as long as it holds for one
/// round (a few seconds).
fn paired(rt: &tokio::runtime::Runtime, setup: &Setup) {
    let pool = &setup.db.pool;
    rt.block_on(async {
        let (mut one, mut two, mut by_one, mut busy, mut starts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 1..=PAIRED_ROUNDS {
            let raw = rate(EVENTS, raw_pass(pool, LOG, EVENTS, BATCH).await);
            let pass_1 = ours_pass(pool, &setup.log, EVENTS, OURS_500_1).await;
            let pass_2 = ours_pass(pool, &setup.log, EVENTS, OURS_500_2).await;
            let raw_each = rate(
                EVENTS_ONE_BY_ONE,
                raw_pass(pool, SMALL_LOG, EVENTS_ONE_BY_ONE, 1).await,
            );
            let pass_each = ours_pass(pool, &setup.small_log, EVENTS_ONE_BY_ONE, OURS_1).await;
            let (raw_busy, ours_busy) = {
                let _busy = BusyCpu::start();
                let raw = rate(EVENTS, raw_pass(pool, LOG, EVENTS, BATCH).await);
                let ours = ours_pass(pool, &setup.log, EVENTS, OURS_500_1).await;
                (raw, rate(EVENTS, ours.took))
            };
            let (ours_1, ours_2, ours_each) = (
                rate(EVENTS, pass_1.took),
                rate(EVENTS, pass_2.took),
                rate(EVENTS_ONE_BY_ONE, pass_each.took),
            );
            eprintln!(
                "cqrs_paired round {round}: raw batched {raw:.0}/s, ours batch 500 × 1 segment {ours_1:.0}/s ({:.0} % of raw), × 2 segments {ours_2:.0}/s ({:.0} %); raw per event {raw_each:.0}/s, ours batch 1 {ours_each:.0}/s ({:.0} % of raw per event); start() took {:.1} ms of ours batch 500 × 1",
                100.0 * ours_1 / raw,
                100.0 * ours_2 / raw,
                100.0 * ours_each / raw_each,
                1e3 * pass_1.started.as_secs_f64(),
            );
            eprintln!(
                "cqrs_paired round {round}, one vCPU kept busy: raw batched {raw_busy:.0}/s, ours batch 500 × 1 segment {ours_busy:.0}/s ({:.0} % of raw)",
                100.0 * ours_busy / raw_busy,
            );
            busy.push(ours_busy / raw_busy);
            one.push(ours_1 / raw);
            two.push(ours_2 / raw);
            by_one.push(ours_each / raw_each);
            starts.push(1e3 * pass_1.started.as_secs_f64());
        }
        eprintln!(
            "cqrs_paired: median over {PAIRED_ROUNDS} rounds: ours with a checkpoint per batch of 500 = {:.0} % (1 segment) and {:.0} % (2 segments) of the raw batched upsert rate (goal ≥ 60 %); ours with a checkpoint per event = {:.0} % of the raw per-event rate; start() {:.1} ms",
            100.0 * median(one),
            100.0 * median(two),
            100.0 * median(by_one),
            median(starts),
        );
        eprintln!(
            "cqrs_paired: median over {PAIRED_ROUNDS} rounds with one vCPU kept busy: ours with a checkpoint per batch of 500 (1 segment) = {:.0} % of the raw batched upsert rate",
            100.0 * median(busy),
        );
    });
}

fn cqrs(c: &mut Criterion) {
    let rt = runtime();
    let text = String::from_utf8(ms_bus::codec::to_json(&event(42)).to_vec()).expect("UTF-8");
    eprintln!(
        "cqrs bench: every event is a {}-byte envelope like: {text}",
        text.len()
    );
    let Some(setup) = Setup::new(&rt) else {
        return;
    };
    limits(c, &rt, &setup);
    runner(c, &rt, &setup);
    if selected("cqrs_paired") {
        paired(&rt, &setup);
    }
    // The database is dropped with `setup`, here or while a panic unwinds.
}

criterion_group!(benches, cqrs);
criterion_main!(benches);
