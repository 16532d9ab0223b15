//! ms-bus on Kafka, each next to raw rdkafka doing the same work in the same run:
//!
//! - `publish_batch`: 1,000 events with the adapter's `publish_batch` (encode, key, send,
//!   await every acknowledgement) against a raw `FutureProducer` with the same settings
//!   (`enable.idempotence=true`, `acks=all`) sending the same records (headers and bytes
//!   encoded once) and awaiting every delivery report.
//! - `consume_commit`: 20,000 records already in a topic, read by a new group: the consumer
//!   runtime over the adapter (key-ordered dispatch, an ack per record, commits of the settled
//!   prefix every 500 ms) with a no-op handler, against a raw `StreamConsumer` loop that
//!   stores each record's offset after "handling" it and auto-commits every 500 ms. Timed from
//!   the first record handled to the last, so the group's join is not measured.
//!
//! Messages: 256 bytes of data and 6 CloudEvents attributes, 1,000 keys.
//!
//! Run: `cargo bench -p ms-benches --bench bus_kafka` (needs a Kafka-protocol broker:
//! `MS_TEST_KAFKA_URL`, `127.0.0.1:9092`, or the tansu ms-testkit starts).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ms_bus::consumer::{Consumer, Message};
use ms_bus::kafka::KafkaBus;
use ms_bus::{CommandSender, Envelope, EventPublisher, Subscription};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const BATCH: usize = 1_000;
const CONSUMED: usize = 20_000;
const KEYS: usize = 1_000;

fn envelope(n: usize) -> Envelope {
    Envelope::builder("bench.thing.happened", "/bench")
        .subject(format!("thing-{n}"))
        .partition_key(format!("key-{}", n % KEYS))
        .data("application/octet-stream", vec![7_u8; 256])
        .build()
        .expect("valid envelope")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The raw producer's headers: what the adapter writes for `envelope(0)` (binary mode).
fn raw_headers(event: &Envelope) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: event.datacontenttype(),
    });
    for (name, value) in ms_bus::codec::binary_headers(event, ms_bus::codec::HeaderValues::Raw) {
        let name = format!("ce_{}", &name[3..]);
        headers = headers.insert(Header {
            key: &name,
            value: Some(value.as_ref()),
        });
    }
    headers
}

struct Setup {
    rt: tokio::runtime::Runtime,
    servers: String,
    prefix: String,
    bus: KafkaBus,
    raw: FutureProducer,
    events: Vec<Envelope>,
}

fn bus(servers: &str, prefix: &str) -> KafkaBus {
    KafkaBus::builder(servers)
        .prefix(prefix)
        .expect("prefix")
        .consumer_set("session.timeout.ms", "6000")
        .consumer_set("heartbeat.interval.ms", "500")
        .build()
        .expect("bus")
}

fn setup() -> Option<Setup> {
    let rt = runtime();
    let Some(kafka) = rt.block_on(ms_testkit::kafka()) else {
        eprintln!("SKIPPED bus_kafka: no Kafka-protocol broker");
        return None;
    };
    let servers = kafka.bootstrap_servers().to_owned();
    let prefix = kafka.prefix().to_owned();
    let bus = rt.block_on(async { bus(&servers, &prefix) });
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("raw producer");
    rt.block_on(bus.ensure_topic("sink")).expect("topic");
    let events = (0..BATCH).map(envelope).collect();
    Some(Setup {
        rt,
        servers,
        prefix,
        bus,
        raw,
        events,
    })
}

