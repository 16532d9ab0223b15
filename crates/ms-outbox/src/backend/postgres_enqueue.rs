//! PostgreSQL: writing rows in the caller's transaction, under the keys' advisory locks so
//! that each key's rows get ids in commit order, and notifying the relays at commit.

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

use super::PreparedRow;
use super::postgres_schedule as schedule;
use crate::OutboxError;
use crate::key::lock_id;
use crate::outbox_config::OutboxInner;

pub(super) async fn enqueue(
    conn: &mut PgConnection,
    outbox: &OutboxInner,
    rows: &[PreparedRow],
) -> Result<(), OutboxError> {
    // Scheduled rows wait in their own table and take no key lock now: they draw their id,
    // under the key's lock, when a relay moves them into the outbox.
    if rows.iter().all(|r| r.due_at.is_none()) {
        return enqueue_now(conn, outbox, rows).await;
    }
    let (later, now): (Vec<&PreparedRow>, Vec<&PreparedRow>) =
        rows.iter().partition(|r| r.due_at.is_some());
    if !now.is_empty() {
        let now: Vec<PreparedRow> = now.into_iter().cloned().collect();
        enqueue_now(conn, outbox, &now).await?;
    }
    schedule::enqueue(conn, outbox, &later).await
}

async fn enqueue_now(
    conn: &mut PgConnection,
    outbox: &OutboxInner,
    rows: &[PreparedRow],
) -> Result<(), OutboxError> {
    let schema = &outbox.schema;
    if outbox.key_order || outbox.notify {
        // Key locks first, in a fixed (sorted) order so that one call never deadlocks with
        // another; ids are drawn after, while the locks are held until commit, so the rows of
        // one key get ids in commit order. The notification goes out at commit.
        let mut keys: Vec<i32> = if outbox.key_order {
            rows.iter()
                .map(|r| lock_id(r.key_hash % outbox.key_lock_slots))
                .collect()
        } else {
            Vec::new()
        };
        keys.sort_unstable();
        keys.dedup();
        let mut shards: Vec<i16> = if outbox.notify {
            rows.iter().map(|r| r.shard).collect()
        } else {
            Vec::new()
        };
        shards.sort_unstable();
        shards.dedup();
        sqlx::query(
            // `count(*)` over a subquery still evaluates its volatile target lists.
            "SELECT (SELECT count(*) FROM (SELECT pg_advisory_xact_lock($1, k) \
                                           FROM unnest($2::int4[]) AS k) AS locks), \
                    (SELECT count(*) FROM (SELECT pg_notify($3, s::text) \
                                           FROM unnest($4::int2[]) AS s) AS notes)",
        )
        .bind(schema.key_lock_space)
        .bind(&keys)
        .bind(&schema.channel)
        .bind(&shards)
        .execute(&mut *conn)
        .await?;
    }
    if let [row] = rows {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (shard, partition_key, kind, destination, envelope) \
             VALUES ($1, $2, $3, $4, $5)",
            schema.outbox
        )))
        .bind(row.shard)
        .bind(&row.key)
        .bind(row.kind)
        .bind(&row.destination)
        .bind(&row.envelope)
        .execute(&mut *conn)
        .await?;
    } else {
        let mut shard = Vec::with_capacity(rows.len());
        let mut key = Vec::with_capacity(rows.len());
        let mut kind = Vec::with_capacity(rows.len());
        let mut destination = Vec::with_capacity(rows.len());
        let mut envelope = Vec::with_capacity(rows.len());
        for row in rows {
            shard.push(row.shard);
            key.push(row.key.as_str());
            kind.push(row.kind);
            destination.push(row.destination.as_str());
            envelope.push(row.envelope.as_str());
        }
        // `unnest` yields the rows in array order and ids are drawn row by row, so the
        // caller's order is the id order.
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (shard, partition_key, kind, destination, envelope) \
             SELECT * FROM unnest($1::int2[], $2::text[], $3::int2[], $4::text[], $5::text[])",
            schema.outbox
        )))
        .bind(&shard)
        .bind(&key)
        .bind(&kind)
        .bind(&destination)
        .bind(&envelope)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
