//! NATS JetStream on a private three-node cluster (`ms_testkit::NatsCluster`): replicated
//! streams and consumers, and publishing and consuming through the stream leader killed with
//! SIGKILL every few seconds.
#![cfg(feature = "nats")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use ms_bus::consumer::{Consumer, Message};
use ms_bus::nats::NatsBus;
use ms_bus::nats::async_nats::{self, jetstream};
use ms_bus::{Envelope, EventPublisher, Subscription};

/// Events published under the kills: about ten kills in debug on 2 cores (undisturbed, the
/// publisher confirms about 5,000 a second there).
const EVENTS: usize = 50_000;
/// Ordering keys they are spread over.
const KEYS: usize = 16;
/// Events per `publish_batch`, as a relay would send them.
const BATCH: usize = 100;
/// How often the stream's leader is killed...
const KILL_EVERY: Duration = Duration::from_secs(5);
/// ... but no sooner than this after publishing went on after the previous kill.
const HEALTHY_AT_LEAST: Duration = Duration::from_secs(1);
/// Longer than a leader election (about 5 s, see BENCHMARKS.md), with margin for a loaded
/// machine.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the test waits for the consumer to see everything.
const CONSUME_LIMIT: Duration = Duration::from_secs(180);

async fn client(cluster: &ms_testkit::NatsCluster) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.urls())
        .await
        .unwrap()
}

async fn bus(cluster: &ms_testkit::NatsCluster, prefix: &str) -> NatsBus {
    NatsBus::builder(client(cluster).await)
        .prefix(prefix)
        .unwrap()
        .replicas(3)
        .publish_timeout(PUBLISH_TIMEOUT)
        .build()
}

/// The cluster, where NATS is expected at all (the shared server's presence says so).
async fn cluster() -> Option<ms_testkit::NatsCluster> {
    ms_testkit::nats().await?;
    Some(ms_testkit::NatsCluster::start().await.unwrap())
}

fn event(key: usize, n: usize) -> Envelope {
    Envelope::builder("cluster.thing.happened", "/cluster")
        .id(format!("k{key}-{n}"))
        .partition_key(format!("k{key}"))
        .build()
        .unwrap()
}

/// `k{key}-{n}` back into its key and number.
fn parse(id: &str) -> (usize, usize) {
    let (key, n) = id.trim_start_matches('k').split_once('-').unwrap();
    (key.parse().unwrap(), n.parse().unwrap())
}

/// The events in publish order: each key's numbers count up from 0.
fn events() -> Vec<Envelope> {
    (0..EVENTS).map(|i| event(i % KEYS, i / KEYS)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_their_consumers_are_replicated_on_every_node() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let bus = bus(&cluster, "replicas").await;
    let consumer = Consumer::new(Subscription::events("things", "g").unwrap())
        .serve(
            &bus,
            tower::service_fn(|_: Message| async { Ok::<_, Infallible>(()) }),
        )
        .await
        .unwrap();
    let js = jetstream::new(client(&cluster).await);
    let mut stream = js.get_stream(bus.event_stream("things")).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    let peers = info.cluster.as_ref().unwrap().replicas.len();
    assert_eq!(peers, 2, "a leader and two replicas: {:?}", info.cluster);
    let mut durable = None;
    let mut names = stream.consumer_names();
    while let Some(name) = names.next().await {
        durable = Some(name.unwrap());
    }
    let mut group: jetstream::consumer::PullConsumer =
        stream.get_consumer(&durable.unwrap()).await.unwrap();
    let group = group.info().await.unwrap();
    assert_eq!(
        group.cluster.as_ref().unwrap().replicas.len(),
        2,
        "the group's consumer is replicated with its stream: {:?}",
        group.cluster
    );
    consumer.shutdown().await.unwrap();

    let single = NatsBus::builder(client(&cluster).await)
        .prefix("single")
        .unwrap()
        .build();
    single.ensure_topic("things").await.unwrap();
    let info = js
        .get_stream(single.event_stream("things"))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, ms_bus::nats::DEFAULT_REPLICAS);
}

