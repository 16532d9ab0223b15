//! ms-outbox's relay into Kafka, next to the raw produce limit, in the same run:
//!
//! - `outbox_kafka/raw_produce`: a raw rdkafka `FutureProducer` with the adapter's settings
//!   (`enable.idempotence=true`, `acks=all`) sending the records the relay would send — each
//!   row's envelope in binary mode (`ce_` headers, `content-type`, the data as the value),
//!   keyed by its partition key, encoded before the clock starts — and awaiting every
//!   delivery report: what the broker and client take, the ceiling of any relay to Kafka.
//! - `outbox_kafka/relay`: ms-outbox's `Relay` (2 workers, batches of 1,000) draining a full
//!   PostgreSQL table of the same rows into ms-bus's Kafka adapter, timed from the relay's
//!   start to its last commit (every row published, acknowledged and deleted).
//!
//! 20,000 rows per iteration, one invoice event each (about 200 bytes of CloudEvents
//! attributes and JSON data), each its own partition key (spread over the outbox's shards).
//! Filling the table is not measured.
//!
//! Run: `cargo bench -p ms-benches --bench outbox_kafka`. PostgreSQL from
//! `MS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`; the bench
//! creates `ms_bench_outbox_kafka_<pid>` and drops it at the end); Kafka from
//! `MS_TEST_KAFKA_URL`, `127.0.0.1:9092`, or the tansu ms-testkit starts. A group whose service
//! does not answer is skipped with a line on stderr.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ms_benches::BenchDb;
use ms_bus::Envelope;
use ms_bus::kafka::KafkaBus;
use ms_outbox::{Outbox, OutboxMessage, Relay, TableName};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Executor as _;

/// Rows per measured iteration.
const ROWS: u64 = 20_000;
/// Rows per relay transaction.
const BATCH: usize = 1_000;
/// Relay workers (shards drained at once).
const CONCURRENCY: usize = 2;
/// The bus topic every row goes to.
const TOPIC: &str = "invoicing.invoice";
/// Messages per enqueueing transaction when filling (each distinct key takes an advisory
/// lock until commit; PostgreSQL's lock table is finite).
const ENQUEUE_CHUNK: usize = 500;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One invoice event per row, fresh ids, each its own key.
fn messages() -> Vec<OutboxMessage> {
    (0..ROWS)
        .map(|n| {
            let envelope = Envelope::builder("invoicing.invoice.created", "/invoicing")
                .subject(format!("invoice-{n}"))
                .json_data(&serde_json::json!({ "amount_cents": 129_900 }))
                .expect("serializable data")
                .build()
                .expect("valid envelope");
            OutboxMessage::event(TOPIC, envelope).partition_key(format!("invoice-{n}"))
        })
        .collect()
}

/// A record as the adapter writes it in binary mode: key, value and headers.
struct RawRecord {
    key: String,
    value: Vec<u8>,
    headers: OwnedHeaders,
}

fn raw_record(message: &OutboxMessage) -> RawRecord {
    let event = message.envelope();
    let mut headers = OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: event.datacontenttype(),
    });
    for (name, value) in ms_bus::codec::binary_headers(event, ms_bus::codec::HeaderValues::Raw) {
        // The HTTP binding's `ce-` names, in the Kafka binding's `ce_` spelling.
        let name = format!("ce_{}", &name[3..]);
        headers = headers.insert(Header {
            key: &name,
            value: Some(value.as_ref()),
        });
    }
    RawRecord {
        key: message.key().to_owned(),
        value: event.data().to_vec(),
        headers,
    }
}

struct Setup {
    rt: tokio::runtime::Runtime,
    db: BenchDb,
    outbox: Outbox<sqlx::Postgres>,
    bus: KafkaBus,
    raw: FutureProducer,
    topic: String,
}

fn setup() -> Option<Setup> {
    let rt = runtime();
    let db = BenchDb::create(&rt, "outbox_kafka", "outbox_kafka")?;
    let Some(kafka) = rt.block_on(ms_testkit::kafka()) else {
        eprintln!("SKIPPED outbox_kafka: no Kafka-protocol broker");
        return None;
    };
    let outbox = Outbox::<sqlx::Postgres>::new(TableName::new("ms_outbox").expect("valid"));
    rt.block_on(outbox.migrate(&db.pool)).expect("migrate");
    let bus = rt.block_on(async {
        KafkaBus::builder(kafka.bootstrap_servers())
            .prefix(kafka.prefix())
            .expect("prefix")
            .build()
            .expect("bus")
    });
    rt.block_on(bus.ensure_topic(TOPIC)).expect("topic");
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("raw producer");
    let topic = bus.event_topic(TOPIC);
    Some(Setup {
        rt,
        db,
        outbox,
        bus,
        raw,
        topic,
    })
}

/// Empties the outbox and enqueues `messages` (not measured).
async fn refill(s: &Setup, messages: Vec<OutboxMessage>) {
    let table = s.outbox.table().quoted();
    s.db.pool
        .execute(sqlx::AssertSqlSafe(format!("TRUNCATE {table}")))
        .await
        .expect("empty the outbox");
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let mut tx = s.db.pool.begin().await.expect("begin");
        s.outbox
            .enqueue_all(&mut *tx, messages.by_ref().take(ENQUEUE_CHUNK))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
    }
    s.db.pool
        .execute(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
        .await
        .expect("analyze");
}

/// One drain of a full table into Kafka: from the relay's start to its last commit.
async fn relay_drain(s: &Setup) -> Duration {
    refill(s, messages()).await;
    let start = Instant::now();
    let handle = Relay::builder(&s.outbox, &s.db.pool, s.bus.clone())
        .batch_size(BATCH)
        .concurrency(CONCURRENCY)
        .build()
        .spawn();
    while handle.status().published < ROWS {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start.elapsed();
    handle.shutdown().await.expect("relay shutdown");
    took
}

/// Sends every record and awaits every delivery report.
async fn raw_produce(s: &Setup, records: &[RawRecord]) -> Duration {
    let start = Instant::now();
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        let future = s
            .raw
            .send_result(
                FutureRecord::to(&s.topic)
                    .key(record.key.as_str())
                    .payload(&record.value)
                    .headers(record.headers.clone()),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
        pending.push(future);
    }
    for delivery in pending {
        delivery
            .await
            .expect("report")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
    start.elapsed()
}

fn outbox_kafka(c: &mut Criterion) {
    let Some(s) = setup() else {
        return;
    };
    let mut group = c.benchmark_group("outbox_kafka");
    group.throughput(Throughput::Elements(ROWS));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("raw_produce", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| {
                    // Fresh ids each time, as the relay's rows have; encoded off the clock.
                    let records: Vec<RawRecord> = messages().iter().map(raw_record).collect();
                    s.rt.block_on(raw_produce(&s, &records))
                })
                .sum()
        });
    });
    group.bench_function("relay", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| s.rt.block_on(relay_drain(&s)))
                .sum()
        });
    });
    group.finish();
    // Dropping `s` drops the bench database.
}

criterion_group!(benches, outbox_kafka);
criterion_main!(benches);
