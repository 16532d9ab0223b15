//! A fresh PostgreSQL database per test.

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, Executor as _};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::service::{ServiceSpec, cleanup_blocking, is_stale};

pub(crate) const SPEC: ServiceSpec = ServiceSpec {
    display: "PostgreSQL",
    var: crate::POSTGRES_URL_VAR,
    default_url: "postgres://postgres@127.0.0.1:5432/postgres",
    default_port: 5432,
};

/// How many connections [`TestPostgres::pool`] opens at most.
pub const TEST_POOL_MAX_CONNECTIONS: u32 = 8;

/// A database of its own for one test, dropped (with `WITH (FORCE)`) when this handle drops.
///
/// A database rather than a schema, so that everything a test touches is private: tables,
/// sequences, advisory locks' meaning, and `LISTEN`/`NOTIFY` channels (which are per database).
#[derive(Debug)]
pub struct TestPostgres {
    admin_url: String,
    url: String,
    database: String,
}

/// Creates a fresh database for the calling test, or returns `None` after a loud skip line
/// when PostgreSQL is not reachable (see the crate docs for the search order).
///
/// # Panics
///
/// When a service URL is set but unusable, when `MS_TEST_REQUIRE_SERVICES=1` and PostgreSQL
/// cannot be found, or when the server refuses to create the database.
pub async fn postgres() -> Option<TestPostgres> {
    let admin_url = SPEC.find(|url| url, from_container).await?;
    Some(
        TestPostgres::create(admin_url)
            .await
            .unwrap_or_else(|e| panic!("creating a test database: {e}")),
    )
}

#[cfg(feature = "testcontainers")]
fn from_container() -> Option<String> {
    crate::containers::postgres_url()
}

#[cfg(not(feature = "testcontainers"))]
fn from_container() -> Option<String> {
    None
}

impl TestPostgres {
    async fn create(admin_url: String) -> Result<Self, String> {
        let database = crate::unique_name(DATABASE_PREFIX);
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .map_err(|e| format!("connecting to {admin_url}: {e}"))?;
        if !SWEPT.swap(true, Ordering::Relaxed) {
            drop_stale_databases(&mut admin).await;
        }
        // The name comes from `unique_name` (letters, digits, `_`), so quoting is enough.
        admin
            .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{database}""#)))
            .await
            .map_err(|e| format!("CREATE DATABASE {database}: {e}"))?;
        let _ = admin.close().await;
        let mut url = url::Url::parse(&admin_url).map_err(|e| e.to_string())?;
        url.set_path(&database);
        Ok(Self {
            admin_url,
            url: url.into(),
            database,
        })
    }

    /// The URL of this test's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name (`ms_test_…`).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// A new connection pool to this test's database.
    ///
    /// # Panics
    ///
    /// When the database cannot be reached: the test cannot go on.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(TEST_POOL_MAX_CONNECTIONS)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url))
    }
}

/// The prefix of every test database's name.
const DATABASE_PREFIX: &str = "ms_test";

/// Whether this process already removed the databases that killed test runs left behind.
static SWEPT: AtomicBool = AtomicBool::new(false);

/// Drops test databases older than [`STALE_AFTER`](crate::STALE_AFTER); failures are ignored
/// (another process may be sweeping the same ones).
async fn drop_stale_databases(admin: &mut PgConnection) {
    let names: Vec<String> = match sqlx::query_scalar(
        r"SELECT datname FROM pg_database WHERE datname LIKE 'ms\_test\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    {
        Ok(names) => names,
        Err(_) => return,
    };
    for name in names.iter().filter(|n| is_stale(n, DATABASE_PREFIX)) {
        // `is_stale` accepted only `ms_test_` plus 32 hex digits: safe to quote.
        let _ = admin
            .execute(AssertSqlSafe(format!(
                r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
            )))
            .await;
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let database = self.database.clone();
        cleanup_blocking(&format!("database {database}"), move || async move {
            let mut admin = PgConnection::connect(&admin_url)
                .await
                .map_err(|e| e.to_string())?;
            // FORCE ends the test's own pool connections that are still open.
            admin
                .execute(AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{database}" WITH (FORCE)"#
                )))
                .await
                .map_err(|e| e.to_string())?;
            let _ = admin.close().await;
            Ok(())
        });
    }
}
