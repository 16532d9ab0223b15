//! Helpers the criterion benches share (the benches themselves live in `benches/`): a
//! PostgreSQL database of a bench's own, clean-up that also runs while a panic unwinds, which
//! self-reporting runs a command line selects, and the arithmetic of paired rounds.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, Executor as _};

/// A database of the bench's own on the server `MS_TEST_POSTGRES_URL` names (the local
/// default otherwise), dropped at the end of the run.
#[derive(Debug)]
pub struct BenchDb {
    /// The server, with its admin database.
    pub admin: PgConnectOptions,
    /// The server's URL as given (its database is the admin one).
    pub url: String,
    /// The bench database's name.
    pub name: String,
    /// A pool of 8 connections on the bench database.
    pub pool: PgPool,
}

impl BenchDb {
    /// Creates `ms_bench_{bench}_{pid}`, or says it skips `what` and returns `None` when no
    /// server answers within 3 s.
    ///
    /// # Panics
    ///
    /// When the URL is malformed or the server refuses to create the database: the bench
    /// cannot go on.
    pub fn create(rt: &tokio::runtime::Runtime, bench: &str, what: &str) -> Option<Self> {
        let url = std::env::var("MS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin = PgConnectOptions::from_str(&url).expect("a PostgreSQL URL");
        let name = format!("ms_bench_{bench}_{}", std::process::id());
        let connected = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(3), PgConnection::connect_with(&admin)).await
        });
        let Ok(Ok(mut conn)) = connected else {
            eprintln!("SKIPPED {what}: no PostgreSQL at {url}");
            return None;
        };
        let options = admin.clone().database(&name);
        let pool = rt.block_on(async {
            conn.execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
                .await
                .expect("CREATE DATABASE");
            conn.close().await.expect("close");
            PgPoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .expect("connect to the bench database")
        });
        Some(Self {
            admin,
            url,
            name,
            pool,
        })
    }

    /// Another pool on the bench database.
    ///
    /// # Panics
    ///
    /// When the database cannot be reached.
    pub async fn pool(&self, connections: u32) -> PgPool {
        self.pool_with(connections, self.admin.clone().database(&self.name))
            .await
    }

    /// A pool of `connections` with `options`.
    ///
    /// # Panics
    ///
    /// When the database cannot be reached.
    pub async fn pool_with(&self, connections: u32, options: PgConnectOptions) -> PgPool {
        PgPoolOptions::new()
            .max_connections(connections)
            .connect_with(options)
            .await
            .expect("connect to the bench database")
    }

    /// A pool whose sessions commit without waiting for the WAL flush
    /// (`synchronous_commit = off`).
    ///
    /// # Panics
    ///
    /// When the database cannot be reached.
    pub async fn async_commit_pool(&self, connections: u32) -> PgPool {
        let options = self
            .admin
            .clone()
            .database(&self.name)
            .options([("synchronous_commit", "off")]);
        self.pool_with(connections, options).await
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        cleanup(&format!("database {name}"), move || async move {
            if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                let _ = conn
                    .execute(AssertSqlSafe(format!(
                        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                    )))
                    .await;
            }
        });
    }
}

/// Cleans up after a bench, also when it panicked: a runtime of its own, at most 10 s, errors
/// ignored (said on stderr).
pub fn cleanup<F: std::future::Future<Output = ()>>(what: &str, work: impl FnOnce() -> F) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("bench: could not clean up {what}");
        return;
    };
    let done = rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), work()).await });
    if done.is_err() {
        eprintln!("bench: cleaning up {what} timed out");
    }
}

/// Whether a run that is not a criterion bench (it prints its figures) is selected: with no
/// filter on the command line, or a filter one of whose `|`-separated parts `name` contains
/// (criterion's filters are regular expressions; alternatives and plain words are what this
/// understands).
pub fn selected(name: &str) -> bool {
    // Criterion's options that take a value: that value is not a filter.
    const WITH_VALUE: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--profile-time",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--format",
    ];
    let mut args = std::env::args().skip(1);
    let mut filters = Vec::new();
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f.split('|').any(|part| name.contains(part)))
}

/// The median (the upper one of an even count).
///
/// # Panics
///
/// On an empty list: a bench always has rounds.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Events per second.
pub fn rate(events: u64, took: Duration) -> f64 {
    // Event counts here are far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let events = events as f64;
    events / took.as_secs_f64()
}
