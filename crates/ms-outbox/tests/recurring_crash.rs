//! A recurring schedule every second (a cron expression, with feature `cron`) through killed
//! relays: three relay processes, each
//! killed (SIGKILL) and restarted, then all three down for 5 s. Exactly one message per tick
//! reaches the consumer (counted by id), every tick while a relay runs, none early, and after
//! the outage the default missed-tick policy (fire the latest missed tick once) holds.
//!
//! The relays run in child processes: this test binary itself, run again with [`CHILD_ENV`]
//! set (see `crash.rs`).

#![cfg(feature = "postgres")]

#[path = "common/schedule.rs"]
mod schedule;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ms_bus::nats::NatsBus;
use ms_bus::{Subscriber, Subscription};
use ms_outbox::{Outbox, Recurring, Relay};
use sqlx::Postgres;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;
use tokio::process::{Child, Command};

/// Set in the child: `<database url>|<nats url>|<prefix>`.
const CHILD_ENV: &str = "MS_OUTBOX_RECURRING_CHILD_RELAY";
const CHILD_TEST: &str = "child_relay";
const EVERY: Duration = Duration::from_secs(1);
const RELAYS: usize = 3;
const OUTAGE: Duration = Duration::from_secs(5);
/// Ticks this close to a kill or a restart may go either way.
const MARGIN: Duration = Duration::from_millis(1_500);

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

/// The schedule: a cron expression with the feature (the test), else the interval.
fn every_second() -> Recurring {
    let template = schedule::message("template", "second");
    #[cfg(feature = "cron")]
    let schedule = Recurring::cron("second", "* * * * * *", "UTC", template);
    #[cfg(not(feature = "cron"))]
    let schedule = Recurring::every("second", EVERY, template);
    schedule.unwrap()
}

/// Each tick's due time and how many copies arrived, by id.
type Ticks = Arc<Mutex<HashMap<String, (OffsetDateTime, u32)>>>;

fn consume(mut deliveries: ms_bus::Deliveries, ticks: Ticks, early: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        while let Some(delivery) = deliveries.next().await {
            let received = OffsetDateTime::now_utc();
            // The test's NATS prefix is cleaned up when it ends.
            let Ok(delivery) = delivery else { return };
            let (envelope, _info, acker) = delivery.into_parts();
            acker.ack().await.unwrap();
            let envelope = envelope.unwrap();
            let due = schedule::due_of(&envelope).expect("a tick carries its due time");
            if received < due {
                early.lock().unwrap().push(envelope.id().to_owned());
            }
            ticks
                .lock()
                .unwrap()
                .entry(envelope.id().to_owned())
                .or_insert((due, 0))
                .1 += 1;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_every_second_is_one_message_through_kills_and_an_outage() {
    let (Some(db), Some(nats)) = (ms_testkit::postgres().await, ms_testkit::nats().await) else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(2)
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
    let ticks: Ticks = Arc::default();
    let early: Arc<Mutex<Vec<String>>> = Arc::default();
    consume(deliveries, Arc::clone(&ticks), Arc::clone(&early));

    let begun = OffsetDateTime::now_utc();
    outbox.register(&pool, &every_second()).await.unwrap();
    let spawn = || start(db.url(), nats.url(), nats.prefix());
    let mut relays: Vec<Child> = (0..RELAYS).map(|_| spawn()).collect();
    // Each relay killed and restarted in turn, one every 2 s, while the others run.
    for relay in &mut relays {
        tokio::time::sleep(Duration::from_secs(2)).await;
        kill(relay).await;
        *relay = spawn();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // All down.
    for relay in &mut relays {
        kill(relay).await;
    }
    let down = OffsetDateTime::now_utc();
    tokio::time::sleep(OUTAGE).await;
    let up = OffsetDateTime::now_utc();
    let mut relays: Vec<Child> = (0..RELAYS).map(|_| spawn()).collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for relay in &mut relays {
        kill(relay).await;
    }

    let early = early.lock().unwrap().clone();
    assert!(early.is_empty(), "before their due time: {early:?}");
    let ticks = ticks.lock().unwrap().clone();
    check(&ticks, begun, down, up, end);
}

/// One message per tick, every tick while a relay ran, at most one of the outage's.
fn check(
    ticks: &HashMap<String, (OffsetDateTime, u32)>,
    begun: OffsetDateTime,
    down: OffsetDateTime,
    up: OffsetDateTime,
    end: OffsetDateTime,
) {
    let twice: Vec<&String> = ticks
        .iter()
        .filter(|(_, t)| t.1 > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    // One message per tick: no two ids for one tick either.
    let mut per_tick: HashMap<OffsetDateTime, Vec<&String>> = HashMap::new();
    for (id, (due, _)) in ticks {
        per_tick.entry(*due).or_default().push(id);
    }
    let doubled: Vec<_> = per_tick.values().filter(|ids| ids.len() > 1).collect();
    assert!(
        doubled.is_empty(),
        "ticks sent as several messages: {doubled:?}"
    );
    let fired: Vec<OffsetDateTime> = {
        let mut fired: Vec<OffsetDateTime> = ticks.values().map(|t| t.0).collect();
        fired.sort_unstable();
        fired
    };
    // Every tick while relays ran: from the first, up to the outage, and after the restart.
    let every = time::Duration::try_from(EVERY).unwrap();
    let margin = time::Duration::try_from(MARGIN).unwrap();
    let first = *fired.first().expect("ticks arrived");
    assert!(
        first - begun <= every + margin,
        "first tick {first}, registered {begun}"
    );
    let expect_all = |from: OffsetDateTime, to: OffsetDateTime| {
        let mut tick = fired
            .iter()
            .copied()
            .find(|t| *t >= from)
            .unwrap_or_else(|| panic!("no tick after {from}: {fired:?}"));
        while tick <= to {
            assert!(fired.contains(&tick), "tick {tick} missing: {fired:?}");
            tick += every;
        }
    };
    expect_all(first, down - margin);
    expect_all(up + margin, end - margin);
    // The outage: its ticks were missed; at the restart only the latest due one fires (with
    // a tick every second it is at most a second late, so it may fall after `up`).
    let missed: Vec<&OffsetDateTime> = fired
        .iter()
        .filter(|t| **t > down + margin && **t < up)
        .collect();
    assert!(
        missed.len() <= 1,
        "more than one missed tick fired after the outage: {missed:?}"
    );
    println!(
        "recurring crash: {} ticks from {first} to {}; outage {down} .. {up}: fired in it \
         {missed:?}",
        fired.len(),
        fired[fired.len() - 1]
    );
}
