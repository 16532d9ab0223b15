//! [`SagaStore`]: the instance table and the parked messages, in the service's own database.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_saga::{SagaStore, Status};
//! use sqlx::Sqlite;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let store = SagaStore::<Sqlite>::new(pool);
//! store.migrate().await?; // idempotent; run it at start-up
//! let parked = store.instances::<serde_json::Value>("payment", Some(Status::Parked), 10).await?;
//! assert!(parked.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! The tables (default names [`DEFAULT_TABLE`] and the same with `_parked`) are described in
//! the crate's `migrations/` files. Migrations are versioned per table in `ms_saga_schema`,
//! as ms-outbox does for its own, so that [`SagaStore::migrations`] can hand them to a
//! project's own migration tool instead.

mod backend;
pub(crate) mod queries;
mod rows;

use std::fmt;
use std::time::Duration;

use ms_bus::Envelope;
use ms_outbox::{Migration, TableName};
use serde::de::DeserializeOwned;
use sqlx::Pool;
use time::OffsetDateTime;

pub use backend::SagaBackend;
pub(crate) use rows::RawInstance;

use crate::SagaError;

/// The instance table's name unless [`SagaStore::with_table`] names another.
pub const DEFAULT_TABLE: &str = "ms_saga";

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Handling messages.
    Active,
    /// A message failed after its retries: it and every later message of the instance wait
    /// in the parked table until [`replay`](crate::SagaRunner::replay) or
    /// [`discard`](crate::SagaRunner::discard).
    Parked,
    /// Done: later messages are settled without effect.
    Completed,
}

impl Status {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Parked => "parked",
            Self::Completed => "completed",
        }
    }

    pub(crate) fn parse(code: &str) -> Option<Self> {
        match code {
            "active" => Some(Self::Active),
            "parked" => Some(Self::Parked),
            "completed" => Some(Self::Completed),
            _ => None,
        }
    }
}

/// One stored instance, as the inspection methods return it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Instance<S> {
    /// The correlation id.
    pub id: String,
    /// The state after the last handled message.
    pub state: S,
    /// How many messages changed it (the optimistic lock).
    pub version: u64,
    /// Where it is in its life.
    pub status: Status,
    /// The pending timeouts: name and scheduled envelope id.
    pub timeouts: Vec<(String, String)>,
    /// When the first message was handled.
    pub created_at: OffsetDateTime,
    /// When the last message was handled (or parked).
    pub updated_at: OffsetDateTime,
    /// When it completed.
    pub completed_at: Option<OffsetDateTime>,
}

/// A message waiting in the parked table.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ParkedMessage {
    /// Its row id (arrival order).
    pub id: i64,
    /// The instance it waits for.
    pub instance: String,
    /// The message.
    pub envelope: Envelope,
    /// Why it is parked: the handler's error for the first, "waiting behind …" for the
    /// later ones, "unknown instance" under [`UnknownInstance::Park`](crate::UnknownInstance::Park).
    pub reason: String,
    /// When it was parked.
    pub parked_at: OffsetDateTime,
}

/// The rendered table names and statements.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) name: TableName,
    pub(crate) versions_create: String,
    pub(crate) version_applied: String,
    pub(crate) version_record: String,
    pub(crate) load: String,
    pub(crate) insert: String,
    pub(crate) update: String,
    pub(crate) set_status: String,
    pub(crate) park: String,
    pub(crate) parked_first: String,
    pub(crate) parked_list: String,
    pub(crate) parked_delete: String,
    pub(crate) list: String,
    pub(crate) list_status: String,
    pub(crate) stuck: String,
    pub(crate) count_status: String,
    pub(crate) purge: String,
    pub(crate) instances: String,
    pub(crate) parked: String,
    pub(crate) instances_table: String,
    pub(crate) parked_table: String,
    pub(crate) instances_status_idx: (String, String),
    pub(crate) parked_instance_idx: (String, String),
}

const COLUMNS: &str =
    "saga, instance, state, version, status, timeouts, created_at, updated_at, completed_at";

