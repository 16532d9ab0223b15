//! ms-bus throughput: publishing (one at a time, and batched) and end to end (publish →
//! handler → ack), for the memory adapter and for NATS JetStream, each next to its peer doing
//! the same work in the same run: a tokio mpsc channel for memory (the floor of an in-process
//! hand-off between tasks), and the raw async-nats client for NATS (JetStream publishes of the
//! same envelopes with the same headers, set by hand inside the timed loop as an application
//! would, awaiting their acks; a pull consumer acking each message without decoding it).
//!
//! Messages: 256 bytes of data and 6 CloudEvents attributes, as in FACTS.md.
//!
//! Run: `cargo bench -p ms-benches --bench bus -- --warm-up-time 1 --measurement-time 3`
//! (the NATS group needs JetStream on `MS_TEST_NATS_URL`, default `nats://127.0.0.1:4222`,
//! and is skipped with a line on stderr when nothing answers there).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt as _;
use ms_bus::consumer::{Consumer, Message};
use ms_bus::memory::MemoryBus;
use ms_bus::nats::{DEFAULT_PUBLISH_WINDOW, NatsBus};
use ms_bus::{Envelope, EventPublisher, Subscription};

const BATCH: usize = 1_000;
const END_TO_END: usize = 10_000;

fn envelope(n: usize) -> Envelope {
    Envelope::builder("bench.thing.happened", "/bench")
        .subject(format!("thing-{n}"))
        .partition_key(format!("key-{}", n % 16))
        .data("application/octet-stream", vec![7_u8; 256])
        .build()
        .expect("valid envelope")
}

/// Fresh envelopes (new ids, so that JetStream's dedup window never drops one).
fn fresh(n: usize) -> Vec<Envelope> {
    (0..n).map(envelope).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

type Counting = tower::util::ServiceFn<
    Box<dyn FnMut(Message) -> std::future::Ready<Result<(), Infallible>> + Send>,
>;

fn counting_handler(count: &Arc<AtomicUsize>) -> Counting {
    let count = count.clone();
    tower::service_fn(Box::new(move |_m: Message| {
        count.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(()))
    }))
}

async fn wait_for(count: &AtomicUsize, target: usize) {
    while count.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

#[allow(clippy::too_many_lines)] // one group's setup, runs and teardown read best in order
fn memory(c: &mut Criterion) {
    let rt = runtime();
    let events = fresh(END_TO_END);
    let bus = MemoryBus::new();
    let count = Arc::new(AtomicUsize::new(0));
    let consumer = rt.block_on(async {
        Consumer::new(Subscription::events("bench.memory", "g").unwrap())
            .serve(&bus, counting_handler(&count))
            .await
            .unwrap()
    });
    // The same, with per-partition-key lanes off: what ordering by key costs.
    let unordered_count = Arc::new(AtomicUsize::new(0));
    let unordered = rt.block_on(async {
        Consumer::new(Subscription::events("bench.memory.unordered", "g").unwrap())
            .partition_key_order(false)
            .serve(&bus, counting_handler(&unordered_count))
            .await
            .unwrap()
    });
    // Publishes go to a topic with a group whose consumer drains it, so that they do the
    // real work (queueing a copy) without growing the queue.
    let drained = Arc::new(AtomicUsize::new(0));
    let drain = rt.block_on(async {
        Consumer::new(Subscription::events("bench.memory.publish", "g").unwrap())
            .serve(&bus, counting_handler(&drained))
            .await
            .unwrap()
    });
    let mut group = c.benchmark_group("bus_memory");

    group.throughput(Throughput::Elements(1));
    group.bench_function("publish_one", |b| {
        b.to_async(&rt)
            .iter(|| bus.publish("bench.memory.publish", &events[0]));
    });
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("publish_batch", BATCH), |b| {
        b.to_async(&rt)
            .iter(|| bus.publish_batch("bench.memory.publish", &events[..BATCH]));
    });

    group.throughput(Throughput::Elements(END_TO_END as u64));
    group.bench_function(BenchmarkId::new("end_to_end", END_TO_END), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (bus, count, events) = (bus.clone(), count.clone(), &events);
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = count.load(Ordering::Relaxed) + END_TO_END;
                    bus.publish_batch("bench.memory", events).await.unwrap();
                    wait_for(&count, target).await;
                }
                start.elapsed()
            }
        });
    });
    group.bench_function(BenchmarkId::new("end_to_end_unordered", END_TO_END), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (bus, count, events) = (bus.clone(), unordered_count.clone(), &events);
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = count.load(Ordering::Relaxed) + END_TO_END;
                    bus.publish_batch("bench.memory.unordered", events)
                        .await
                        .unwrap();
                    wait_for(&count, target).await;
                }
                start.elapsed()
            }
        });
    });
    group.bench_function(
        BenchmarkId::new("peer_tokio_mpsc_end_to_end", END_TO_END),
        |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let events = &events;
                async move {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Envelope>();
                    let received = Arc::new(AtomicUsize::new(0));
                    let task = tokio::spawn({
                        let received = received.clone();
                        async move {
                            while let Some(e) = rx.recv().await {
                                std::hint::black_box(e);
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                    let start = Instant::now();
                    for round in 1..=iters {
                        for e in events {
                            tx.send(e.clone()).unwrap();
                        }
                        wait_for(&received, usize::try_from(round).unwrap() * END_TO_END).await;
                    }
                    let elapsed = start.elapsed();
                    drop(tx);
                    task.await.unwrap();
                    elapsed
                }
            });
        },
    );
    group.finish();
    rt.block_on(consumer.shutdown()).unwrap();
    rt.block_on(drain.shutdown()).unwrap();
    rt.block_on(unordered.shutdown()).unwrap();
}

