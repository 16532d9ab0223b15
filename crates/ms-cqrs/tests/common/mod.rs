//! A ledger projection for the tests: per key, the sum of the amounts, how many events were
//! applied, and whether they came in sequence order; and a side-effect table that counts how
//! often each event's live side effect ran.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ms_bus::Envelope;
use ms_cqrs::{ApplyContext, ApplyError, Projection};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;

pub const EVENT_TYPE: &str = "ledger.entry";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub seq: i64,
    pub amount: i64,
    #[serde(default)]
    pub poison: bool,
}

/// An entry as an envelope: keyed, with the `sequence` extension.
pub fn event(key: &str, seq: i64, amount: i64) -> Envelope {
    entry_event(&Entry {
        key: key.to_owned(),
        seq,
        amount,
        poison: false,
    })
}

pub fn entry_event(entry: &Entry) -> Envelope {
    Envelope::builder(EVENT_TYPE, "/tests")
        .subject(entry.key.clone())
        .partition_key(entry.key.clone())
        .extension(ms_cqrs::SEQUENCE_EXTENSION, entry.seq.to_string())
        .unwrap()
        .json_data(entry)
        .unwrap()
        .build()
        .unwrap()
}

/// One key's row of the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub total: i64,
    pub applied: i64,
    pub last_seq: i64,
    pub in_order: bool,
}

/// The fold the read model must equal.
pub fn fold<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> BTreeMap<String, Row> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for entry in entries {
        let row = rows.entry(entry.key.clone()).or_insert(Row {
            total: 0,
            applied: 0,
            last_seq: 0,
            in_order: true,
        });
        row.in_order &= entry.seq == row.last_seq + 1;
        row.total += entry.amount;
        row.applied += 1;
        row.last_seq = entry.seq;
    }
    rows
}

#[derive(Clone, Default)]
pub struct Ledger {
    /// Poison entries fail (permanently) unless this is set.
    pub accept_poison: Arc<AtomicBool>,
    /// Sleep per event, to make batches slow (the kill test).
    pub delay: Option<Duration>,
    /// Poison entries make `apply` panic (a projection bug) instead of failing.
    pub panic_on_poison: bool,
}

pub fn create_sql(ctx: &ApplyContext) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY, total BIGINT NOT NULL, \
         applied BIGINT NOT NULL, last_seq BIGINT NOT NULL, in_order INTEGER NOT NULL); \
         CREATE TABLE IF NOT EXISTS ledger_effects (event_id TEXT PRIMARY KEY, times BIGINT NOT NULL)",
        ctx.table("ledger")
    )
}

pub fn upsert_sql(ctx: &ApplyContext) -> String {
    let t = ctx.table("ledger");
    format!(
        "INSERT INTO {t} (key, total, applied, last_seq, in_order) \
         VALUES ($1, $2, 1, $3, CASE WHEN $3 = 1 THEN 1 ELSE 0 END) \
         ON CONFLICT (key) DO UPDATE SET total = {t}.total + excluded.total, \
         applied = {t}.applied + 1, \
         in_order = CASE WHEN {t}.in_order = 1 AND excluded.last_seq = {t}.last_seq + 1 THEN 1 ELSE 0 END, \
         last_seq = excluded.last_seq"
    )
}

pub const EFFECT_SQL: &str = "INSERT INTO ledger_effects (event_id, times) VALUES ($1, 1) \
     ON CONFLICT (event_id) DO UPDATE SET times = ledger_effects.times + 1";

macro_rules! ledger_for {
    ($db:ty, $conn:ty) => {
        impl Projection<$db> for Ledger {
            fn name(&self) -> &str {
                "ledger"
            }

            fn event_types(&self) -> &[&str] {
                &["ledger.*"]
            }

            fn tables(&self) -> &[&str] {
                &["ledger"]
            }

            async fn setup(&self, conn: &mut $conn, ctx: &ApplyContext) -> Result<(), ApplyError> {
                sqlx::raw_sql(AssertSqlSafe(create_sql(ctx)))
                    .execute(conn)
                    .await?;
                Ok(())
            }

            async fn apply(
                &self,
                conn: &mut $conn,
                event: &Envelope,
                ctx: &ApplyContext,
            ) -> Result<(), ApplyError> {
                let entry: Entry = event.json_data()?;
                assert!(
                    !(entry.poison && self.panic_on_poison),
                    "entry {} of {} makes the projection panic",
                    entry.seq,
                    entry.key
                );
                if entry.poison && !self.accept_poison.load(Ordering::SeqCst) {
                    return Err(ApplyError::permanent(format!(
                        "entry {} of {} is poison",
                        entry.seq, entry.key
                    )));
                }
                if let Some(delay) = self.delay {
                    tokio::time::sleep(delay).await;
                }
                sqlx::query(AssertSqlSafe(upsert_sql(ctx)))
                    .bind(&entry.key)
                    .bind(entry.amount)
                    .bind(entry.seq)
                    .execute(&mut *conn)
                    .await?;
                if !ctx.replaying() {
                    sqlx::query(EFFECT_SQL)
                        .bind(event.id())
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }
        }
    };
}

ledger_for!(sqlx::Postgres, sqlx::PgConnection);
ledger_for!(sqlx::Sqlite, sqlx::SqliteConnection);

/// Reads a version's (or the view's) table as a map.
pub async fn read_model<DB>(pool: &sqlx::Pool<DB>, table: &str) -> BTreeMap<String, Row>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (String, i64, i64, i64, i32): for<'r> sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: for<'q> sqlx::IntoArguments<DB>,
{
    let rows: Vec<(String, i64, i64, i64, i32)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT key, total, applied, last_seq, in_order FROM {table} ORDER BY key"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(key, total, applied, last_seq, in_order)| {
            (
                key,
                Row {
                    total,
                    applied,
                    last_seq,
                    in_order: in_order == 1,
                },
            )
        })
        .collect()
}

/// Waits until `condition` holds, or panics after `limit` with `what`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
