//! The command executor on a real PostgreSQL: state and events commit together or not at all,
//! conflicts are retried, and the events of one aggregate carry `sequence` 1, 2, 3, … in the
//! outbox, whatever the concurrency.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ms_bus::Envelope;
use ms_cqrs::BusinessRuleError;
use ms_cqrs::command::{CommandError, CommandExecutor, Decision, Repository, Versioned};
use ms_outbox::Outbox;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::Barrier;

const TOPIC: &str = "test.counters";

/// Counters in the application's table; `value` must stay below 1,000 (a CHECK constraint).
#[derive(Default)]
struct Counters {
    /// Load with `FOR UPDATE` (writers queue) or not (writers conflict and retry).
    lock: bool,
    /// The first loads wait here for each other, so that their transactions race.
    race: Option<(Arc<Barrier>, u32)>,
    /// Run at REPEATABLE READ: a concurrent update then fails with a serialization failure
    /// (40001) rather than finding no row at the expected version.
    repeatable_read: bool,
    /// Pretend a concurrent writer always wins.
    always_lose: bool,
    loads: AtomicU32,
}

impl Repository<Postgres> for Counters {
    type State = i64;

    async fn load(
        &self,
        conn: &mut PgConnection,
        id: &str,
    ) -> Result<Option<Versioned<i64>>, sqlx::Error> {
        if self.repeatable_read {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *conn)
                .await?;
        }
        let sql = if self.lock {
            "SELECT value, version FROM counters WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT value, version FROM counters WHERE id = $1"
        };
        let row: Option<(i64, i64)> = sqlx::query_as(sql).bind(id).fetch_optional(conn).await?;
        let n = self.loads.fetch_add(1, Ordering::SeqCst);
        if let Some((barrier, racers)) = &self.race
            && n < *racers
        {
            barrier.wait().await;
        }
        Ok(row.map(|(value, version)| Versioned::new(value, version.cast_unsigned())))
    }

    async fn save(
        &self,
        conn: &mut PgConnection,
        id: &str,
        value: &i64,
        expected: Option<u64>,
        new_version: u64,
    ) -> Result<bool, sqlx::Error> {
        if self.always_lose {
            return Ok(false);
        }
        let done =
            match expected {
                None => {
                    sqlx::query("INSERT INTO counters (id, value, version) VALUES ($1, $2, $3)")
                        .bind(id)
                        .bind(value)
                        .bind(new_version.cast_signed())
                        .execute(conn)
                        .await?
                }
                Some(expected) => sqlx::query(
                    "UPDATE counters SET value = $2, version = $3 WHERE id = $1 AND version = $4",
                )
                .bind(id)
                .bind(value)
                .bind(new_version.cast_signed())
                .bind(expected.cast_signed())
                .execute(conn)
                .await?,
            };
        Ok(done.rows_affected() == 1)
    }
}

/// Adds `by` to the counter (creating it), with one event; `topic` is where the event goes.
fn add(
    by: i64,
    topic: &'static str,
) -> impl FnMut(Option<&i64>) -> Result<Decision<i64>, BusinessRuleError> + Send {
    move |current| {
        let event = Envelope::builder("test.counter.added", "/test")
            .json_data(&serde_json::json!({ "by": by }))
            .expect("json");
        Ok(Decision::new(current.copied().unwrap_or(0) + by).event(topic, event))
    }
}

async fn setup() -> Option<(ms_testkit::TestPostgres, PgPool, Outbox<Postgres>)> {
    let db = ms_testkit::postgres().await?;
    let pool = db.pool().await;
    sqlx::query(
        "CREATE TABLE counters (id TEXT PRIMARY KEY, value BIGINT NOT NULL CHECK (value < 1000), \
         version BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let outbox = Outbox::<Postgres>::default();
    outbox.migrate(&pool).await.unwrap();
    Some((db, pool, outbox))
}

/// A row of the outbox, as the relay would publish it.
#[derive(Debug)]
struct Row {
    kind: i16,
    destination: String,
    key: String,
    envelope: serde_json::Value,
}

impl Row {
    fn attr(&self, name: &str) -> Option<&str> {
        self.envelope.get(name).and_then(serde_json::Value::as_str)
    }

    fn sequence(&self) -> u64 {
        self.attr("sequence")
            .expect("events carry a sequence")
            .parse()
            .expect("a decimal sequence")
    }
}

async fn outbox_rows(pool: &PgPool) -> Vec<Row> {
    let rows: Vec<(i16, String, String, String)> = sqlx::query_as(
        "SELECT kind, destination, partition_key, envelope FROM ms_outbox ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(kind, destination, key, envelope)| Row {
            kind,
            destination,
            key,
            envelope: serde_json::from_str(&envelope).unwrap(),
        })
        .collect()
}