impl Statements {
    fn new(name: TableName) -> Self {
        let table = name.table().to_owned();
        let sibling = |suffix: &str| {
            let part = format!("{table}{suffix}");
            match name.schema() {
                Some(schema) => (format!(r#""{schema}"."{part}""#), format!(r#""{part}""#)),
                None => (format!(r#""{part}""#), format!(r#""{part}""#)),
            }
        };
        let instances = name.quoted();
        let (parked, parked_table) = sibling("_parked");
        let versions = match name.schema() {
            Some(schema) => format!(r#""{schema}"."ms_saga_schema""#),
            None => r#""ms_saga_schema""#.to_owned(),
        };
        Self {
            versions_create: format!(
                "CREATE TABLE IF NOT EXISTS {versions} (table_name TEXT NOT NULL, \
                 version BIGINT NOT NULL, applied_at BIGINT NOT NULL, \
                 PRIMARY KEY (table_name, version))"
            ),
            version_applied: format!(
                "SELECT version FROM {versions} WHERE table_name = $1 AND version = $2"
            ),
            version_record: format!(
                "INSERT INTO {versions} (table_name, version, applied_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING"
            ),
            load: format!("SELECT {COLUMNS} FROM {instances} WHERE saga = $1 AND instance = $2"),
            insert: format!(
                "INSERT INTO {instances} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (saga, instance) DO NOTHING"
            ),
            update: format!(
                "UPDATE {instances} SET state = $3, version = $4, status = $5, timeouts = $6, \
                 updated_at = $7, completed_at = $8 \
                 WHERE saga = $1 AND instance = $2 AND version = $9"
            ),
            set_status: format!(
                "UPDATE {instances} SET status = $3, updated_at = $4 \
                 WHERE saga = $1 AND instance = $2 AND status = $5"
            ),
            park: format!(
                "INSERT INTO {parked} (saga, instance, envelope, reason, parked_at) \
                 VALUES ($1, $2, $3, $4, $5)"
            ),
            parked_first: format!(
                "SELECT id, instance, envelope, reason, parked_at FROM {parked} \
                 WHERE saga = $1 AND instance = $2 ORDER BY id LIMIT 1"
            ),
            parked_list: format!(
                "SELECT id, instance, envelope, reason, parked_at FROM {parked} \
                 WHERE saga = $1 ORDER BY id LIMIT $2"
            ),
            parked_delete: format!("DELETE FROM {parked} WHERE id = $1"),
            list: format!(
                "SELECT {COLUMNS} FROM {instances} WHERE saga = $1 \
                 ORDER BY updated_at, instance LIMIT $2"
            ),
            list_status: format!(
                "SELECT {COLUMNS} FROM {instances} WHERE saga = $1 AND status = $3 \
                 ORDER BY updated_at, instance LIMIT $2"
            ),
            stuck: format!(
                "SELECT {COLUMNS} FROM {instances} WHERE saga = $1 AND status <> 'completed' \
                 AND updated_at < $3 ORDER BY updated_at, instance LIMIT $2"
            ),
            count_status: format!(
                "SELECT count(*) FROM {instances} WHERE saga = $1 AND status = $2"
            ),
            purge: format!(
                "DELETE FROM {instances} WHERE saga = $1 AND status = 'completed' \
                 AND completed_at < $2"
            ),
            instances_table: format!(r#""{table}""#),
            instances_status_idx: sibling("_status_idx"),
            parked_instance_idx: sibling("_parked_instance_idx"),
            instances,
            parked,
            parked_table,
            name,
        }
    }
}

/// The saga tables in one database. Cloning is cheap (the pool is shared).
pub struct SagaStore<DB: SagaBackend> {
    pool: Pool<DB>,
    statements: std::sync::Arc<Statements>,
}

impl<DB: SagaBackend> Clone for SagaStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            statements: self.statements.clone(),
        }
    }
}

impl<DB: SagaBackend> fmt::Debug for SagaStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaStore")
            .field("table", &self.statements.name.to_string())
            .finish_non_exhaustive()
    }
}

impl<DB: SagaBackend> SagaStore<DB> {
    /// The tables named after [`DEFAULT_TABLE`] in `pool`'s database.
    pub fn new(pool: Pool<DB>) -> Self {
        // DEFAULT_TABLE is a valid name; `new` cannot fail on it.
        let name = TableName::new(DEFAULT_TABLE).unwrap_or_else(|_| unreachable!());
        Self::with_table(pool, name)
    }

