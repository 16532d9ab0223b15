//! PostgreSQL: the inbox's statements (record a handled message once, clean up old records).

use std::sync::Arc;
use std::time::Duration;

use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnection, PgPool};

use super::InboxStatements;
use crate::OutboxError;

pub(super) fn statements(inbox: &str) -> InboxStatements {
    InboxStatements {
        // Without a conflict target: the primary key is the only unique constraint. A
        // concurrent transaction's uncommitted row with the same key makes this wait for
        // that transaction, then do nothing (it committed) or insert (it rolled back).
        // `$3`, the bare id, finds rows recorded before keys were source + id: an
        // envelope handled then is not handled again (see `Inbox`'s docs).
        record: Arc::from(format!(
            "INSERT INTO {inbox} (consumer, envelope_id) SELECT $1, $2 \
                 WHERE NOT EXISTS (SELECT 1 FROM {inbox} WHERE consumer = $1 AND envelope_id = $3) \
                 ON CONFLICT DO NOTHING"
        )),
        cleanup: Arc::from(format!(
            "DELETE FROM {inbox} WHERE (consumer, envelope_id) IN ( \
                     SELECT consumer, envelope_id FROM {inbox} \
                     WHERE handled_at < now() - $1 * interval '1 millisecond' LIMIT $2)"
        )),
    }
}

pub(super) async fn record(
    conn: &mut PgConnection,
    statements: &InboxStatements,
    consumer: &str,
    key: &str,
    legacy_id: &str,
) -> Result<bool, OutboxError> {
    let done = sqlx::query(AssertSqlSafe(Arc::clone(&statements.record)))
        .bind(consumer)
        .bind(key)
        .bind(legacy_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn cleanup(
    pool: &PgPool,
    statements: &InboxStatements,
    older_than: Duration,
    limit: i64,
) -> Result<u64, OutboxError> {
    let done = sqlx::query(AssertSqlSafe(Arc::clone(&statements.cleanup)))
        .bind(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX))
        .bind(limit)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
