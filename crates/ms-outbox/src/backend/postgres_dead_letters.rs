//! PostgreSQL: dead letters, listed, replayed into the outbox, or discarded.

use sqlx::{AssertSqlSafe, PgPool, Row};

use super::DeadLetter;
use crate::schema::OutboxSchema;
use crate::{MessageKind, OutboxError};

/// The dead letters, oldest first, at most `limit`.
pub(super) async fn list(
    pool: &PgPool,
    schema: &OutboxSchema,
    limit: i64,
) -> Result<Vec<DeadLetter>, OutboxError> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, kind, destination, partition_key, envelope, created_at, attempts, \
             error, parked_at, blocks_key FROM {} ORDER BY id LIMIT $1",
        schema.dead_letters
    )))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let kind: i16 = row.try_get(1)?;
            Ok(DeadLetter {
                id: row.try_get(0)?,
                kind: MessageKind::from_code(kind).unwrap_or(MessageKind::Event),
                destination: row.try_get(2)?,
                partition_key: row.try_get(3)?,
                envelope: row.try_get(4)?,
                created_at: row.try_get(5)?,
                attempts: row.try_get(6)?,
                error: row.try_get(7)?,
                parked_at: row.try_get(8)?,
                blocks_key: row.try_get(9)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(OutboxError::from)
}

/// Moves dead letter `id` back into the outbox; returns its shard (`None`: no such row).
pub(super) async fn replay(
    pool: &PgPool,
    s: &OutboxSchema,
    id: i64,
) -> Result<Option<i16>, OutboxError> {
    let shard: Option<i16> = sqlx::query_scalar(AssertSqlSafe(format!(
        "WITH r AS (DELETE FROM {d} WHERE id = $1 RETURNING *) \
             INSERT INTO {t} (id, shard, partition_key, kind, destination, envelope, \
                 created_at) \
             SELECT id, shard, partition_key, kind, destination, envelope, created_at \
             FROM r RETURNING shard",
        d = s.dead_letters,
        t = s.outbox
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(shard)
}

/// Deletes dead letter `id`; returns its shard (`None`: no such row).
pub(super) async fn discard(
    pool: &PgPool,
    s: &OutboxSchema,
    id: i64,
) -> Result<Option<i16>, OutboxError> {
    let shard: Option<i16> = sqlx::query_scalar(AssertSqlSafe(format!(
        "DELETE FROM {} WHERE id = $1 RETURNING shard",
        s.dead_letters
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(shard)
}
