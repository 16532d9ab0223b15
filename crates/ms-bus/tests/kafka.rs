//! Kafka-specific behaviour beyond the conformance suite: commits never pass unsettled work,
//! a rebalance settles in-flight work before it releases a partition, a poison record
//! dead-letters while its partition's other keys flow, a retried record holds back only its
//! own key, and where tansu departs from Apache Kafka.
#![cfg(feature = "kafka")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ms_bus::consumer::{Consumer, Message, Outcome, RetryPolicy};
use ms_bus::kafka::{KafkaBus, Topics};
use ms_bus::{BoxError, Envelope, EventPublisher, Subscription, dead_letter};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The longest any wait in these tests lasts.
const WAIT_LIMIT: Duration = Duration::from_secs(90);
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

fn bus(test: &ms_testkit::TestKafka, partitions: i32) -> KafkaBus {
    KafkaBus::builder(test.bootstrap_servers())
        .prefix(test.prefix())
        .unwrap()
        // tansu's first join of a new group takes ~23 s at librdkafka's default (45 s).
        .consumer_set("session.timeout.ms", "6000")
        // Members learn of a rebalance at their next heartbeat (librdkafka: every 3 s).
        .consumer_set("heartbeat.interval.ms", "500")
        .commit_interval(COMMIT_INTERVAL)
        .topics(Topics::Create {
            partitions,
            replication_factor: -1,
        })
        .build()
        .unwrap()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn keyed(key: &str, n: usize) -> Envelope {
    Envelope::builder("test.thing.happened", "/test")
        .partition_key(key)
        .json_data(&serde_json::json!({ "key": key, "n": n }))
        .unwrap()
        .build()
        .unwrap()
}

/// What handlers ran: (id, key, member, start, end).
type Spans = Arc<Mutex<Vec<(String, String, usize, Instant, Instant)>>>;

/// What a handler saw: (envelope id, attempt), in order.
type Log = Arc<Mutex<Vec<(String, u32)>>>;

/// A group's committed offsets, read by a client outside the group.
fn committed(servers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Offset> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(rdkafka::topic_partition_list::TopicPartitionListElem::offset)
        .collect()
}

/// A handler that blocks forever on one record holds its partition's commit at that record,
/// while every record behind it (other keys) is handled; after a crash the record is
/// delivered again. Fails if offsets are committed past unsettled work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_never_pass_unsettled_work() {
    let Some(test) = ms_testkit::kafka().await else {
        return;
    };
    let first = bus(&test, 1);
    let subscription = Subscription::events("held", "g").unwrap();
    let events: Vec<Envelope> = (0..50).map(|n| keyed(&format!("k{n}"), n)).collect();
    let held_id = events[5].id().to_owned();
    let log: Log = Arc::default();
    let handle = Consumer::new(subscription.clone())
        .concurrency(16)
        .serve(&first, {
            let (log, held_id) = (log.clone(), held_id.clone());
            tower::service_fn(move |m: Message| {
                log.lock().unwrap().push((m.id().to_owned(), m.attempt()));
                let hold = m.id() == held_id;
                async move {
                    if hold {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, BoxError>(())
                }
            })
        })
        .await
        .unwrap();
    first.publish_batch("held", &events).await.unwrap();
    until("all 50 records to reach the handler", || {
        log.lock().unwrap().len() == 50
    })
    .await;
    let group = first.event_group("held", "g");
    let topic = first.event_topic("held");
    let servers = test.bootstrap_servers().to_owned();
    // Settled records 0..5 and 6..50: the commit may reach 5 and must stop there.
    let (g, t, s) = (group.clone(), topic.clone(), servers.clone());
    let reached = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let offsets = committed(&s, &g, &t, 1);
            if offsets == [Offset::Offset(5)] || Instant::now() > deadline {
                return offsets;
            }
            std::thread::sleep(COMMIT_INTERVAL);
        }
    })
    .await
    .unwrap();
    assert_eq!(reached, [Offset::Offset(5)]);
    // Several more commit intervals with 44 settled records after the held one: it stays.
    tokio::time::sleep(COMMIT_INTERVAL * 10).await;
    let (g, t, s) = (group.clone(), topic.clone(), servers.clone());
    let later = tokio::task::spawn_blocking(move || committed(&s, &g, &t, 1))
        .await
        .unwrap();
    assert_eq!(
        later,
        [Offset::Offset(5)],
        "the commit passed the held record"
    );

    // A crash: the next member starts at the held record. The crashed process's client goes
    // with it (a client left alive beside the aborted consumer can keep its group membership
    // on tansu, and the next member then waits for partitions that never move).
    handle.abort();
    drop(first);
    let again: Log = Arc::default();
    let second = bus(&test, 1);
    let handle = Consumer::new(subscription)
        .serve(&second, {
            let again = again.clone();
            tower::service_fn(move |m: Message| {
                again.lock().unwrap().push((m.id().to_owned(), m.attempt()));
                async { Ok::<_, BoxError>(()) }
            })
        })
        .await
        .unwrap();
    until("the redelivery", || again.lock().unwrap().len() == 45).await;
    handle.shutdown().await.unwrap();
    let again = again.lock().unwrap().clone();
    assert_eq!(
        again[0].0, held_id,
        "redelivery did not start at the held record"
    );
    let expected: Vec<&str> = events[5..].iter().map(Envelope::id).collect();
    let got: Vec<&str> = again.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got, expected);
}

