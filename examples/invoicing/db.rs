//! Each service's own database: a SQLite file (the embedded default) or a PostgreSQL schema,
//! with the service's outbox and inbox tables in it.
//!
//! The services' SQL is written once and runs on both: [`with_db!`] expands a block once per
//! backend, so each expansion is checked against that backend's concrete types (sqlx's
//! generic bounds would otherwise have to be repeated on every function). The SQL itself keeps
//! to what both databases accept: `$n` placeholders, `BIGINT` and `TEXT` columns, `ON
//! CONFLICT`, no booleans.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use ms_health::check::Check;
use ms_health::checks::SqlxPoolCheck;
use ms_outbox::{Backend, Inbox, Outbox, TableName};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Pool, Postgres, Sqlite};

use crate::Error;

/// How long a SQLite writer waits for the database's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// One service's database handles: the pool, and the outbox and inbox tables in it.
#[derive(Debug)]
pub(crate) struct Parts<DB: Backend> {
    pub(crate) pool: Pool<DB>,
    pub(crate) outbox: Outbox<DB>,
    pub(crate) inbox: Inbox<DB>,
}

impl<DB: Backend> Clone for Parts<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            outbox: self.outbox.clone(),
            inbox: self.inbox.clone(),
        }
    }
}

/// A service's database, on either backend.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(Parts<Sqlite>),
    Postgres(Parts<Postgres>),
}

/// Runs `$body` with `$parts` bound to the database's [`Parts`], for whichever backend it is.
macro_rules! with_db {
    ($db:expr, |$parts:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($parts) => $body,
            $crate::db::Db::Postgres($parts) => $body,
        }
    };
}
pub(crate) use with_db;

impl Db {
    /// A SQLite database in `dir`, named after the service.
    ///
    /// One connection: SQLite has one writer at a time anyway, and a transaction that reads
    /// before it writes could otherwise be refused ("database is locked") rather than wait.
    pub(crate) async fn sqlite(dir: &Path, service: &str) -> Result<Self, Error> {
        let options = SqliteConnectOptions::new()
            .filename(dir.join(format!("{service}.db")))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Ok(Self::Sqlite(Parts {
            pool,
            outbox: Outbox::new(table(service, "outbox")?),
            inbox: Inbox::new(table(service, "inbox")?),
        }))
    }

    /// The schema `service` in the PostgreSQL database at `url`, created if missing: one
    /// schema per service (its pool's `search_path`), so no service reads another's tables.
    pub(crate) async fn postgres(url: &str, service: &str) -> Result<Self, Error> {
        let base = PgConnectOptions::from_str(url)?;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await?;
        // The schema name is one of ours (a service name), never user input.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {service}"
        )))
        .execute(&admin)
        .await?;
        admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(base.options([("search_path", service)]))
            .await?;
        Ok(Self::Postgres(Parts {
            pool,
            outbox: Outbox::new(table(service, "outbox")?),
            inbox: Inbox::new(table(service, "inbox")?),
        }))
    }

    /// Creates the outbox and inbox tables, then runs the service's own DDL statements.
    pub(crate) async fn migrate(&self, ddl: &[&'static str]) -> Result<(), Error> {
        with_db!(self, |parts| {
            parts.outbox.migrate(&parts.pool).await?;
            parts.inbox.migrate(&parts.pool).await?;
            for statement in ddl {
                sqlx::query(*statement).execute(&parts.pool).await?;
            }
            Ok(())
        })
    }

    /// Runs `statements` on PostgreSQL only (upgrades of a schema that outlives a run; the
    /// SQLite files are new each run).
    pub(crate) async fn upgrade_postgres(&self, statements: &[&'static str]) -> Result<(), Error> {
        if let Self::Postgres(parts) = self {
            for statement in statements {
                sqlx::query(*statement).execute(&parts.pool).await?;
            }
        }
        Ok(())
    }

    /// A readiness check that runs a query through the pool.
    pub(crate) fn check(&self) -> Box<dyn Check> {
        with_db!(self, |parts| Box::new(SqlxPoolCheck::new(
            parts.pool.clone()
        )))
    }

    /// Which backend, for the banner.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "SQLite",
            Self::Postgres(_) => "PostgreSQL",
        }
    }

    /// Closes the pool.
    pub(crate) async fn close(&self) {
        with_db!(self, |parts| parts.pool.close().await);
    }
}

fn table(service: &str, what: &str) -> Result<TableName, Error> {
    TableName::new(&format!("{service}_{what}")).map_err(|e| Error::Config(e.to_string()))
}
