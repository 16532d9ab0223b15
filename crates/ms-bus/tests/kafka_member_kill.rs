//! A consumer group member killed (SIGKILL) mid-stream: 100,000 records of 1,000 keys, consumed at
//! concurrency 32 by member processes (this test binary run again as `member`); a second
//! member joins, then the first is killed. Nothing is lost, and every key's records are
//! handled in order with none skipped: after the kill a key may start again from an earlier
//! record (a redelivered run), but never past one that was not handled yet.
#![cfg(feature = "kafka")]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ms_bus::consumer::{Consumer, Message};
use ms_bus::kafka::KafkaBus;
use ms_bus::{BoxError, Envelope, EventPublisher, Subscription};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const KEYS: usize = 1_000;
const PER_KEY: usize = 100;
const CONCURRENCY: usize = 32;
const TOPIC: &str = "stream";
/// The environment a member process reads (set only by the test that starts it).
const SERVERS_VAR: &str = "MS_KAFKA_MEMBER_SERVERS";
const PREFIX_VAR: &str = "MS_KAFKA_MEMBER_PREFIX";
/// The longest the whole stream may take on a loaded CI machine.
const STREAM_LIMIT: Duration = Duration::from_secs(600);

fn bus(servers: &str, prefix: &str) -> KafkaBus {
    KafkaBus::builder(servers)
        .prefix(prefix)
        .unwrap()
        // A killed member's partitions move once its session times out.
        .consumer_set("session.timeout.ms", "6000")
        .consumer_set("heartbeat.interval.ms", "500")
        .build()
        .unwrap()
}

fn nanos_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// One member: handles the stream, printing `seen <wall-clock ns> <key> <seq>` before each
/// ack, until its standard input closes (then shuts down gracefully) or it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a member process of a_killed_member_loses_nothing_and_skips_nothing"]
async fn member() {
    let (Ok(servers), Ok(prefix)) = (std::env::var(SERVERS_VAR), std::env::var(PREFIX_VAR)) else {
        return;
    };
    let bus = bus(&servers, &prefix);
    let handle = Consumer::new(Subscription::events(TOPIC, "g").unwrap())
        .concurrency(CONCURRENCY)
        .serve(
            &bus,
            tower::service_fn(|m: Message| async move {
                let data: serde_json::Value = m.json_data()?;
                // Printed (written to the pipe) before the ack: the parent orders what every
                // member saw by these timestamps.
                println!("seen {} {} {}", nanos_now(), data["key"], data["seq"]);
                Ok::<_, BoxError>(())
            }),
        )
        .await
        .unwrap();
    // libtest may have printed `test member ... ` on this line already.
    println!("member-ready");
    // Standard input closes when the parent says so (or dies).
    let _ = tokio::task::spawn_blocking(|| {
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)
    })
    .await;
    handle.shutdown().await.unwrap();
}

/// (member, wall-clock ns, key, seq) as the members printed them.
type Seen = Arc<Mutex<Vec<(usize, u128, usize, usize)>>>;

struct Member {
    child: Child,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

fn start_member(servers: &str, prefix: &str, tag: usize, seen: &Seen) -> Member {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "member",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SERVERS_VAR, servers)
        .env(PREFIX_VAR, prefix)
        .env(ms_testkit::KAFKA_URL_VAR, format!("kafka://{servers}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen, flag) = (seen.clone(), ready.clone());
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.ends_with("member-ready") {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                continue;
            }
            let Some(start) = line.find("seen ") else {
                continue;
            };
            let mut parts = line[start..].split(' ');
            parts.next();
            let numbers: Vec<u128> = parts.filter_map(|p| p.parse().ok()).collect();
            if let [at, key, seq] = numbers[..] {
                seen.lock().unwrap().push((
                    tag,
                    at,
                    usize::try_from(key).unwrap(),
                    usize::try_from(seq).unwrap(),
                ));
            }
        }
    });
    Member { child, ready }
}

async fn until(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_loses_nothing_and_skips_nothing() {
    let Some(test) = ms_testkit::kafka().await else {
        return;
    };
    let deadline = Instant::now() + STREAM_LIMIT;
    let (servers, prefix) = (
        test.bootstrap_servers().to_owned(),
        test.prefix().to_owned(),
    );
    let publisher = bus(&servers, &prefix);
    publisher.ensure_topic(TOPIC).await.unwrap();
    let seen: Seen = Arc::default();
    let count = |member: Option<usize>| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| member.is_none_or(|m| s.0 == m))
            .count()
    };

    let mut first = start_member(&servers, &prefix, 1, &seen);
    until("the first member", deadline, || {
        first.ready.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    let publishing = tokio::spawn(async move {
        let events: Vec<Envelope> = (0..KEYS * PER_KEY)
            .map(|i| {
                let (key, seq) = (i % KEYS, i / KEYS);
                Envelope::builder("test.stream.advanced", "/test")
                    .partition_key(format!("key-{key}"))
                    .json_data(&serde_json::json!({ "key": key, "seq": seq }))
                    .unwrap()
                    .build()
                    .unwrap()
            })
            .collect();
        for chunk in events.chunks(5_000) {
            publisher.publish_batch(TOPIC, chunk).await.unwrap();
        }
    });
    until(
        "the first member to be well into the stream",
        deadline,
        || count(Some(1)) >= 10_000,
    )
    .await;
    let mut second = start_member(&servers, &prefix, 2, &seen);
    until("the second member's first records", deadline, || {
        count(Some(2)) >= 1_000
    })
    .await;
    first.child.start_kill().unwrap();
    let _ = first.child.wait().await;
    let killed_at = count(None);
    publishing.await.unwrap();
    until("every record after the kill", deadline, || {
        let all: BTreeSet<(usize, usize)> =
            seen.lock().unwrap().iter().map(|s| (s.2, s.3)).collect();
        all.len() == KEYS * PER_KEY
    })
    .await;
    drop(second.child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(60), second.child.wait()).await;

    let mut seen = seen.lock().unwrap().clone();
    eprintln!(
        "{} records handled for {} published ({} by the killed member, {} seen when it was killed)",
        seen.len(),
        KEYS * PER_KEY,
        seen.iter().filter(|s| s.0 == 1).count(),
        killed_at
    );
    // In the order the handlers ran (they printed before acking, so a record redelivered to
    // the second member after the first handled it comes later).
    seen.sort_by_key(|s| s.1);
    let mut handled: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); KEYS];
    let mut last: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for (member, _, key, seq) in &seen {
        assert!(
            *seq == 0 || handled[*key].contains(&(seq - 1)),
            "key {key}: member {member} handled {seq} before anyone handled {}",
            seq - 1
        );
        if let Some(previous) = last.get(&(*member, *key)) {
            assert!(
                *seq == previous + 1 || *seq <= *previous,
                "key {key}: member {member} went from {previous} to {seq}"
            );
        }
        last.insert((*member, *key), *seq);
        handled[*key].insert(*seq);
    }
    for (key, seqs) in handled.iter().enumerate() {
        assert_eq!(seqs.len(), PER_KEY, "key {key} lost records");
    }
}