/// A second member joins while the first has records in its handlers: the first finishes and
/// commits them before the partitions move, so no record is handled twice and no two
/// handlers of one key ever overlap, across the two members. Fails if a rebalance releases a
/// partition with unsettled work in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_settles_in_flight_work_before_releasing() {
    let Some(test) = ms_testkit::kafka().await else {
        return;
    };
    let publisher = bus(&test, 4);
    let subscription = Subscription::events("rebalance", "g").unwrap();
    let spans: Spans = Arc::default();
    let serve = |bus: KafkaBus, member: usize| {
        let spans = spans.clone();
        let subscription = subscription.clone();
        async move {
            let handle = Consumer::new(subscription)
                .concurrency(16)
                .serve(&bus, {
                    tower::service_fn(move |m: Message| {
                        let spans = spans.clone();
                        async move {
                            let start = Instant::now();
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let key = m.partition_key().unwrap_or_default().to_owned();
                            spans.lock().unwrap().push((
                                m.id().to_owned(),
                                key,
                                member,
                                start,
                                Instant::now(),
                            ));
                            Ok::<_, BoxError>(())
                        }
                    })
                })
                .await
                .unwrap();
            (handle, bus)
        }
    };
    let (first, _first_bus) = serve(bus(&test, 4), 1).await;
    let events: Vec<Envelope> = (0..2000)
        .map(|n| keyed(&format!("k{}", n % 50), n))
        .collect();
    publisher.publish_batch("rebalance", &events).await.unwrap();
    until("the first member to be busy", || {
        spans.lock().unwrap().len() >= 20
    })
    .await;
    let (second, _second_bus) = serve(bus(&test, 4), 2).await;
    until("every record", || {
        let ids: BTreeSet<String> = spans.lock().unwrap().iter().map(|s| s.0.clone()).collect();
        ids.len() == events.len()
    })
    .await;
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    let spans = spans.lock().unwrap().clone();
    let members: BTreeSet<usize> = spans.iter().map(|s| s.2).collect();
    assert_eq!(members.len(), 2, "the second member never got partitions");
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &spans {
        *per_id.entry(&s.0).or_default() += 1;
    }
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "handled twice across the rebalance: {twice:?}"
    );
    let mut per_key: BTreeMap<&str, Vec<(Instant, Instant, usize)>> = BTreeMap::new();
    for s in &spans {
        per_key.entry(&s.1).or_default().push((s.3, s.4, s.2));
    }
    for (key, mut runs) in per_key {
        runs.sort();
        for pair in runs.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "two handlers of key {key} overlapped (members {} and {})",
                pair[0].2,
                pair[1].2
            );
        }
    }
}