/// What an application using the raw client would write for the same envelope: the same
/// headers ms-bus writes, set by hand (the bench's values need no percent-encoding).
fn raw_message(e: &Envelope) -> (async_nats::HeaderMap, bytes::Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", e.id());
    headers.insert("content-type", "application/octet-stream");
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", e.id());
    headers.insert("ce-source", e.source());
    headers.insert("ce-type", e.ty());
    headers.insert("ce-subject", e.subject().unwrap_or_default());
    headers.insert("ce-partitionkey", e.partition_key().unwrap_or_default());
    (headers, e.data().clone())
}

/// Raw JetStream publishes with up to [`DEFAULT_PUBLISH_WINDOW`] acks outstanding, the
/// window ms-bus's batches use.
async fn raw_publish_window(js: &jetstream::Context, subject: &str, envelopes: &[Envelope]) {
    let mut pending: VecDeque<PublishAckFuture> = VecDeque::new();
    for envelope in envelopes {
        let (headers, body) = raw_message(envelope);
        if pending.len() >= DEFAULT_PUBLISH_WINDOW
            && let Some(ack) = pending.pop_front()
        {
            ack.await.unwrap();
        }
        pending.push_back(
            js.publish_with_headers(subject.to_owned(), headers, body)
                .await
                .unwrap(),
        );
    }
    for ack in pending {
        ack.await.unwrap();
    }
}

struct NatsSetup {
    bus: NatsBus,
    js: jetstream::Context,
    prefix: String,
    raw_subject: String,
    raw_e2e_subject: String,
}

fn nats_setup(rt: &tokio::runtime::Runtime) -> Option<NatsSetup> {
    let url =
        std::env::var("MS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let connected = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), async_nats::connect(&url)).await
    });
    let Ok(Ok(client)) = connected else {
        eprintln!("SKIPPED bus_nats: no NATS at {url}");
        return None;
    };
    let prefix = format!("bench{}", std::process::id());
    let (bus, js) = rt.block_on(async {
        let bus = NatsBus::builder(client.clone())
            .prefix(&prefix)
            .unwrap()
            .build();
        (bus, jetstream::new(client))
    });
    let raw_subject = format!("{prefix}.raw.things");
    let raw_e2e_subject = format!("{prefix}.raw.e2e");
    rt.block_on(async {
        bus.ensure_topic("things").await.unwrap();
        js.get_or_create_stream(stream::Config {
            name: format!("{prefix}_RAW"),
            subjects: vec![raw_subject.clone(), raw_e2e_subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    Some(NatsSetup {
        bus,
        js,
        prefix,
        raw_subject,
        raw_e2e_subject,
    })
}

fn nats_publish(c: &mut Criterion, rt: &tokio::runtime::Runtime, setup: &NatsSetup) {
    let mut group = c.benchmark_group("bus_nats_publish");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("publish_one", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let batch = fresh(usize::try_from(iters).unwrap());
            async move {
                let start = Instant::now();
                for e in &batch {
                    setup.bus.publish("things", e).await.unwrap();
                }
                start.elapsed()
            }
        });
    });
    group.bench_function("peer_raw_publish_one", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let batch = fresh(usize::try_from(iters).unwrap());
            async move {
                let start = Instant::now();
                for envelope in &batch {
                    let (headers, body) = raw_message(envelope);
                    let ack = setup
                        .js
                        .publish_with_headers(setup.raw_subject.clone(), headers, body)
                        .await
                        .unwrap();
                    ack.await.unwrap();
                }
                start.elapsed()
            }
        });
    });
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("publish_batch", BATCH), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let batches: Vec<Vec<Envelope>> = (0..iters).map(|_| fresh(BATCH)).collect();
            async move {
                let start = Instant::now();
                for batch in &batches {
                    setup.bus.publish_batch("things", batch).await.unwrap();
                }
                start.elapsed()
            }
        });
    });
    group.bench_function(BenchmarkId::new("peer_raw_publish_batch", BATCH), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let batches: Vec<Vec<Envelope>> = (0..iters).map(|_| fresh(BATCH)).collect();
            async move {
                let start = Instant::now();
                for batch in &batches {
                    raw_publish_window(&setup.js, &setup.raw_subject, batch).await;
                }
                start.elapsed()
            }
        });
    });
    group.finish();
}

