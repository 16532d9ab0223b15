//! PostgreSQL: a claimed batch, and how its outcome is settled: one commit when everything was
//! published, otherwise back to the savepoint and row by row (published, failed, parked).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::AssertSqlSafe;
use sqlx::postgres::Postgres;

use super::{BatchOutcome, ClaimedBatch, StoredRow};
use crate::OutboxError;

/// A prepared statement's text, shared without copying (sqlx caches statements by text).
pub(super) type Sql = Arc<str>;

/// The relay's statements, rendered once per outbox.
pub(super) struct Statements {
    /// Claims, indexed by `[hold_keys][keep_published]`.
    pub(super) claim: [[Sql; 2]; 2],
    pub(super) delete: Sql,
    pub(super) mark: Sql,
    pub(super) fail: Sql,
    pub(super) park: Sql,
}

pub(super) struct PgBatch {
    pub(super) tx: sqlx::Transaction<'static, Postgres>,
    pub(super) shard: i16,
    pub(super) claimed: usize,
    pub(super) rows: Vec<StoredRow>,
    pub(super) statements: Arc<Statements>,
}

impl ClaimedBatch for PgBatch {
    fn take_rows(&mut self) -> Vec<StoredRow> {
        std::mem::take(&mut self.rows)
    }

    fn finish(
        self: Box<Self>,
        outcome: BatchOutcome,
    ) -> BoxFuture<'static, Result<(), OutboxError>> {
        Box::pin(async move {
            let PgBatch {
                mut tx,
                statements,
                shard,
                claimed,
                ..
            } = *self;
            let all_published = outcome.failed.is_empty()
                && outcome.parked.is_empty()
                && outcome.published.len() == claimed;
            if all_published {
                // The claim already removed (or marked) them.
                tx.commit().await?;
                return Ok(());
            }
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT ms_outbox_claim")
                .execute(&mut *tx)
                .await?;
            if !outcome.published.is_empty() {
                let statement = if outcome.keep_published {
                    &statements.mark
                } else {
                    &statements.delete
                };
                sqlx::query(AssertSqlSafe(Arc::clone(statement)))
                    .bind(&outcome.published)
                    .bind(shard)
                    .execute(&mut *tx)
                    .await?;
            }
            if !outcome.failed.is_empty() {
                let ids: Vec<i64> = outcome.failed.iter().map(|f| f.id).collect();
                let strikes: Vec<i32> =
                    outcome.failed.iter().map(|f| i32::from(f.strike)).collect();
                let errors: Vec<&str> = outcome.failed.iter().map(|f| f.error.as_str()).collect();
                let delays: Vec<i64> = outcome
                    .failed
                    .iter()
                    .map(|f| retry_in_millis(f.retry_in))
                    .collect();
                sqlx::query(AssertSqlSafe(Arc::clone(&statements.fail)))
                    .bind(&ids)
                    .bind(&strikes)
                    .bind(&errors)
                    .bind(&delays)
                    .bind(shard)
                    .bind(outcome.attempted_at)
                    .execute(&mut *tx)
                    .await?;
            }
            if !outcome.parked.is_empty() {
                let ids: Vec<i64> = outcome.parked.iter().map(|p| p.0).collect();
                let errors: Vec<&str> = outcome.parked.iter().map(|p| p.1.as_str()).collect();
                sqlx::query(AssertSqlSafe(Arc::clone(&statements.park)))
                    .bind(&ids)
                    .bind(&errors)
                    .bind(outcome.parked_blocks_key)
                    .bind(shard)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

/// The longest wait before a failed row's next attempt that PostgreSQL is asked to add to
/// `now()`: about a century (36,500 days), where any longer wait means "not in this system's life". `now()` plus
/// more than about 290,000 years is out of `timestamptz`'s range, and the error would roll back
/// the whole batch's outcome (its published rows would be published again).
const LONGEST_RETRY_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A retry delay (from configuration, and as long as it likes) as the milliseconds to bind.
fn retry_in_millis(retry_in: Duration) -> i64 {
    i64::try_from(retry_in.min(LONGEST_RETRY_DELAY).as_millis()).unwrap_or(i64::MAX)
}
