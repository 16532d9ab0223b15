//! Scheduled messages through relay crashes: 2,000 messages due at random times over 20 s,
//! a few hundred cancelled at random moments meanwhile, two relay processes each killed (SIGKILL)
//! and restarted three times. None is published before its due time (the consumer compares with
//! the due time the envelope carries), every one not cancelled is published, the ones whose
//! cancel answered `Cancelled` never are. The lateness distribution is printed (a measurement,
//! asserted only against a generous bound).
//!
//! The relays run in child processes: this test binary itself, run again with [`CHILD_ENV`]
//! set (see `crash.rs`).

#![cfg(feature = "postgres")]

#[path = "common/schedule.rs"]
mod schedule;

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ms_bus::nats::NatsBus;
use ms_bus::{Subscriber, Subscription};
use ms_outbox::{Cancellation, Outbox, Relay};
use sqlx::Postgres;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;
use tokio::process::{Child, Command};

/// Set in the child: `<database url>|<nats url>|<prefix>`.
const CHILD_ENV: &str = "MS_OUTBOX_SCHEDULE_CHILD_RELAY";
const CHILD_TEST: &str = "child_relay";
const MESSAGES: u32 = 2_000;
const KEYS: u32 = 40;
/// Messages per enqueueing transaction.
const PER_TX: u32 = 20;
/// Due times are spread over this span, starting a second after enqueue.
const SPREAD: Duration = Duration::from_secs(20);
/// Cancels attempted at random moments, of random messages.
const CANCELS: u32 = 300;
/// When each relay is killed (and at once restarted), counted from the first enqueue.
const KILLS: [(usize, u64); 6] = [
    (0, 3_000),
    (1, 6_000),
    (0, 9_000),
    (1, 12_000),
    (0, 15_000),
    (1, 18_000),
];
/// No message may be later than this (a relay killed just before a due time is replaced at
/// once, and the other one runs throughout: seconds would already be a bug).
const LATENESS_BOUND: Duration = Duration::from_secs(10);

/// The relay process: runs only when started by the test below, until killed (or until the
/// test closes its stdin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_relay() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let [db, nats, prefix] = spec.split('|').collect::<Vec<_>>()[..] else {
        panic!("{CHILD_ENV}={spec}: want 3 fields");
    };
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(db)
        .await
        .unwrap();
    let bus = NatsBus::builder(async_nats::connect(nats).await.unwrap())
        .prefix(prefix)
        .unwrap()
        .build();
    let relay = Relay::builder(&Outbox::<Postgres>::default(), &pool, bus)
        .build()
        .spawn();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(relay.status().running);
    }
}

fn start(db: &str, nats: &str, prefix: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{db}|{nats}|{prefix}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn kill(child: &mut Child) {
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "killed: {status}");
}

/// What the consumer saw of one message: when it first arrived, its due time, how often.
struct Seen {
    first: OffsetDateTime,
    due: OffsetDateTime,
    copies: u32,
}

type SeenMap = Arc<Mutex<HashMap<String, Seen>>>;

/// Records every delivery; notes those that came before their due time.
fn consume(
    mut deliveries: ms_bus::Deliveries,
) -> (
    SeenMap,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen: SeenMap = Arc::default();
    let early: Arc<Mutex<Vec<String>>> = Arc::default();
    let task = tokio::spawn({
        let (seen, early) = (Arc::clone(&seen), Arc::clone(&early));
        async move {
            while let Some(delivery) = deliveries.next().await {
                let received = OffsetDateTime::now_utc();
                let (envelope, _info, acker) = delivery.unwrap().into_parts();
                acker.ack().await.unwrap();
                let envelope = envelope.unwrap();
                let due = schedule::due_of(&envelope).expect("every message is scheduled");
                if received < due {
                    early
                        .lock()
                        .unwrap()
                        .push(format!("{} at {received}, due {due}", envelope.id()));
                }
                seen.lock()
                    .unwrap()
                    .entry(envelope.id().to_owned())
                    .and_modify(|s| s.copies += 1)
                    .or_insert(Seen {
                        first: received,
                        due,
                        copies: 1,
                    });
            }
        }
    });
    (seen, early, task)
}

/// Cancels random messages at random moments of the run, each in its own transaction; the
/// answers say which must never arrive (`Cancelled`) and which must (it was due already).
async fn cancel_randomly(
    pool: sqlx::PgPool,
    outbox: Outbox<Postgres>,
) -> (HashSet<String>, HashSet<String>) {
    let mut cancelled = HashSet::new();
    let mut too_late = HashSet::new();
    let pause = SPREAD / CANCELS;
    for _ in 0..CANCELS {
        tokio::time::sleep(pause).await;
        let id = format!("m-{}", fastrand::u32(0..MESSAGES));
        let mut tx = pool.begin().await.unwrap();
        match outbox.cancel(&mut *tx, &id).await.unwrap() {
            Cancellation::Cancelled => {
                cancelled.insert(id);
            }
            _ => {
                too_late.insert(id);
            }
        }
        tx.commit().await.unwrap();
    }
    (cancelled, too_late)
}

