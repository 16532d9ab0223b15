//! sqlx pool checks: a query through the pool, timed.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ms_health::{checks::SqlitePoolCheck, Check, Status};
//!
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let result = SqlitePoolCheck::new(pool).check().await;
//! assert_eq!(result.status(), Status::Pass);
//! assert_eq!(result.observed_unit(), Some("ms"));
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

use std::fmt;
use std::time::Instant;

use ::sqlx::{Database, Executor, Pool};

use super::{DATASTORE, RESPONSE_TIME, millis_since};
use crate::check::{BoxFuture, Check, CheckResult};

/// The query a [`SqlxPoolCheck`] runs unless told otherwise; valid in every database sqlx
/// supports.
pub const SQLX_DEFAULT_QUERY: &str = "SELECT 1";

/// Runs a query ([`SQLX_DEFAULT_QUERY`] by default) through an sqlx pool, so the check covers
/// what the service's own queries need: a pool with a free (or openable) connection and a
/// server that answers. Passes with the response time in milliseconds as observed value
/// (acquiring the connection included); fails with sqlx's error text.
///
/// sqlx retries a refused connection until the pool's `acquire_timeout` (30 s by default) and
/// then reports only "pool timed out"; with the default, longer than any sensible check timeout,
/// an unreachable server or an exhausted pool shows up as the registry's timeout failure. Errors
/// the server returns (authentication, a missing database, a failing query) come back at once,
/// with sqlx's text.
pub struct SqlxPoolCheck<DB: Database> {
    pool: Pool<DB>,
    query: &'static str,
}

/// A [`SqlxPoolCheck`] for PostgreSQL.
#[cfg(feature = "postgres")]
pub type PgPoolCheck = SqlxPoolCheck<::sqlx::Postgres>;

/// A [`SqlxPoolCheck`] for SQLite.
#[cfg(feature = "sqlite")]
pub type SqlitePoolCheck = SqlxPoolCheck<::sqlx::Sqlite>;

impl<DB: Database> SqlxPoolCheck<DB> {
    /// A check running [`SQLX_DEFAULT_QUERY`] through `pool` (a clone shares the pool).
    pub fn new(pool: Pool<DB>) -> Self {
        Self {
            pool,
            query: SQLX_DEFAULT_QUERY,
        }
    }

    /// Runs `query` instead, e.g. one that touches a table the service cannot work without.
    #[must_use]
    pub fn with_query(mut self, query: &'static str) -> Self {
        self.query = query;
        self
    }
}

impl<DB: Database> fmt::Debug for SqlxPoolCheck<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxPoolCheck")
            .field("database", &DB::NAME)
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl<DB> Check for SqlxPoolCheck<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        Box::pin(async move {
            if self.pool.is_closed() {
                return CheckResult::fail(format!("{} pool is closed", DB::NAME));
            }
            let started = Instant::now();
            match self.pool.execute(self.query).await {
                Ok(_) => CheckResult::pass().with_observed_value(millis_since(started), "ms"),
                Err(e) => CheckResult::fail(e.to_string()),
            }
        })
    }

    fn component_type(&self) -> Option<&str> {
        Some(DATASTORE)
    }

    fn measurement(&self) -> Option<&str> {
        Some(RESPONSE_TIME)
    }
}
