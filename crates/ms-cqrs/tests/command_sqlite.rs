//! The command executor on SQLite, the embedded default, with a database file: the same
//! promises as on PostgreSQL (SQLite serialises the writers).
#![cfg(feature = "sqlite")]

use ms_bus::Envelope;
use ms_cqrs::BusinessRuleError;
use ms_cqrs::command::{CommandError, CommandExecutor, Decision, Repository, Versioned};
use ms_outbox::Outbox;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

const TOPIC: &str = "test.counters";

/// Counters in the application's table, saved with an optimistic version check.
struct Counters;

impl Repository<Sqlite> for Counters {
    type State = i64;

    async fn load(
        &self,
        conn: &mut SqliteConnection,
        id: &str,
    ) -> Result<Option<Versioned<i64>>, sqlx::Error> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT value, version FROM counters WHERE id = ?")
                .bind(id)
                .fetch_optional(conn)
                .await?;
        Ok(row.map(|(value, version)| Versioned::new(value, version.cast_unsigned())))
    }

    async fn save(
        &self,
        conn: &mut SqliteConnection,
        id: &str,
        value: &i64,
        expected: Option<u64>,
        new_version: u64,
    ) -> Result<bool, sqlx::Error> {
        let done = match expected {
            None => {
                sqlx::query("INSERT INTO counters (id, value, version) VALUES (?, ?, ?)")
                    .bind(id)
                    .bind(value)
                    .bind(new_version.cast_signed())
                    .execute(conn)
                    .await?
            }
            Some(expected) => {
                sqlx::query(
                    "UPDATE counters SET value = ?, version = ? WHERE id = ? AND version = ?",
                )
                .bind(value)
                .bind(new_version.cast_signed())
                .bind(id)
                .bind(expected.cast_signed())
                .execute(conn)
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }
}

fn add(
    by: i64,
    topic: &'static str,
) -> impl FnMut(Option<&i64>) -> Result<Decision<i64>, BusinessRuleError> + Send {
    move |current| {
        Ok(Decision::new(current.copied().unwrap_or(0) + by)
            .event(topic, Envelope::builder("test.counter.added", "/test")))
    }
}

async fn setup() -> (tempfile::TempDir, SqlitePool, Outbox<Sqlite>) {
    let dir = tempfile::tempdir().unwrap();
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(dir.path().join("commands.db"))
                .create_if_missing(true),
        )
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE counters (id TEXT PRIMARY KEY, value INTEGER NOT NULL CHECK (value < 1000), \
         version INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let outbox = Outbox::<Sqlite>::default();
    outbox.migrate(&pool).await.unwrap();
    (dir, pool, outbox)
}

/// The outbox's rows in id (relay) order: partition key, subject and sequence.
async fn outbox_rows(pool: &SqlitePool) -> Vec<(String, Option<String>, Option<String>)> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT partition_key, envelope FROM ms_outbox ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(key, envelope)| {
            let envelope: serde_json::Value = serde_json::from_str(&envelope).unwrap();
            let attr = |name: &str| {
                envelope
                    .get(name)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            (key, attr("subject"), attr("sequence"))
        })
        .collect()
}

async fn stored(pool: &SqlitePool, id: &str) -> Option<(i64, i64)> {
    sqlx::query_as("SELECT value, version FROM counters WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_one_aggregate_land_every_command_once_in_sequence() {
    let (_dir, pool, outbox) = setup().await;
    let commands = CommandExecutor::new(pool.clone(), outbox);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let commands = commands.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    commands.execute(&Counters, "hot", add(1, TOPIC)).await?;
                }
                Ok::<_, CommandError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(stored(&pool, "hot").await, Some((100, 100)));
    let rows = outbox_rows(&pool).await;
    let expected: Vec<_> = (1..=100)
        .map(|n| {
            (
                "hot".to_owned(),
                Some("hot".to_owned()),
                Some(n.to_string()),
            )
        })
        .collect();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn a_broken_rule_or_a_failing_step_leaves_state_and_outbox_untouched() {
    let (_dir, pool, outbox) = setup().await;
    let commands = CommandExecutor::new(pool.clone(), outbox);
    commands
        .execute(&Counters, "c-1", add(1, TOPIC))
        .await
        .unwrap();

    let rule = commands
        .execute(&Counters, "c-1", |_| {
            Err(BusinessRuleError::unprocessable("TOO_MUCH", "no"))
        })
        .await
        .unwrap_err();
    assert_eq!(rule.http_status(), 422);
    let save = commands
        .execute(&Counters, "c-1", add(5000, TOPIC))
        .await
        .unwrap_err();
    assert!(matches!(save, CommandError::Database(_)), "{save}");
    let enqueue = commands
        .execute(&Counters, "c-1", add(1, "not a valid topic!"))
        .await
        .unwrap_err();
    assert!(matches!(enqueue, CommandError::Outbox(_)), "{enqueue}");
    assert_eq!(enqueue.http_status(), 500);

    assert_eq!(stored(&pool, "c-1").await, Some((1, 1)));
    assert_eq!(outbox_rows(&pool).await.len(), 1);
}

#[tokio::test]
async fn events_without_a_state_for_a_missing_aggregate_are_refused() {
    let (_dir, pool, outbox) = setup().await;
    let commands = CommandExecutor::new(pool.clone(), outbox);
    let err = commands
        .execute(&Counters, "ghost", |_| {
            Ok(Decision::unchanged().event(TOPIC, Envelope::builder("test.poked", "/test")))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::InvalidDecision(_)), "{err}");
    assert_eq!(err.http_status(), 500);
    // On an existing aggregate the same decision keeps the state and moves the version.
    commands
        .execute(&Counters, "c-1", add(3, TOPIC))
        .await
        .unwrap();
    let poked = commands
        .execute(&Counters, "c-1", |_| {
            Ok(Decision::unchanged().event(TOPIC, Envelope::builder("test.poked", "/test")))
        })
        .await
        .unwrap();
    assert_eq!((poked.state, poked.version), (Some(3), 2));
    assert_eq!(stored(&pool, "c-1").await, Some((3, 2)));
    assert!(stored(&pool, "ghost").await.is_none());
}

#[tokio::test]
async fn an_unreachable_database_is_a_503() {
    let (_dir, pool, outbox) = setup().await;
    let commands = CommandExecutor::new(pool.clone(), outbox);
    pool.close().await;
    let err = commands
        .execute(&Counters, "c-1", add(1, TOPIC))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Database(sqlx::Error::PoolClosed)),
        "{err}"
    );
    assert_eq!(err.http_status(), 503);
    assert_eq!(err.grpc_code_name(), "UNAVAILABLE");
    let problem = serde_json::to_value(err.problem()).unwrap();
    assert_eq!(
        problem,
        serde_json::json!({
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "the service is unavailable; retry later",
        })
    );
}
