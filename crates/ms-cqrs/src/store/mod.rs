//! The databases projections run on, and every statement the runner and the event log send.
//!
//! [`Store`] is sealed: PostgreSQL and SQLite are implemented here, behind the `postgres` and
//! `sqlite` features. Both speak the same SQL for almost everything (timestamps are stored as
//! Unix microseconds in a `BIGINT`, envelopes as CloudEvents JSON text), so one macro writes
//! both implementations and only the DDL and the event log's sequencing differ.

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use time::OffsetDateTime;

/// A database projections and the event log can live in: [`sqlx::Postgres`] (feature
/// `postgres`) or [`sqlx::Sqlite`] (feature `sqlite`, the default).
pub trait Store: sqlx::Database + sealed::Sealed {}

impl<DB: sqlx::Database + sealed::Sealed> Store for DB {}

/// The tables of one runner store and one event log, quoted and ready to splice into SQL.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub(crate) projections: String,
    pub(crate) checkpoints: String,
    pub(crate) dead_letters: String,
    pub(crate) key_sequences: String,
    pub(crate) seen: String,
    /// The bare prefix, for index names.
    pub(crate) prefix: String,
}

impl Tables {
    pub(crate) fn new(prefix: &ms_outbox::TableName) -> Self {
        let derive = |suffix: &str| match prefix.schema() {
            Some(schema) => format!(r#""{schema}"."{}_{suffix}""#, prefix.table()),
            None => format!(r#""{}_{suffix}""#, prefix.table()),
        };
        Self {
            projections: derive("projections"),
            checkpoints: derive("checkpoints"),
            dead_letters: derive("dead_letters"),
            key_sequences: derive("key_sequences"),
            seen: derive("seen"),
            prefix: prefix.table().to_owned(),
        }
    }
}

/// One event as the event log stores it.
#[derive(Debug, Clone)]
pub(crate) struct LoggedEvent {
    pub(crate) position: i64,
    pub(crate) key: String,
    pub(crate) envelope: String,
    pub(crate) recorded_at: i64,
}

/// A row of the runner's registry: which version readers see, and how it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registration {
    pub(crate) live_version: i32,
    pub(crate) segments: i32,
}

/// A parked event, as stored.
#[derive(Debug, Clone)]
pub(crate) struct ParkedRow {
    pub(crate) id: i64,
    pub(crate) version: i32,
    pub(crate) key: String,
    pub(crate) position: Option<i64>,
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) envelope: String,
    pub(crate) error: String,
    pub(crate) blocked: bool,
    pub(crate) attempts: i32,
    pub(crate) parked_at: i64,
}

/// Microseconds since the Unix epoch, the stored form of every timestamp.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The stored form back as a date; out-of-range values become the epoch rather than a panic.
pub(crate) fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) mod sealed;

/// The runner's tables; `{serial}` is the database's auto-increment key type.
pub(crate) fn runner_ddl(tables: &Tables, serial: &str) -> String {
    let Tables {
        projections,
        checkpoints,
        dead_letters,
        key_sequences,
        seen,
        prefix,
    } = tables;
    format!(
        "CREATE TABLE IF NOT EXISTS {projections} (\
           name TEXT PRIMARY KEY, live_version INTEGER NOT NULL, segments INTEGER NOT NULL, \
           updated_at BIGINT NOT NULL);\n\
         CREATE TABLE IF NOT EXISTS {checkpoints} (\
           name TEXT NOT NULL, version INTEGER NOT NULL, segment INTEGER NOT NULL, \
           position BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
           PRIMARY KEY (name, version, segment));\n\
         CREATE TABLE IF NOT EXISTS {dead_letters} (\
           id {serial}, name TEXT NOT NULL, version INTEGER NOT NULL, \
           partition_key TEXT NOT NULL, position BIGINT, event_id TEXT NOT NULL, \
           event_type TEXT NOT NULL, envelope TEXT NOT NULL, error TEXT NOT NULL, \
           blocked INTEGER NOT NULL, attempts INTEGER NOT NULL, parked_at BIGINT NOT NULL);\n\
         CREATE INDEX IF NOT EXISTS \"{prefix}_dead_letters_key\" \
           ON {dead_letters} (name, version, partition_key, id);\n\
         CREATE TABLE IF NOT EXISTS {key_sequences} (\
           name TEXT NOT NULL, version INTEGER NOT NULL, partition_key TEXT NOT NULL, \
           sequence BIGINT NOT NULL, PRIMARY KEY (name, version, partition_key));\n\
         CREATE TABLE IF NOT EXISTS {seen} (\
           name TEXT NOT NULL, version INTEGER NOT NULL, event_id TEXT NOT NULL, \
           seen_at BIGINT NOT NULL, PRIMARY KEY (name, version, event_id));"
    )
}

#[macro_use]
mod common;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