async fn stored(pool: &PgPool, id: &str) -> Option<(i64, i64)> {
    sqlx::query_as("SELECT value, version FROM counters WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_events_and_commands_commit_together_and_are_stamped() {
    let Some((_db, pool, outbox)) = setup().await else {
        return;
    };
    let commands = CommandExecutor::new(pool.clone(), outbox);
    let repo = Counters::default();
    commands.execute(&repo, "c-1", add(5, TOPIC)).await.unwrap();
    let executed = commands
        .execute(&repo, "c-1", |current| {
            let value = current.copied().unwrap_or(0);
            Ok(Decision::new(value + 2)
                .event(TOPIC, Envelope::builder("test.counter.added", "/test"))
                .command("test.notify", Envelope::builder("test.notify", "/test"))
                .event(
                    TOPIC,
                    Envelope::builder("test.counter.audited", "/test")
                        .subject("audit")
                        .partition_key("c-1"),
                ))
        })
        .await
        .unwrap();
    assert_eq!(executed.version, 3);
    assert_eq!(executed.state, Some(7));
    assert_eq!(executed.attempts, 1);
    assert_eq!(stored(&pool, "c-1").await, Some((7, 3)));

    let rows = outbox_rows(&pool).await;
    let summary: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.kind,
                r.destination.as_str(),
                r.key.as_str(),
                r.attr("subject"),
                r.attr("sequence"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (0, TOPIC, "c-1", Some("c-1"), Some("1")),
            (0, TOPIC, "c-1", Some("c-1"), Some("2")),
            (1, "test.notify", "c-1", None, None),
            (0, TOPIC, "c-1", Some("audit"), Some("3")),
        ]
    );
    // What the executor reports is what it enqueued.
    assert_eq!(executed.events[1].id(), rows[3].attr("id").unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rule_or_a_failing_step_leaves_state_and_outbox_untouched() {
    let Some((_db, pool, outbox)) = setup().await else {
        return;
    };
    let commands = CommandExecutor::new(pool.clone(), outbox);
    let repo = Counters::default();
    commands.execute(&repo, "c-1", add(1, TOPIC)).await.unwrap();

    let rule = commands
        .execute(&repo, "c-1", |_| {
            Err(BusinessRuleError::conflict(
                "COUNTER_FROZEN",
                "c-1 is frozen",
            ))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&rule, CommandError::Rule(e) if e.code() == "COUNTER_FROZEN"),
        "{rule}"
    );

    // The save fails (the table's CHECK constraint): nothing is enqueued.
    let save = commands
        .execute(&repo, "c-1", add(5000, TOPIC))
        .await
        .unwrap_err();
    assert!(matches!(save, CommandError::Database(_)), "{save}");

    // The save succeeds but the enqueue fails (a topic the bus cannot carry): the state is
    // rolled back with it.
    let enqueue = commands
        .execute(&repo, "c-1", add(1, "not a valid topic!"))
        .await
        .unwrap_err();
    assert!(matches!(enqueue, CommandError::Outbox(_)), "{enqueue}");

    assert_eq!(stored(&pool, "c-1").await, Some((1, 1)));
    assert_eq!(outbox_rows(&pool).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_without_events_writes_nothing() {
    let Some((_db, pool, outbox)) = setup().await else {
        return;
    };
    let commands = CommandExecutor::new(pool.clone(), outbox);
    let repo = Counters::default();
    commands.execute(&repo, "c-1", add(1, TOPIC)).await.unwrap();
    let executed = commands
        .execute(&repo, "c-1", |_| Ok(Decision::new(99)))
        .await
        .unwrap();
    assert_eq!((executed.state, executed.version), (Some(1), 1));
    let none = commands
        .execute(&repo, "c-2", |_| Ok(Decision::unchanged()))
        .await
        .unwrap();
    assert_eq!((none.state, none.version), (None, 0));
    assert_eq!(stored(&pool, "c-1").await, Some((1, 1)));
    assert_eq!(stored(&pool, "c-2").await, None);
    assert_eq!(outbox_rows(&pool).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_always_loses_gives_up_after_max_attempts_with_nothing_written() {
    let Some((_db, pool, outbox)) = setup().await else {
        return;
    };
    let commands = CommandExecutor::new(pool.clone(), outbox)
        .max_attempts(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(2));
    let repo = Counters {
        always_lose: true,
        ..Counters::default()
    };
    let err = commands
        .execute(&repo, "c-1", add(1, TOPIC))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommandError::Conflict { id, attempts: 3 } if id == "c-1"),
        "{err}"
    );
    assert_eq!(err.http_status(), 409);
    assert_eq!(err.grpc_code(), 10);
    assert_eq!(repo.loads.load(Ordering::SeqCst), 3);
    assert!(outbox_rows(&pool).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_create_retries_and_sees_the_winners_state() {
    let Some((_db, pool, outbox)) = setup().await else {
        return;
    };
    let commands = CommandExecutor::new(pool.clone(), outbox);
    // Both creators load before either saves: both see no counter and try to insert it.
    let repo = Arc::new(Counters {
        race: Some((Arc::new(Barrier::new(2)), 2)),
        ..Counters::default()
    });
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (commands, repo) = (commands.clone(), Arc::clone(&repo));
            tokio::spawn(async move { commands.execute(&*repo, "c-1", add(1, TOPIC)).await })
        })
        .collect();
    let mut attempts = Vec::new();
    for task in tasks {
        attempts.push(task.await.unwrap().unwrap().attempts);
    }
    attempts.sort_unstable();
    assert_eq!(attempts, [1, 2], "the loser retried once");
    assert_eq!(stored(&pool, "c-1").await, Some((2, 2)));
    let sequences: Vec<_> = outbox_rows(&pool).await.iter().map(Row::sequence).collect();
    assert_eq!(sequences, [1, 2]);
}

/// Eight tasks × 25 commands on one aggregate: every command lands once, and the outbox
/// holds sequences 1..=200 in id (relay) order.
async fn eight_writers_on_one_aggregate(repo: Counters, max_attempts: u32) {
    let Some((_db, pool, outbox)) = setup().await else {
        return;
    };
    let commands = CommandExecutor::new(pool.clone(), outbox).max_attempts(max_attempts);
    let repo = Arc::new(repo);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (commands, repo) = (commands.clone(), Arc::clone(&repo));
            tokio::spawn(async move {
                let mut attempts = 0;
                for _ in 0..25 {
                    let executed = commands.execute(&*repo, "hot", add(1, TOPIC)).await?;
                    attempts += executed.attempts;
                }
                Ok::<_, CommandError>(attempts)
            })
        })
        .collect();
    let mut attempts = 0;
    for task in tasks {
        attempts += task.await.unwrap().unwrap();
    }
    println!(
        "lock={}, repeatable_read={}: 200 commands took {attempts} attempts",
        repo.lock, repo.repeatable_read
    );

    assert_eq!(stored(&pool, "hot").await, Some((200, 200)));
    let rows = outbox_rows(&pool).await;
    let sequences: Vec<_> = rows.iter().map(Row::sequence).collect();
    assert_eq!(sequences, (1..=200).collect::<Vec<_>>());
    assert!(
        rows.iter()
            .all(|r| r.key == "hot" && r.attr("subject") == Some("hot"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_optimistic_writers_retry_until_every_command_lands_once() {
    // Without a row lock every writer races; the retries are what make all 200 land.
    eight_writers_on_one_aggregate(Counters::default(), 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failures_are_retried() {
    let repo = Counters {
        repeatable_read: true,
        ..Counters::default()
    };
    eight_writers_on_one_aggregate(repo, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_with_a_row_lock_queue_on_the_default_attempts() {
    let repo = Counters {
        lock: true,
        ..Counters::default()
    };
    eight_writers_on_one_aggregate(repo, ms_cqrs::command::DEFAULT_MAX_ATTEMPTS).await;
}