/// Events published right after the stream's leader was killed, before the others elected a
/// new one: the first attempts find no leader (no responders, or no ack), and the bus
/// publishes them again until the new leader confirms them, each stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_sent_while_the_stream_has_no_leader_are_confirmed_by_the_next_one() {
    let Some(mut cluster) = cluster().await else {
        return;
    };
    let topic = "orphaned";
    let bus = bus(&cluster, "failover").await;
    bus.ensure_topic(topic).await.unwrap();
    let stream = bus.event_stream(topic);
    let js = jetstream::new(client(&cluster).await);
    // Confirmed before the kill: the stream has a leader that took publishes.
    bus.publish(topic, &event(0, 0)).await.unwrap();
    let leader = cluster.stream_leader(&stream).await.unwrap();
    cluster.kill(leader).await.unwrap();
    let killed = Instant::now();

    bus.publish(topic, &event(0, 1)).await.unwrap();
    let single = killed.elapsed();
    let batch: Vec<Envelope> = (0..64).map(|i| event(1 + i % 4, i / 4)).collect();
    bus.publish_batch(topic, &batch).await.unwrap();
    eprintln!("confirmed {single:?} after the leader's death");
    assert_ne!(cluster.stream_leader(&stream).await.unwrap(), leader);
    cluster.restart(leader).await.unwrap();

    let ids = stored_ids(&js, &stream).await;
    let mut expected: Vec<String> = ["k0-0", "k0-1"].map(str::to_owned).to_vec();
    expected.extend(batch.iter().map(|e| e.id().to_owned()));
    let mut sorted = ids.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "each stored once");
}

/// What the consumer saw, in handling order.
type Seen = Arc<Mutex<Vec<(usize, usize)>>>;

