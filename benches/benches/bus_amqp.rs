//! ms-bus on RabbitMQ: publishing (one at a time awaiting each confirm, and batched with a
//! window of confirms in flight) and end to end (publish → consumer runtime → handler → ack),
//! each next to the raw lapin client doing the same work in the same run: persistent messages
//! with the same headers and bytes, publisher confirms, a consumer with the same prefetch
//! acking each message.
//!
//! Messages: 256 bytes of data and 6 CloudEvents attributes, as in FACTS.md, persistent.
//! Published messages are routed to a durable queue, so the broker stores each one; the queue
//! is purged before each bench.
//!
//! Run: `cargo bench -p ms-benches --bench bus_amqp -- --warm-up-time 1 --measurement-time 3`
//! (needs RabbitMQ on `MS_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`, with
//! the management API for a private virtual host; skipped with a line on stderr otherwise).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use ms_bus::amqp::{AmqpBus, DEFAULT_CONFIRM_WINDOW, DEFAULT_EVENTS_EXCHANGE};
use ms_bus::codec::{self, HeaderValues, Mode};
use ms_bus::consumer::{Consumer, Message};
use ms_bus::{DEFAULT_PREFETCH, Envelope, EventPublisher, Subscription};

const BATCH: usize = 1_000;
const END_TO_END: usize = 2_000;