/// None early, none cancelled published, every other one published.
fn check(
    early: &[String],
    seen: &HashMap<String, Seen>,
    cancelled: &HashSet<String>,
    too_late: &HashSet<String>,
) {
    assert!(
        early.is_empty(),
        "published before their due time: {early:?}"
    );
    let arrived_cancelled: Vec<&String> = cancelled
        .iter()
        .filter(|id| seen.contains_key(*id))
        .collect();
    assert!(
        arrived_cancelled.is_empty(),
        "cancelled, yet published: {arrived_cancelled:?}"
    );
    let missing: Vec<String> = (0..MESSAGES)
        .map(|n| format!("m-{n}"))
        .filter(|id| !cancelled.contains(id) && !seen.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} never published: {missing:?}",
        missing.len()
    );
    // A cancel that found nothing found it due (or cancelled by an earlier cancel).
    assert!(
        too_late
            .iter()
            .filter(|id| !cancelled.contains(*id))
            .all(|id| seen.contains_key(id))
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_survive_killed_relays_and_never_come_early() {
    let (Some(db), Some(nats)) = (ms_testkit::postgres().await, ms_testkit::nats().await) else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(db.url())
        .await
        .unwrap();
    let outbox = Outbox::<Postgres>::default();
    outbox.migrate(&pool).await.unwrap();
    let bus = NatsBus::builder(nats.client().await)
        .prefix(nats.prefix())
        .unwrap()
        .build();
    let deliveries = bus
        .subscribe(&Subscription::events(schedule::SCHEDULED_TOPIC, "checker").unwrap())
        .await
        .unwrap();
    let (seen, early, consumer) = consume(deliveries);

    let mut relays = [
        start(db.url(), nats.url(), nats.prefix()),
        start(db.url(), nats.url(), nats.prefix()),
    ];
    let started = Instant::now();
    let spread_ms = u64::try_from(SPREAD.as_millis()).unwrap();
    for first in (0..MESSAGES).step_by(PER_TX as usize) {
        let mut tx = pool.begin().await.unwrap();
        let messages = (first..first + PER_TX).map(|n| {
            let due = Duration::from_millis(1_000 + fastrand::u64(0..spread_ms));
            schedule::message(&format!("m-{n}"), &format!("k-{}", n % KEYS)).deliver_after(due)
        });
        outbox.enqueue_all(&mut *tx, messages).await.unwrap();
        tx.commit().await.unwrap();
    }

    let cancels = tokio::spawn(cancel_randomly(pool.clone(), outbox.clone()));

    for (relay, at) in KILLS {
        let at = started + Duration::from_millis(at);
        tokio::time::sleep_until(at.into()).await;
        kill(&mut relays[relay]).await;
        relays[relay] = start(db.url(), nats.url(), nats.prefix());
    }
    let (cancelled, too_late) = cancels.await.unwrap();
    let expected = MESSAGES as usize - cancelled.len();

    let deadline = Instant::now() + SPREAD + Duration::from_secs(60);
    while seen.lock().unwrap().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything cancelled that was going to arrive anyway would have by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for relay in &mut relays {
        kill(relay).await;
    }
    consumer.abort();

    let early = early.lock().unwrap().clone();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    check(&early, &seen, &cancelled, &too_late);
    let backlog = outbox.backlog(&pool).await.unwrap();
    assert_eq!((backlog.scheduled, backlog.pending), (0, 0), "{backlog:?}");

    let mut lateness: Vec<Duration> = seen
        .values()
        .map(|s| (s.first - s.due).try_into().unwrap_or_default())
        .collect();
    lateness.sort_unstable();
    let copies: u32 = seen.values().map(|s| s.copies).sum();
    println!(
        "schedule crash: {MESSAGES} scheduled over {SPREAD:?}, {} cancelled ({} cancels too \
         late), {} kills; {} published, {copies} deliveries; lateness p50 {:?}, p90 {:?}, \
         p99 {:?}, max {:?}",
        cancelled.len(),
        too_late.len(),
        KILLS.len(),
        seen.len(),
        percentile(&lateness, 0.5),
        percentile(&lateness, 0.9),
        percentile(&lateness, 0.99),
        lateness[lateness.len() - 1]
    );
    assert!(
        lateness[lateness.len() - 1] < LATENESS_BOUND,
        "max lateness {:?}",
        lateness[lateness.len() - 1]
    );
}