/// Kills the stream's leader (SIGKILL) every [`KILL_EVERY`] and restarts it at once, as a
/// supervisor would, until `stop`; but only once publishing has gone on (`confirmed` moved)
/// for [`HEALTHY_AT_LEAST`] after the previous kill. A leader election takes about as long
/// as [`KILL_EVERY`] (see BENCHMARKS.md): on a fixed clock, most new leaders would be killed
/// before they confirmed anything. Returns the cluster and when each kill happened.
async fn kill_leaders(
    mut cluster: ms_testkit::NatsCluster,
    stream: String,
    confirmed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> (ms_testkit::NatsCluster, Vec<Instant>) {
    let mut kills: Vec<Instant> = Vec::new();
    let mut resumed = Instant::now();
    loop {
        let next = kills.last().map_or(resumed + KILL_EVERY, |kill| {
            (*kill + KILL_EVERY).max(resumed + HEALTHY_AT_LEAST)
        });
        tokio::time::sleep_until(next.into()).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let leader = cluster.stream_leader(&stream).await.unwrap();
        let before = confirmed.load(Ordering::Relaxed);
        kills.push(Instant::now());
        cluster.kill(leader).await.unwrap();
        cluster.restart(leader).await.unwrap();
        while confirmed.load(Ordering::Relaxed) == before && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        resumed = Instant::now();
    }
    (cluster, kills)
}

/// Reads the whole stream back: each stored message's event id (`ce-id`, not the
/// `Nats-Msg-Id`, so that a publisher without dedup ids is caught storing copies), in stream
/// order.
async fn stored_ids(js: &jetstream::Context, stream: &str) -> Vec<String> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let total = stream.info().await.unwrap().state.messages;
    // Right after a failover the meta leader may be electing too: ask again until then.
    let deadline = Instant::now() + Duration::from_secs(60);
    let reader = loop {
        match stream
            .create_consumer(jetstream::consumer::pull::Config {
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
        {
            Ok(reader) => break reader,
            Err(e) if Instant::now() < deadline => eprintln!("creating a reader, again: {e}"),
            Err(e) => panic!("creating a reader: {e}"),
        }
    };
    let mut messages = reader.messages().await.unwrap();
    let mut ids = Vec::new();
    while (ids.len() as u64) < total {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("reading the stream back stalled")
            .unwrap()
            .unwrap();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("ce-id"))
            .map(|v| v.as_str().to_owned())
            .expect("every message has a ce-id");
        ids.push(id);
    }
    ids
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

/// The stream leader is killed (SIGKILL) every five seconds while 50,000 events over 16 keys
/// are published in batches and a consumer group reads them: every confirmed event is stored
/// once (the retried publishes carry the same `Nats-Msg-Id`), reaches the consumer, and each
/// key's events reach it in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_and_consuming_go_on_while_the_stream_leader_is_killed_every_five_seconds() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let topic = "orders";
    let publisher = bus(&cluster, "kills").await;
    publisher.ensure_topic(topic).await.unwrap();
    let stream = publisher.event_stream(topic);

    let seen: Seen = Arc::default();
    let consumer_bus = bus(&cluster, "kills").await;
    let consumer = Consumer::new(Subscription::events(topic, "g").unwrap())
        .serve(&consumer_bus, {
            let seen = seen.clone();
            tower::service_fn(move |m: Message| {
                seen.lock().unwrap().push(parse(m.id()));
                async { Ok::<_, Infallible>(()) }
            })
        })
        .await
        .unwrap();

    let js = jetstream::new(client(&cluster).await);
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicUsize::new(0));
    let killer = tokio::spawn(kill_leaders(
        cluster,
        stream.clone(),
        confirmed.clone(),
        stop.clone(),
    ));

    let events = events();
    let started = Instant::now();
    let mut confirmed_at = Vec::new();
    let mut failed_batches = 0;
    for batch in events.chunks(BATCH) {
        // A relay's loop: a batch not confirmed within the publish timeout goes again.
        while let Err(e) = publisher.publish_batch(topic, batch).await {
            failed_batches += 1;
            eprintln!("batch not confirmed, again: {e}");
        }
        confirmed_at.push(Instant::now());
        confirmed.fetch_add(1, Ordering::Relaxed);
    }
    let publish_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (cluster, kills) = killer.await.unwrap();

    // How long publishing stood still after each kill: from the kill to the next confirmed
    // batch (an upper bound: it includes the batch's own time).
    let mut stalls: Vec<Duration> = kills
        .iter()
        .filter_map(|kill| {
            confirmed_at
                .iter()
                .find(|at| *at > kill)
                .map(|at| *at - *kill)
        })
        .collect();
    stalls.sort_unstable();
    let resident: Vec<String> = (0..ms_testkit::NATS_CLUSTER_NODES)
        .filter_map(|n| cluster.pid(n))
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    eprintln!(
        "published {EVENTS} in {publish_time:?} under {} kills ({failed_batches} batches timed out); \
         stall after a kill p50 {:?} max {:?} (all: {stalls:?}); node memory {resident:?}",
        kills.len(),
        (!stalls.is_empty()).then(|| quantile(&stalls, 0.5)),
        stalls.last(),
    );
    assert!(!kills.is_empty(), "publishing ended before the first kill");

    // Every confirmed event reaches the consumer; each key's first deliveries in order.
    let deadline = Instant::now() + CONSUME_LIMIT;
    loop {
        let distinct: HashSet<(usize, usize)> = seen.lock().unwrap().iter().copied().collect();
        if distinct.len() == EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer saw {} of {EVENTS} within {CONSUME_LIMIT:?}",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    consumer.shutdown().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_each_key_in_order_at_the_consumer(&seen);
    assert_stored_once_each_in_order(&stored_ids(&js, &stream).await, &events);
    drop(cluster);
}

/// Each key's first deliveries reach the consumer in publish order (redeliveries of what it
/// already saw may come later: delivery is at least once).
fn assert_each_key_in_order_at_the_consumer(seen: &[(usize, usize)]) {
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut redelivered = 0;
    for (key, n) in seen {
        let expected = next.entry(*key).or_default();
        if *n < *expected {
            redelivered += 1;
            continue;
        }
        assert_eq!(
            *n, *expected,
            "key {key}: event {n} reached the consumer before {expected}"
        );
        *expected += 1;
    }
    eprintln!(
        "the consumer saw {} deliveries, {redelivered} of them again",
        seen.len()
    );
}

/// The stream holds each event exactly once, each key's in publish order.
fn assert_stored_once_each_in_order(ids: &[String], events: &[Envelope]) {
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for id in ids {
        *copies.entry(id).or_default() += 1;
    }
    let duplicated: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(
        duplicated.is_empty(),
        "stored more than once: {duplicated:?} ({} stored)",
        ids.len()
    );
    assert_eq!(ids.len(), EVENTS, "every confirmed event is stored");
    let expected: HashSet<&str> = events.iter().map(Envelope::id).collect();
    assert!(ids.iter().all(|id| expected.contains(id.as_str())));
    let mut next: HashMap<usize, usize> = HashMap::new();
    for id in ids {
        let (key, n) = parse(id);
        let expected = next.entry(key).or_default();
        assert_eq!(
            n, *expected,
            "key {key}: event {n} stored before {expected}"
        );
        *expected += 1;
    }
}