fn envelope(n: usize) -> Envelope {
    Envelope::builder("bench.thing.happened", "/bench")
        .subject(format!("thing-{n}"))
        .partition_key(format!("key-{}", n % 16))
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

/// The raw client's message: what the adapter would write for `envelope(0)`, built once.
fn raw_message() -> (BasicProperties, Vec<u8>) {
    let message = codec::encode(&envelope(0), Mode::Binary, HeaderValues::Raw);
    let mut headers = FieldTable::default();
    for (name, value) in message.headers {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers)
        .with_content_type(message.content_type.unwrap_or_default().into());
    (properties, message.body.to_vec())
}

/// A durable queue bound to the events exchange with `key`.
async fn bound_queue(channel: &Channel, queue: &str, key: &str) {
    channel
        .exchange_declare(
            DEFAULT_EVENTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.into(),
            DEFAULT_EVENTS_EXCHANGE.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("binding");
}

/// Consumes `queue` with the adapter's default prefetch, acking each message, counting.
async fn raw_consumer(connection: &Connection, queue: &str, count: Arc<AtomicUsize>) {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(
            u16::try_from(DEFAULT_PREFETCH).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = consumer.next().await {
            let _ = delivery.ack(BasicAckOptions::default()).await;
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
}

async fn raw_publish_batch(
    channel: &Channel,
    key: &str,
    message: &(BasicProperties, Vec<u8>),
    n: usize,
) {
    let mut pending = VecDeque::with_capacity(DEFAULT_CONFIRM_WINDOW);
    for _ in 0..n {
        if pending.len() >= DEFAULT_CONFIRM_WINDOW {
            let confirm: lapin::PublisherConfirm = pending.pop_front().expect("non-empty");
            assert!(confirm.await.expect("confirm").is_ack());
        }
        let confirm = channel
            .basic_publish(
                DEFAULT_EVENTS_EXCHANGE.into(),
                key.into(),
                BasicPublishOptions::default(),
                &message.1,
                message.0.clone(),
            )
            .await
            .expect("publish");
        pending.push_back(confirm);
    }
    for confirm in pending {
        assert!(confirm.await.expect("confirm").is_ack());
    }
}

/// Empties the publish benches' queue, so each bench starts from the same broker state.
fn purge(s: &Setup) {
    s.rt.block_on(
        s.raw_channel
            .queue_purge("bench.sink".into(), QueuePurgeOptions::default()),
    )
    .expect("purge");
}

async fn wait_for(count: &AtomicUsize, target: usize) {
    while count.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Both clients, connected to one private virtual host, with the queues the groups need.
struct Setup {
    rt: tokio::runtime::Runtime,
    _rabbit: ms_testkit::TestAmqp,
    bus: AmqpBus,
    raw: Connection,
    raw_channel: Channel,
    message: (BasicProperties, Vec<u8>),
    events: Vec<Envelope>,
}

fn setup() -> Option<Setup> {
    let rt = runtime();
    let Some(rabbit) = rt.block_on(ms_testkit::amqp()) else {
        eprintln!("SKIPPED bus_amqp: RabbitMQ is not reachable");
        return None;
    };
    if !rabbit.has_private_vhost() {
        // The raw client's exchange and queue are the bus's default names: only a vhost of
        // the bench's own keeps them apart from anything else on the broker.
        eprintln!(
            "SKIPPED bus_amqp: no private RabbitMQ virtual host (enable rabbitmq_management)"
        );
        return None;
    }
    let url = rabbit.url().to_owned();
    let (bus, raw, raw_channel) = rt.block_on(async {
        let bus = AmqpBus::connect(&url).await.expect("bus");
        let raw = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("raw connection");
        let channel = raw.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        // Publishes from both clients land in one queue, emptied before each bench (a
        // consumer draining it would compete with whichever client is measured).
        bound_queue(&channel, "bench.sink", "bench.publish").await;
        (bus, raw, channel)
    });
    let setup = Setup {
        rt,
        _rabbit: rabbit,
        bus,
        raw,
        raw_channel,
        message: raw_message(),
        events: (0..END_TO_END).map(envelope).collect(),
    };
    // Warm the broker's message store with both clients before anything is measured.
    setup.rt.block_on(async {
        for _ in 0..3 {
            raw_publish_batch(&setup.raw_channel, "bench.publish", &setup.message, BATCH).await;
            setup
                .bus
                .publish_batch("bench.publish", &setup.events[..BATCH])
                .await
                .expect("publish");
        }
    });
    Some(setup)
}

fn publish(c: &mut Criterion, s: &Setup) {
    let mut group = c.benchmark_group("bus_amqp/publish_single");
    group.throughput(Throughput::Elements(1));
    purge(s);
    group.bench_function("ms_bus", |b| {
        b.to_async(&s.rt).iter(|| async {
            s.bus
                .publish("bench.publish", &s.events[0])
                .await
                .expect("publish");
        });
    });
    purge(s);
    group.bench_function("raw_lapin", |b| {
        b.to_async(&s.rt).iter(|| async {
            let confirm = s
                .raw_channel
                .basic_publish(
                    DEFAULT_EVENTS_EXCHANGE.into(),
                    "bench.publish".into(),
                    BasicPublishOptions::default(),
                    &s.message.1,
                    s.message.0.clone(),
                )
                .await
                .expect("publish");
            assert!(confirm.await.expect("confirm").is_ack());
        });
    });
    group.finish();

    let mut group = c.benchmark_group("bus_amqp/publish_batch_1000");
    group
        .throughput(Throughput::Elements(BATCH as u64))
        .sample_size(10);
    purge(s);
    group.bench_function("ms_bus", |b| {
        b.to_async(&s.rt).iter(|| async {
            s.bus
                .publish_batch("bench.publish", &s.events[..BATCH])
                .await
                .expect("publish");
        });
    });
    purge(s);
    group.bench_function("raw_lapin", |b| {
        b.to_async(&s.rt)
            .iter(|| raw_publish_batch(&s.raw_channel, "bench.publish", &s.message, BATCH));
    });
    group.finish();
}

/// A batch published, handled and acked, each client through its own queue.
fn end_to_end(c: &mut Criterion, s: &Setup) {
    let ms_count = Arc::new(AtomicUsize::new(0));
    let raw_count = Arc::new(AtomicUsize::new(0));
    let consumer = s.rt.block_on(async {
        bound_queue(&s.raw_channel, "bench.e2e.raw", "bench.e2e.raw").await;
        raw_consumer(&s.raw, "bench.e2e.raw", raw_count.clone()).await;
        let count = ms_count.clone();
        Consumer::new(Subscription::events("bench.e2e.ms", "g").expect("subscription"))
            .serve(
                &s.bus,
                tower::service_fn(move |_m: Message| {
                    count.fetch_add(1, Ordering::Relaxed);
                    std::future::ready(Ok::<_, Infallible>(()))
                }),
            )
            .await
            .expect("consumer")
    });
    let mut group = c.benchmark_group("bus_amqp/end_to_end_2000");
    group
        .throughput(Throughput::Elements(END_TO_END as u64))
        .sample_size(10);
    group.bench_function("ms_bus", |b| {
        b.to_async(&s.rt).iter_custom(|iters| {
            let count = &ms_count;
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = count.load(Ordering::Relaxed) + END_TO_END;
                    s.bus
                        .publish_batch("bench.e2e.ms", &s.events)
                        .await
                        .expect("publish");
                    wait_for(count, target).await;
                }
                start.elapsed()
            }
        });
    });
    group.bench_function("raw_lapin", |b| {
        b.to_async(&s.rt).iter_custom(|iters| {
            let count = &raw_count;
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = count.load(Ordering::Relaxed) + END_TO_END;
                    raw_publish_batch(&s.raw_channel, "bench.e2e.raw", &s.message, END_TO_END)
                        .await;
                    wait_for(count, target).await;
                }
                start.elapsed()
            }
        });
    });
    group.finish();
    s.rt.block_on(consumer.shutdown()).expect("shutdown");
}

fn amqp(c: &mut Criterion) {
    let Some(setup) = setup() else { return };
    publish(c, &setup);
    end_to_end(c, &setup);
    setup.rt.block_on(setup.bus.close());
}

criterion_group!(benches, amqp);
criterion_main!(benches);