/// A record whose handler always fails is retried, then dead-lettered with the delivery
/// count; meanwhile the other keys of its partition flow (the poison's handler waits for
/// them, so a consumer that blocked the partition behind it would never finish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_dead_letters_while_its_partitions_other_keys_flow() {
    let Some(test) = ms_testkit::kafka().await else {
        return;
    };
    let bus = bus(&test, 1);
    let subscription = Subscription::events("poison", "g").unwrap();
    let dead_letters = subscription.dead_letter_destination().to_owned();
    let mut events = vec![keyed("poison", 0)];
    events.extend((1..100).map(|n| keyed(&format!("k{n}"), n)));
    let poison_id = events[0].id().to_owned();
    let others_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let handle = Consumer::new(subscription)
        .retry(
            RetryPolicy::default()
                .max_deliveries(3)
                .initial_delay(Duration::from_millis(20))
                .max_delay(Duration::from_millis(40)),
        )
        .serve(&bus, {
            let (others_seen, attempts, poison_id) =
                (others_seen.clone(), attempts.clone(), poison_id.clone());
            tower::service_fn(move |m: Message| {
                let (others_seen, attempts) = (others_seen.clone(), attempts.clone());
                let poison = m.id() == poison_id;
                async move {
                    if !poison {
                        others_seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return Ok::<_, BoxError>(());
                    }
                    attempts.lock().unwrap().push(m.attempt());
                    let deadline = Instant::now() + WAIT_LIMIT;
                    while others_seen.load(std::sync::atomic::Ordering::SeqCst) < 99 {
                        if Instant::now() > deadline {
                            return Err("the other keys never flowed".into());
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err("the poison pill".into())
                }
            })
        })
        .await
        .unwrap();
    bus.publish_batch("poison", &events).await.unwrap();
    let letters: Arc<Mutex<Vec<Message>>> = Arc::default();
    let dl = Consumer::new(Subscription::commands(&dead_letters).unwrap())
        .serve(&bus, {
            let letters = letters.clone();
            tower::service_fn(move |m: Message| {
                letters.lock().unwrap().push(m);
                async { Ok::<_, BoxError>(()) }
            })
        })
        .await
        .unwrap();
    until("the dead letter", || !letters.lock().unwrap().is_empty()).await;
    handle.shutdown().await.unwrap();
    dl.shutdown().await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    let letters = letters.lock().unwrap().clone();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.envelope(), &events[0]);
    assert_eq!(
        letter.info().header(dead_letter::DELIVERIES_HEADER),
        Some("3")
    );
    assert!(
        letter
            .info()
            .header(dead_letter::REASON_HEADER)
            .is_some_and(|r| r.contains("the poison pill"))
    );
    assert_eq!(letter.info().header(dead_letter::GROUP_HEADER), Some("g"));
}