    /// The tables named after `table` (a schema-qualified name puts them in that schema).
    pub fn with_table(pool: Pool<DB>, table: TableName) -> Self {
        Self {
            pool,
            statements: std::sync::Arc::new(Statements::new(table)),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.statements
    }

    /// Creates or upgrades the tables (idempotent, safe from several processes at once: on
    /// PostgreSQL they take turns on an advisory lock, on SQLite on the write lock).
    pub async fn migrate(&self) -> Result<(), SagaError> {
        queries::migrate::<DB>(&self.pool, &self.statements, &self.migrations()).await?;
        Ok(())
    }

    /// The migrations [`migrate`](Self::migrate) applies, rendered for these tables.
    pub fn migrations(&self) -> Vec<Migration> {
        let s = &*self.statements;
        let sql = DB::MIGRATION_0001
            .replace("{instances}", &s.instances)
            .replace("{parked}", &s.parked)
            .replace("{instances_table}", &s.instances_table)
            .replace("{parked_table}", &s.parked_table)
            .replace(
                "{instances_status_idx}",
                DB::index_name(&s.instances_status_idx),
            )
            .replace(
                "{parked_instance_idx}",
                DB::index_name(&s.parked_instance_idx),
            );
        vec![Migration {
            version: 1,
            description: "saga instances and parked messages",
            sql,
        }]
    }

    /// One instance of saga `saga`, if it exists.
    pub async fn instance<S: DeserializeOwned>(
        &self,
        saga: &str,
        id: &str,
    ) -> Result<Option<Instance<S>>, SagaError> {
        let mut conn = self.pool.acquire().await?;
        let raw = queries::load::<DB>(&mut conn, &self.statements, saga, id).await?;
        raw.map(RawInstance::decode).transpose()
    }

    /// The instances of saga `saga`, least recently updated first, only those in `status`
    /// when given; at most `limit`.
    pub async fn instances<S: DeserializeOwned>(
        &self,
        saga: &str,
        status: Option<Status>,
        limit: i64,
    ) -> Result<Vec<Instance<S>>, SagaError> {
        let rows =
            queries::list::<DB>(&self.pool, &self.statements, saga, status, None, limit).await?;
        rows.into_iter().map(RawInstance::decode).collect()
    }

    /// The instances not completed whose last progress is older than `idle`: stuck ones
    /// (waiting for a reply that does not come, or parked), oldest first; at most `limit`.
    pub async fn stuck<S: DeserializeOwned>(
        &self,
        saga: &str,
        idle: Duration,
        limit: i64,
    ) -> Result<Vec<Instance<S>>, SagaError> {
        let before = now_ms().saturating_sub(millis(idle));
        let rows = queries::list::<DB>(
            &self.pool,
            &self.statements,
            saga,
            None,
            Some(before),
            limit,
        )
        .await?;
        rows.into_iter().map(RawInstance::decode).collect()
    }

    /// How many instances of `saga` are in `status`.
    pub async fn count(&self, saga: &str, status: Status) -> Result<u64, SagaError> {
        Ok(queries::count::<DB>(&self.pool, &self.statements, saga, status).await?)
    }

    /// The parked messages of saga `saga`, oldest first, at most `limit`.
    pub async fn parked(&self, saga: &str, limit: i64) -> Result<Vec<ParkedMessage>, SagaError> {
        Ok(queries::parked::<DB>(&self.pool, &self.statements, saga, limit).await?)
    }

    /// Removes the instances of `saga` completed more than `older_than` ago; returns how many.
    /// A message for a removed instance counts as one for an unknown instance (so keep them
    /// longer than the bus may redeliver, as for the inbox).
    pub async fn purge_completed(
        &self,
        saga: &str,
        older_than: Duration,
    ) -> Result<u64, SagaError> {
        let before = now_ms().saturating_sub(millis(older_than));
        Ok(queries::purge::<DB>(&self.pool, &self.statements, saga, before).await?)
    }
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn now_ms() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(nanos).unwrap_or(i64::MAX)
}

pub(crate) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