fn nats_end_to_end(c: &mut Criterion, rt: &tokio::runtime::Runtime, setup: &NatsSetup) {
    let count = Arc::new(AtomicUsize::new(0));
    let ours = rt.block_on(async {
        Consumer::new(
            Subscription::events("things.e2e", "g")
                .unwrap()
                .prefetch(512),
        )
        .serve(&setup.bus, counting_handler(&count))
        .await
        .unwrap()
    });
    let raw_count = Arc::new(AtomicUsize::new(0));
    let mut raw_messages = rt.block_on(async {
        let stream = setup
            .js
            .get_stream(format!("{}_RAW", setup.prefix))
            .await
            .unwrap();
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                "e2e",
                consumer::pull::Config {
                    durable_name: Some("e2e".into()),
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_policy: consumer::AckPolicy::Explicit,
                    filter_subject: setup.raw_e2e_subject.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        consumer
            .stream()
            .max_messages_per_batch(512)
            .messages()
            .await
            .unwrap()
    });
    let raw_task = rt.spawn({
        let raw_count = raw_count.clone();
        async move {
            while let Some(Ok(message)) = raw_messages.next().await {
                message.ack().await.unwrap();
                raw_count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let mut group = c.benchmark_group("bus_nats_end_to_end");
    group.sample_size(10);
    group.throughput(Throughput::Elements(END_TO_END as u64));
    group.bench_function(BenchmarkId::new("end_to_end", END_TO_END), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let count = count.clone();
            let batches: Vec<Vec<Envelope>> = (0..iters).map(|_| fresh(END_TO_END)).collect();
            async move {
                let start = Instant::now();
                for batch in &batches {
                    let target = count.load(Ordering::Relaxed) + END_TO_END;
                    setup.bus.publish_batch("things.e2e", batch).await.unwrap();
                    wait_for(&count, target).await;
                }
                start.elapsed()
            }
        });
    });
    group.bench_function(BenchmarkId::new("peer_raw_end_to_end", END_TO_END), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let count = raw_count.clone();
            let batches: Vec<Vec<Envelope>> = (0..iters).map(|_| fresh(END_TO_END)).collect();
            async move {
                let start = Instant::now();
                for batch in &batches {
                    let target = count.load(Ordering::Relaxed) + END_TO_END;
                    raw_publish_window(&setup.js, &setup.raw_e2e_subject, batch).await;
                    wait_for(&count, target).await;
                }
                start.elapsed()
            }
        });
    });
    group.finish();
    rt.block_on(ours.shutdown()).unwrap();
    raw_task.abort();
}

fn nats(c: &mut Criterion) {
    let rt = runtime();
    let Some(setup) = nats_setup(&rt) else {
        return;
    };
    nats_publish(c, &rt, &setup);
    nats_end_to_end(c, &rt, &setup);
    rt.block_on(async {
        let mut names = setup.js.stream_names();
        let mut ours = Vec::new();
        while let Some(Ok(name)) = names.next().await {
            if name.starts_with(&format!("{}_", setup.prefix)) {
                ours.push(name);
            }
        }
        for name in ours {
            let _ = setup.js.delete_stream(&name).await;
        }
    });
}

criterion_group!(benches, memory, nats);
criterion_main!(benches);