async fn raw_publish(
    raw: &FutureProducer,
    topic: &str,
    keys: &[String],
    value: &[u8],
    headers: &OwnedHeaders,
) {
    let mut pending = Vec::with_capacity(keys.len());
    for key in keys {
        let record = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(value)
            .headers(headers.clone());
        pending.push(raw.send_result(record).map_err(|(e, _)| e).expect("queued"));
    }
    for delivery in pending {
        delivery
            .await
            .expect("report")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

fn publish(c: &mut Criterion, s: &Setup) {
    let topic = s.bus.event_topic("sink");
    let headers = raw_headers(&s.events[0]);
    let value = s.events[0].data().to_vec();
    let keys: Vec<String> = s
        .events
        .iter()
        .map(|e| e.ordering_key().to_owned())
        .collect();
    let mut group = c.benchmark_group("kafka_publish_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("ms_bus", |b| {
        b.to_async(&s.rt).iter(|| async {
            s.bus
                .publish_batch("sink", &s.events)
                .await
                .expect("published");
        });
    });
    group.bench_function("raw_future_producer", |b| {
        b.to_async(&s.rt)
            .iter(|| raw_publish(&s.raw, &topic, &keys, &value, &headers));
    });
    group.finish();
}

/// A fresh command topic holding `CONSUMED` records; returns the bus of that topic's prefix.
fn filled(s: &Setup, round: usize) -> (KafkaBus, String) {
    let prefix = format!("{}_c{round}", s.prefix);
    let bus = s.rt.block_on(async { bus(&s.servers, &prefix) });
    let events: Vec<Envelope> = (0..CONSUMED).map(envelope).collect();
    s.rt.block_on(async {
        for chunk in events.chunks(5_000) {
            bus.send_batch("work", chunk).await.expect("filled");
        }
    });
    let topic = bus.command_topic("work");
    (bus, topic)
}

async fn wait_for(count: &AtomicUsize, target: usize) {
    while count.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn consume(c: &mut Criterion, s: &Setup) {
    let mut group = c.benchmark_group("kafka_consume_commit");
    group.throughput(Throughput::Elements(CONSUMED as u64 - 1));
    group.sample_size(10);
    let rounds = AtomicUsize::new(0);
    group.bench_function("ms_bus", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let (bus, _) = filled(s, rounds.fetch_add(1, Ordering::Relaxed));
                total += s.rt.block_on(async {
                    let count = Arc::new(AtomicUsize::new(0));
                    let first = Arc::new(std::sync::Mutex::new(None::<Instant>));
                    let handle = Consumer::new(Subscription::commands("work").expect("name"))
                        .serve(&bus, {
                            let (count, first) = (count.clone(), first.clone());
                            tower::service_fn(move |_m: Message| {
                                first.lock().expect("lock").get_or_insert_with(Instant::now);
                                count.fetch_add(1, Ordering::Relaxed);
                                async { Ok::<_, Infallible>(()) }
                            })
                        })
                        .await
                        .expect("serve");
                    wait_for(&count, CONSUMED).await;
                    let took = first
                        .lock()
                        .expect("lock")
                        .map(|t| t.elapsed())
                        .unwrap_or_default();
                    handle.shutdown().await.expect("shutdown");
                    took
                });
            }
            total
        });
    });
    group.bench_function("raw_stream_consumer", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let round = rounds.fetch_add(1, Ordering::Relaxed);
                let (_bus, topic) = filled(s, round);
                total += s.rt.block_on(async {
                    let consumer: StreamConsumer = ClientConfig::new()
                        .set("bootstrap.servers", &s.servers)
                        .set("group.id", format!("raw-{}-{round}", s.prefix))
                        .set("session.timeout.ms", "6000")
                        .set("heartbeat.interval.ms", "500")
                        .set("auto.offset.reset", "earliest")
                        .set("enable.auto.commit", "true")
                        .set("auto.commit.interval.ms", "500")
                        .set("enable.auto.offset.store", "false")
                        .set("partition.assignment.strategy", "cooperative-sticky")
                        .create()
                        .expect("raw consumer");
                    consumer.subscribe(&[&topic]).expect("subscribe");
                    let mut first = None;
                    for _ in 0..CONSUMED {
                        let message = consumer.recv().await.expect("record");
                        first.get_or_insert_with(Instant::now);
                        consumer
                            .store_offset_from_message(&message)
                            .expect("stored");
                    }
                    first.map(|t: Instant| t.elapsed()).unwrap_or_default()
                });
            }
            total
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let Some(s) = setup() else { return };
    publish(c, &s);
    consume(c, &s);
}

criterion_group!(kafka, benches);
criterion_main!(kafka);
