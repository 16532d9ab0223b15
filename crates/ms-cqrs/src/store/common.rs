//! The statements PostgreSQL and SQLite share, written once as macros that each backend
//! expands for its own database type (sqlx's query types are per database).

/// The statements both databases share, written once for each concrete database type.
macro_rules! common_statements {
    ($db:ty) => {
        fn log_read<'a>(
            pool: &'a sqlx::Pool<$db>,
            log: &'a str,
            after: i64,
            until: i64,
            limit: i64,
        ) -> BoxFuture<'a, Result<Vec<LoggedEvent>, sqlx::Error>> {
            Box::pin(async move {
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT position, partition_key, envelope, recorded_at FROM {log} \
                     WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3"
                )))
                .bind(after)
                .bind(until)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(LoggedEvent {
                            position: row.try_get(0)?,
                            key: row.try_get(1)?,
                            envelope: row.try_get(2)?,
                            recorded_at: row.try_get(3)?,
                        })
                    })
                    .collect()
            })
        }

        fn log_head<'a>(
            pool: &'a sqlx::Pool<$db>,
            log: &'a str,
        ) -> BoxFuture<'a, Result<i64, sqlx::Error>> {
            Box::pin(async move {
                let head: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT MAX(position) FROM {log}"
                )))
                .fetch_one(pool)
                .await?;
                Ok(head.unwrap_or(0))
            })
        }

        fn execute_ddl(
            conn: &mut <$db as sqlx::Database>::Connection,
            sql: String,
        ) -> BoxFuture<'_, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await?;
                Ok(())
            })
        }

        fn registration<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Registration>, sqlx::Error>> {
            Box::pin(async move {
                let row: Option<(i32, i32)> = sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT live_version, segments FROM {} WHERE name = $1",
                    tables.projections
                )))
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.map(|(live_version, segments)| Registration {
                    live_version,
                    segments,
                }))
            })
        }

        fn register<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            registration: Registration,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {} (name, live_version, segments, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE \
                     SET live_version = excluded.live_version, segments = excluded.segments, \
                     updated_at = excluded.updated_at",
                    tables.projections
                )))
                .bind(name)
                .bind(registration.live_version)
                .bind(registration.segments)
                .bind(now_micros())
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        }

        fn checkpoints<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
        ) -> BoxFuture<'a, Result<Vec<(i32, i64)>, sqlx::Error>> {
            Box::pin(async move {
                sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT segment, position FROM {} WHERE name = $1 AND version = $2",
                    tables.checkpoints
                )))
                .bind(name)
                .bind(version)
                .fetch_all(&mut *conn)
                .await
            })
        }

        fn save_checkpoint<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            segment: i32,
            position: i64,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {} (name, version, segment, position, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, version, segment) \
                     DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                    tables.checkpoints
                )))
                .bind(name)
                .bind(version)
                .bind(segment)
                .bind(position)
                .bind(now_micros())
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        }

        fn forget_version<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                for table in [
                    &tables.checkpoints,
                    &tables.dead_letters,
                    &tables.key_sequences,
                    &tables.seen,
                ] {
                    sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM {table} WHERE name = $1 AND version = $2"
                    )))
                    .bind(name)
                    .bind(version)
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            })
        }

        fn park<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            row: &'a ParkedRow,
        ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {} (name, version, partition_key, position, event_id, \
                     event_type, envelope, error, blocked, attempts, parked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    tables.dead_letters
                )))
                .bind(name)
                .bind(row.version)
                .bind(&row.key)
                .bind(row.position)
                .bind(&row.event_id)
                .bind(&row.event_type)
                .bind(&row.envelope)
                .bind(&row.error)
                .bind(i32::from(row.blocked))
                .bind(row.attempts)
                .bind(row.parked_at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        }

        fn parked<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: Option<&'a str>,
            limit: i64,
        ) -> BoxFuture<'a, Result<Vec<ParkedRow>, sqlx::Error>> {
            Box::pin(async move {
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT id, version, partition_key, position, event_id, event_type, envelope, \
                     error, blocked, attempts, parked_at FROM {} \
                     WHERE name = $1 AND version = $2 AND ($3 IS NULL OR partition_key = $3) \
                     ORDER BY id LIMIT $4",
                    tables.dead_letters
                )))
                .bind(name)
                .bind(version)
                .bind(key)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(ParkedRow {
                            id: row.try_get(0)?,
                            version: row.try_get(1)?,
                            key: row.try_get(2)?,
                            position: row.try_get(3)?,
                            event_id: row.try_get(4)?,
                            event_type: row.try_get(5)?,
                            envelope: row.try_get(6)?,
                            error: row.try_get(7)?,
                            blocked: row.try_get::<i32, _>(8)? != 0,
                            attempts: row.try_get(9)?,
                            parked_at: row.try_get(10)?,
                        })
                    })
                    .collect()
            })
        }

        fn unpark<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
        ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
            Box::pin(async move {
                let done = sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {} WHERE name = $1 AND version = $2 AND partition_key = $3",
                    tables.dead_letters
                )))
                .bind(name)
                .bind(version)
                .bind(key)
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected())
            })
        }

        fn parked_keys<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
        ) -> BoxFuture<'a, Result<Vec<String>, sqlx::Error>> {
            Box::pin(async move {
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT DISTINCT partition_key FROM {} WHERE name = $1 AND version = $2",
                    tables.dead_letters
                )))
                .bind(name)
                .bind(version)
                .fetch_all(&mut *conn)
                .await
            })
        }

        fn key_sequence<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<i64>, sqlx::Error>> {
            Box::pin(async move {
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT sequence FROM {} WHERE name = $1 AND version = $2 AND partition_key = $3",
                    tables.key_sequences
                )))
                .bind(name)
                .bind(version)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
            })
        }

        fn advance_key_sequence<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
            sequence: i64,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
            Box::pin(async move {
                // The guard makes a concurrent runner instance that applied the same event
                // fail here instead of applying it twice: its upsert waits for ours, then
                // finds the sequence moved on.
                let done = sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {t} (name, version, partition_key, sequence) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (name, version, partition_key) DO UPDATE SET sequence = excluded.sequence \
                     WHERE {t}.sequence = excluded.sequence - 1",
                    t = tables.key_sequences
                )))
                .bind(name)
                .bind(version)
                .bind(key)
                .bind(sequence)
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected() == 1)
            })
        }

        fn record_seen<'a>(
            conn: &'a mut <$db as sqlx::Database>::Connection,
            tables: &'a Tables,
            name: &'a str,
            version: i32,
            key: &'a str,
            legacy_id: &'a str,
        ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
            Box::pin(async move {
                // `event_id` holds the dedup key; rows written before it was source + id hold
                // the bare id (`$5`), and still count, so an event applied then is not applied
                // again. The `WHERE` also keeps SQLite from reading `ON CONFLICT` as part of a
                // join.
                let done = sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {seen} (name, version, event_id, seen_at) SELECT $1, $2, $3, $4 \
                     WHERE NOT EXISTS (SELECT 1 FROM {seen} \
                       WHERE name = $1 AND version = $2 AND event_id = $5) \
                     ON CONFLICT (name, version, event_id) DO NOTHING",
                    seen = tables.seen
                )))
                .bind(name)
                .bind(version)
                .bind(key)
                .bind(now_micros())
                .bind(legacy_id)
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected() == 1)
            })
        }
    };
}

/// Inserts the event log rows `(key, type, envelope)` one statement each (the connection is
/// the caller's transaction) and collects the column `$returning` of each: the same code for
/// both databases, written once.
macro_rules! insert_log_rows {
    ($conn:expr, $log:expr, $rows:expr, $returning:literal) => {{
        let insert = format!(
            "INSERT INTO {} (partition_key, event_type, envelope, recorded_at) \
             VALUES ($1, $2, $3, $4) RETURNING {}",
            $log, $returning
        );
        let now = now_micros();
        let mut ids = Vec::with_capacity($rows.len());
        for (key, ty, envelope) in $rows {
            let id: i64 = sqlx::query_scalar(AssertSqlSafe(insert.clone()))
                .bind(key)
                .bind(ty)
                .bind(envelope)
                .bind(now)
                .fetch_one(&mut *$conn)
                .await?;
            ids.push(id);
        }
        Ok(ids)
    }};
}