/// Key `a`'s first record asks for a retry: `a`'s later records wait behind it (and come in
/// order after its second delivery), while key `b`'s records, interleaved in the same
/// partition, are all handled meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_record_holds_back_only_its_own_key() {
    let Some(test) = ms_testkit::kafka().await else {
        return;
    };
    let bus = bus(&test, 1);
    let mut events = Vec::new();
    for n in 0..20 {
        events.push(keyed("a", n));
        events.push(keyed("b", n));
    }
    let first_a = events[0].id().to_owned();
    let log: Log = Arc::default();
    let handle = Consumer::new(Subscription::events("retry", "g").unwrap())
        .concurrency(8)
        .serve(&bus, {
            let (log, first_a) = (log.clone(), first_a.clone());
            tower::service_fn(move |m: Message| {
                let log = log.clone();
                let retry = m.id() == first_a && m.attempt() == 1;
                async move {
                    if retry {
                        // Every `b` is handled while `a`'s first record is still unsettled.
                        let deadline = Instant::now() + WAIT_LIMIT;
                        while log
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|(id, _)| id.starts_with('b'))
                            .count()
                            < 20
                        {
                            if Instant::now() > deadline {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    let key = m.partition_key().unwrap_or_default().to_owned();
                    log.lock()
                        .unwrap()
                        .push((format!("{key}:{}", m.id()), m.attempt()));
                    Ok::<_, BoxError>(if retry {
                        Outcome::RetryAfter(Duration::from_millis(200))
                    } else {
                        Outcome::Ack
                    })
                }
            })
        })
        .await
        .unwrap();
    bus.publish_batch("retry", &events).await.unwrap();
    until("every record", || log.lock().unwrap().len() == 41).await;
    handle.shutdown().await.unwrap();
    let log = log.lock().unwrap().clone();
    let a: Vec<(String, u32)> = log
        .iter()
        .filter(|(id, _)| id.starts_with("a:"))
        .map(|(id, attempt)| (id[2..].to_owned(), *attempt))
        .collect();
    let mut expected = vec![(first_a.clone(), 1), (first_a.clone(), 2)];
    expected.extend(
        events
            .iter()
            .step_by(2)
            .skip(1)
            .map(|e| (e.id().to_owned(), 1)),
    );
    assert_eq!(a, expected, "key a out of order around its retry");
    let first_retry = log
        .iter()
        .position(|(id, _)| id.ends_with(&first_a))
        .unwrap();
    let bs_before = log[..first_retry]
        .iter()
        .filter(|(id, _)| id.starts_with("b:"))
        .count();
    assert_eq!(bs_before, 20, "key b waited for key a's retry");
}

/// tansu 0.6 keeps a committed offset but drops the commit's metadata (Apache Kafka stores it
/// and returns it from `OffsetFetch`, up to `offset.metadata.max.bytes`). The adapter carries
/// delivery counts across members in that metadata, so on tansu a record redelivered after a
/// crash starts again at attempt 1. This test shows which the broker does, and fails when
/// tansu changes (then the adapter's docs need updating).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_metadata_is_kept_except_on_tansu() {
    let Some(test) = ms_testkit::kafka().await else {
        return;
    };
    let bus = bus(&test, 1);
    bus.ensure_topic("metadata").await.unwrap();
    let topic = bus.event_topic("metadata");
    let servers = test.bootstrap_servers().to_owned();
    let (cluster, metadata) = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("group.id", format!("{topic}:probe"))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        let mut element = tpl.add_partition(&topic, 0);
        element.set_offset(Offset::Offset(0)).unwrap();
        element.set_metadata("ms-bus/1 delivered=7 head=2");
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
        let mut query = TopicPartitionList::new();
        query.add_partition(&topic, 0);
        let back = consumer
            .committed_offsets(query, Duration::from_secs(10))
            .unwrap();
        let element = back.find_partition(&topic, 0).unwrap();
        assert_eq!(element.offset(), Offset::Offset(0));
        (
            consumer.client().fetch_cluster_id(Duration::from_secs(10)),
            element.metadata().to_owned(),
        )
    })
    .await
    .unwrap();
    if cluster.as_deref() == Some("tansu_cluster") {
        assert_eq!(
            metadata, "",
            "tansu now keeps commit metadata: update the adapter's docs"
        );
    } else {
        assert_eq!(metadata, "ms-bus/1 delivered=7 head=2");
    }
}

/// tansu 0.6 answers a `ListOffsets` request for the latest offset with the base offset of the
/// partition's last record batch plus one (measured: 1 after one batch of five records), where
/// Apache Kafka answers the offset after the last record (5). The adapter starts a new group
/// at that offset, so on tansu a new group of a topic that already holds records gets some of
/// them again (never fewer), and the health check's lag counts batches rather than records.
/// Fails when tansu changes (then the adapter's docs need updating).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_high_watermark_is_the_end_of_the_log_except_on_tansu() {
    let Some(test) = ms_testkit::kafka().await else {
        return;
    };
    let bus = bus(&test, 1);
    let events: Vec<Envelope> = (0..5).map(|n| keyed("k", n)).collect();
    bus.publish_batch("watermark", &events).await.unwrap();
    let topic = bus.event_topic("watermark");
    let servers = test.bootstrap_servers().to_owned();
    let (cluster, marks) = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .create()
            .unwrap();
        (
            consumer.client().fetch_cluster_id(Duration::from_secs(10)),
            consumer
                .fetch_watermarks(&topic, 0, Duration::from_secs(10))
                .unwrap(),
        )
    })
    .await
    .unwrap();
    if cluster.as_deref() == Some("tansu_cluster") {
        assert_eq!(
            marks,
            (0, 1),
            "tansu's answer changed: update the adapter's docs"
        );
    } else {
        assert_eq!(marks, (0, 5));
    }
}
