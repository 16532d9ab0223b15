//! What the relay's crash, scale and outage tests share: writers that enqueue numbered events
//! per key in commit order, a consumer that checks what arrives, and a raw NATS tap that sees
//! every publication, including those JetStream drops as duplicates.
// Each test binary compiles this module and uses its own part of it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use ms_bus::{Deliveries, Envelope, Subscriber, Subscription};
use ms_outbox::{Outbox, OutboxMessage};
use sqlx::{PgPool, Postgres};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The topic every test event goes to.
pub(crate) const TOPIC: &str = "test.events";

/// The per-key counter table: a writer bumps its key's row in the transaction that enqueues,
/// as an aggregate update would, so the counter value is the key's commit order.
pub(crate) async fn create_counters(pool: &PgPool) {
    sqlx::query("CREATE TABLE counters (key TEXT PRIMARY KEY, n INT NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

/// The counters as committed: for each key, how many events it has.
pub(crate) async fn counters(pool: &PgPool) -> HashMap<String, u32> {
    let rows: Vec<(String, i32)> = sqlx::query_as("SELECT key, n FROM counters")
        .fetch_all(pool)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(key, n)| (key, u32::try_from(n).unwrap()))
        .collect()
}

/// The event numbered `seq` of `key`: the key is the envelope's subject, the number its `seq`
/// extension.
pub(crate) fn event(key: &str, seq: u32) -> OutboxMessage {
    let envelope = Envelope::builder("test.happened", "/test")
        .subject(key)
        .extension("seq", seq.to_string())
        .expect("valid extension")
        .build()
        .expect("valid envelope");
    OutboxMessage::event(TOPIC, envelope).partition_key(key)
}

/// One transaction: bumps `key`'s counter by `count` and enqueues the events it numbers.
pub(crate) async fn write(pool: &PgPool, outbox: &Outbox<Postgres>, key: &str, count: u32) {
    try_write(pool, outbox, key, count).await.unwrap();
}

/// [`write`], returning the database's error (an outage) instead of panicking. The counter
/// and the events commit together, so a retried transaction can never number an event twice.
pub(crate) async fn try_write(
    pool: &PgPool,
    outbox: &Outbox<Postgres>,
    key: &str,
    count: u32,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut tx = pool.begin().await?;
    let last: i32 = sqlx::query_scalar(
        "INSERT INTO counters VALUES ($1, $2) ON CONFLICT (key) \
         DO UPDATE SET n = counters.n + $2 RETURNING n",
    )
    .bind(key)
    .bind(i32::try_from(count)?)
    .fetch_one(&mut *tx)
    .await?;
    let last = u32::try_from(last)?;
    outbox
        .enqueue_all(
            &mut *tx,
            (last + 1 - count..=last).map(|seq| event(key, seq)),
        )
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Writers enqueueing `per_writer` events each, `per_tx` to a transaction, on `keys` keys
/// that the writers share (so writers of one key contend for its locks).
pub(crate) fn spawn_writers(
    pool: &PgPool,
    outbox: &Outbox<Postgres>,
    writers: u32,
    per_writer: u32,
    per_tx: u32,
    keys: u32,
) -> tokio::task::JoinSet<()> {
    assert_eq!(per_writer % per_tx, 0);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (pool, outbox) = (pool.clone(), outbox.clone());
        set.spawn(async move {
            for i in 0..per_writer / per_tx {
                let key = format!("k{}", (i * 7 + w * 13) % keys);
                write(&pool, &outbox, &key, per_tx).await;
            }
        });
    }
    set
}

/// Waits for every writer, propagating a writer's panic.
pub(crate) async fn join_writers(mut writers: tokio::task::JoinSet<()>) {
    while let Some(joined) = writers.join_next().await {
        if let Err(e) = joined {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// What arrived, checked as it arrives: per key, the first arrival of each number must be the
/// next number (no gap, no reordering); an arrival of a number already seen is a duplicate.
#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    last: HashMap<String, u32>,
    /// Everything received, duplicates included.
    pub(crate) received: u64,
    /// Arrivals of a number already seen.
    pub(crate) duplicates: u64,
    /// Distinct events received.
    pub(crate) unique: u64,
}

impl Arrivals {
    /// Records an arrival; panics on a gap or a reordering.
    pub(crate) fn record(&mut self, key: &str, seq: u32) {
        self.received += 1;
        let last = self.last.entry(key.to_owned()).or_insert(0);
        if seq <= *last {
            self.duplicates += 1;
            return;
        }
        assert_eq!(
            seq,
            *last + 1,
            "key {key}: event {seq} arrived first after {last}: lost or reordered"
        );
        *last = seq;
        self.unique += 1;
    }

    /// Panics unless every event the counters number arrived.
    pub(crate) fn assert_complete(&self, counters: &HashMap<String, u32>) {
        for (key, &n) in counters {
            let got = self.last.get(key).copied().unwrap_or(0);
            assert_eq!(got, n, "key {key}: {got} of {n} events arrived");
        }
        assert_eq!(self.last.len(), counters.len(), "events of unknown keys");
    }
}

/// The key and number of a delivered envelope.
fn key_and_seq(envelope: &Envelope) -> (String, u32) {
    let key = envelope.subject().expect("a subject").to_owned();
    let seq = envelope
        .extension("seq")
        .expect("a seq extension")
        .parse()
        .expect("a number");
    (key, seq)
}

/// A consumer-group subscriber in a task, acking every delivery after checking it.
pub(crate) struct Consumer {
    pub(crate) arrivals: Arc<Mutex<Arrivals>>,
    /// Every envelope id received once at least; a second arrival of an id is a duplicate.
    pub(crate) ids: Arc<Mutex<HashSet<String>>>,
    progress: watch::Receiver<u64>,
    task: Option<JoinHandle<()>>,
}

impl Consumer {
    /// Subscribes (before anything is published: a new group starts with new messages) and
    /// starts consuming.
    pub(crate) async fn start(bus: &impl Subscriber, subscription: Subscription) -> Self {
        let deliveries = bus.subscribe(&subscription).await.unwrap();
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let ids = Arc::new(Mutex::new(HashSet::new()));
        let (tell, progress) = watch::channel(0);
        let task = tokio::spawn(consume(deliveries, arrivals.clone(), ids.clone(), tell));
        Self {
            arrivals,
            ids,
            progress,
            task: Some(task),
        }
    }

    /// Distinct events received so far.
    pub(crate) fn unique(&self) -> u64 {
        *self.progress.borrow()
    }

    /// A copy of the counts.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        let a = lock(&self.arrivals);
        (a.received, a.unique, a.duplicates)
    }

    /// Waits until `n` distinct events arrived; panics after `limit`, or with the consumer's
    /// own panic (a gap, a reordering).
    pub(crate) async fn wait_for(&mut self, n: u64, limit: Duration) {
        let reached = tokio::time::timeout(limit, async {
            self.progress.wait_for(|&u| u >= n).await.map(drop)
        })
        .await;
        match reached {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                // The consumer stopped: show why.
                if let Some(task) = self.task.take()
                    && let Err(e) = task.await
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
                panic!("the consumer stopped");
            }
            Err(elapsed) => panic!(
                "{} of {n} events arrived ({elapsed} after {limit:?}): {:?}",
                self.unique(),
                lock(&self.arrivals)
            ),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn consume(
    mut deliveries: Deliveries,
    arrivals: Arc<Mutex<Arrivals>>,
    ids: Arc<Mutex<HashSet<String>>>,
    tell: watch::Sender<u64>,
) {
    while let Some(delivery) = deliveries.next().await {
        // A broker restart shows as errors on the stream, which reopens by itself.
        let Ok(delivery) = delivery else { continue };
        let envelope = delivery.message().expect("a decodable envelope");
        let (key, seq) = key_and_seq(envelope);
        lock(&ids).insert(envelope.id().to_owned());
        let unique = {
            let mut a = lock(&arrivals);
            a.record(&key, seq);
            a.unique
        };
        // A lost ack is a redelivery, which the checker counts as a duplicate.
        let _ = delivery.acker().ack().await;
        tell.send_replace(unique);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every message published on a subject, seen by a plain NATS subscription: JetStream drops a
/// republished envelope (same `Nats-Msg-Id`) from its stream, but a plain subscriber still sees
/// it, so this counts what relays actually published.
pub(crate) struct Tap {
    seen: Arc<Mutex<(TapCounts, HashSet<String>)>>,
    task: JoinHandle<()>,
}

/// What a [`Tap`] saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TapCounts {
    /// Messages seen.
    pub(crate) messages: u64,
    /// Distinct `Nats-Msg-Id`s seen.
    pub(crate) distinct: u64,
}

impl TapCounts {
    /// Messages seen whose id was seen before: republications.
    pub(crate) fn republished(&self) -> u64 {
        self.messages - self.distinct
    }
}

impl Tap {
    /// Subscribes to `subject` and waits until the server has the subscription.
    pub(crate) async fn start(client: async_nats::Client, subject: String) -> Self {
        let mut messages = client.subscribe(subject).await.unwrap();
        client.flush().await.unwrap();
        let seen = Arc::new(Mutex::new((TapCounts::default(), HashSet::new())));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Some(message) = messages.next().await {
                    let id = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(ms_bus::nats::MSG_ID_HEADER))
                        .map(|v| v.as_str().to_owned())
                        .unwrap_or_default();
                    let (counts, ids) = &mut *lock(&seen);
                    counts.messages += 1;
                    if ids.insert(id) {
                        counts.distinct += 1;
                    }
                }
            }
        });
        Self { seen, task }
    }

    /// What it saw so far.
    pub(crate) fn counts(&self) -> TapCounts {
        lock(&self.seen).0
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pending rows, as the outbox counts them.
pub(crate) async fn pending(outbox: &Outbox<Postgres>, pool: &PgPool) -> u64 {
    outbox.backlog(pool).await.unwrap().pending
}

/// Polls the outbox until nothing is pending; panics after `limit`.
pub(crate) async fn wait_drained(outbox: &Outbox<Postgres>, pool: &PgPool, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let pending = pending(outbox, pool).await;
        if pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} rows still pending after {limit:?}"
        );
        // No signal exists for "the table is empty": poll it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
