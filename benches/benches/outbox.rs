//! ms-outbox relay throughput, next to the physical limits and the fastest Rust peer, all in
//! the same run:
//!
//! - `outbox_limits/raw_pg_drain/N`: the raw SQL drain loop alone, one connection, `DELETE …
//!   WHERE id IN (SELECT … ORDER BY id LIMIT N FOR UPDATE SKIP LOCKED) RETURNING …` until the
//!   table is empty, on a table shaped exactly like ms-outbox's. Nothing is published: this is
//!   what PostgreSQL allows a relay to drain, the ceiling of a relay to an in-memory publisher.
//!
//! Every outbox row carries the same CloudEvents structured-JSON envelope of about 200 bytes.
//! Filling the table is not measured; each measured iteration drains a full table to empty.
//!
//! Run: `cargo bench -p ms-benches --bench outbox -- --warm-up-time 1 --measurement-time 3`.
//! PostgreSQL comes from `MS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the bench creates its own database
//! `ms_bench_outbox_<pid>` and drops it at the end. A group whose service does not answer is
//! skipped with a line on stderr.

use std::str::FromStr as _;
use std::time::{Duration, Instant};

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
        .json_data(&serde_json::json!({
            "invoice_id": "inv-1042",
            "customer": "c-77",
            "amount_cents": 129_900,
            "currency": "EUR",
        }))
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
    options: PgConnectOptions,
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
                .connect_with(options.clone())
                .await
                .expect("connect to the bench database")
        });
        Some(Self {
            admin,
            options,
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

fn outbox(c: &mut Criterion) {
    let rt = runtime();
    let text = envelope_text();
    eprintln!(
        "outbox bench: every row carries a {}-byte envelope",
        text.len()
    );
    let Some(db) = BenchDb::create(&rt) else {
        return;
    };
    rt.block_on(async {
        db.pool.execute(CREATE_TABLE).await.expect("create table");
    });
    let _ = &db.options;
    raw_pg_drain(c, &rt, &db, &text);
    db.drop_database(&rt);
}

criterion_group!(benches, outbox);
criterion_main!(benches);
