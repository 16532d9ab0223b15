//! Table names, the migration files and the code that applies them.
//!
//! The migrations are plain `.sql` files in the crate's `migrations/` folder, one folder per
//! database, with `{placeholders}` for the configurable names. They are not run by
//! `sqlx::migrate!` because sqlx keeps one `_sqlx_migrations` history per database, shared with
//! the application's own migrations, and has no way to substitute a table name; ms-outbox
//! records its versions per table in `ms_outbox_schema` instead, next to the table.

use crate::TableName;
use crate::key::key_hash;

/// The longest identifier the databases keep whole (PostgreSQL's `NAMEDATALEN - 1`).
const MAX_IDENT: usize = crate::MAX_IDENTIFIER_LEN;

/// One versioned migration step, rendered for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The version it brings the table to (1, 2, …).
    pub version: i64,
    /// What it does.
    pub description: &'static str,
    /// The SQL, with the table names substituted.
    pub sql: String,
}

/// `base` + `suffix` as one identifier part, shortened with a hash of `base` when too long
/// (PostgreSQL would otherwise truncate it silently, and two long names could collide).
pub(crate) fn derived_name(base: &str, suffix: &str) -> String {
    if base.len() + suffix.len() <= MAX_IDENT {
        return format!("{base}{suffix}");
    }
    let keep = MAX_IDENT - suffix.len() - 9;
    // `base` is ASCII (TableName guarantees it), so any byte index is a char boundary.
    format!("{}_{:08x}{suffix}", &base[..keep], key_hash(base))
}

/// The rendered names of one outbox's tables and the lock spaces that go with them.
#[derive(Debug, Clone)]
pub(crate) struct OutboxSchema {
    pub(crate) name: TableName,
    /// Quoted, qualified outbox table.
    pub(crate) outbox: String,
    /// Quoted, qualified dead-letter table.
    pub(crate) dead_letters: String,
    /// Quoted, qualified default partition (partitioned outboxes, PostgreSQL).
    pub(crate) default_partition: String,
    /// Quoted, qualified table of scheduled messages, not yet due.
    pub(crate) scheduled: String,
    /// Quoted, qualified table of recurring schedules.
    pub(crate) recurring: String,
    pub(crate) dead_letters_name: TableName,
    pub(crate) scheduled_name: TableName,
    pub(crate) recurring_name: TableName,
    /// The LISTEN/NOTIFY channel (PostgreSQL).
    pub(crate) channel: String,
    /// First key of the two-key advisory locks that order writers per partition key.
    pub(crate) key_lock_space: i32,
    /// First key of the two-key advisory locks that give a relay a shard.
    pub(crate) shard_lock_space: i32,
}

impl OutboxSchema {
    pub(crate) fn new(name: TableName) -> Self {
        let table = name.table().to_owned();
        let dead_letters_name = qualified(&name, &derived_name(&table, "_dead_letters"));
        let scheduled_name = qualified(&name, &derived_name(&table, "_scheduled"));
        let recurring_name = qualified(&name, &derived_name(&table, "_recurring"));
        let full = name.to_string();
        Self {
            outbox: name.quoted(),
            dead_letters: dead_letters_name.quoted(),
            scheduled: scheduled_name.quoted(),
            scheduled_name,
            recurring: recurring_name.quoted(),
            recurring_name,
            default_partition: qualified(&name, &derived_name(&table, "_default")).quoted(),
            dead_letters_name,
            channel: derived_name(&full.replace('.', "_"), "_wakeup"),
            key_lock_space: key_hash(&format!("ms_outbox:key:{full}")).cast_signed(),
            shard_lock_space: key_hash(&format!("ms_outbox:shard:{full}")).cast_signed(),
            name,
        }
    }

    /// The partition of this outbox whose name ends with `suffix`, in the outbox's schema.
    pub(crate) fn partition(&self, suffix: &str) -> TableName {
        qualified(&self.name, &derived_name(self.name.table(), suffix))
    }

    /// Substitutes the placeholders of a migration file.
    pub(crate) fn render(&self, sql: &str, qualify_indexes: bool) -> String {
        let table = self.name.table();
        let dead = self.dead_letters_name.table();
        let scheduled = self.scheduled_name.table();
        let recurring = self.recurring_name.table();
        let index = |base: &str, suffix: &str| {
            let name = derived_name(base, suffix);
            match (qualify_indexes, self.name.schema()) {
                (true, Some(schema)) => format!(r#""{schema}"."{name}""#),
                _ => format!(r#""{name}""#),
            }
        };
        sql.replace("{outbox_pending_idx}", &index(table, "_pending_idx"))
            .replace("{outbox_failing_idx}", &index(table, "_failing_idx"))
            .replace("{outbox_published_idx}", &index(table, "_published_idx"))
            .replace("{dead_letters_key_idx}", &index(dead, "_key_idx"))
            .replace("{scheduled_due_idx}", &index(scheduled, "_due_idx"))
            .replace("{scheduled_message_idx}", &index(scheduled, "_message_idx"))
            .replace("{scheduled_key_idx}", &index(scheduled, "_key_idx"))
            .replace("{scheduled_table}", &format!(r#""{scheduled}""#))
            .replace("{scheduled}", &self.scheduled)
            .replace("{recurring_next_idx}", &index(recurring, "_next_idx"))
            .replace("{recurring_table}", &format!(r#""{recurring}""#))
            .replace("{recurring}", &self.recurring)
            .replace("{outbox_default}", &self.default_partition)
            .replace("{outbox_table}", &format!(r#""{table}""#))
            .replace("{dead_letters_table}", &format!(r#""{dead}""#))
            .replace("{outbox}", &self.outbox)
            .replace("{dead_letters}", &self.dead_letters)
    }
}

/// `table` in the same schema as `like`.
pub(crate) fn qualified(like: &TableName, table: &str) -> TableName {
    let name = match like.schema() {
        Some(schema) => format!("{schema}.{table}"),
        None => table.to_owned(),
    };
    // Both parts were valid identifiers and `derived_name` keeps the length and alphabet.
    TableName::new(&name).unwrap_or_else(|_| like.clone())
}

/// The quoted `ms_outbox_schema` table in `like`'s schema.
pub(crate) fn versions_table(like: &TableName) -> String {
    qualified(like, "ms_outbox_schema").quoted()
}

/// What a migrator must do to `object`, recorded at version `current` (`None`: never
/// migrated): the latest version `migrations` know, and the ones above `current`, in order.
/// A database ahead of this crate is an error, whatever the database.
pub(crate) fn pending_migrations<'m>(
    object: &str,
    current: Option<i64>,
    migrations: &'m [Migration],
) -> Result<(i64, impl Iterator<Item = &'m Migration>), crate::OutboxError> {
    let current = current.unwrap_or(0);
    let known = migrations.last().map_or(0, |m| m.version);
    if current > known {
        return Err(crate::OutboxError::SchemaTooNew {
            table: object.to_owned(),
            found: current,
            known,
        });
    }
    Ok((
        known,
        migrations.iter().filter(move |m| m.version > current),
    ))
}

/// The outbox migrations of database `DB`, rendered for `schema`: the partitioned variant
/// when `partitioned` (PostgreSQL).
pub(crate) fn outbox_migrations<DB: crate::Backend>(
    schema: &OutboxSchema,
    partitioned: bool,
) -> Vec<Migration> {
    let files = if partitioned {
        DB::PARTITIONED_MIGRATIONS
    } else {
        DB::MIGRATIONS
    };
    files
        .iter()
        .map(|&(version, description, sql)| Migration {
            version,
            description,
            sql: schema.render(sql, DB::QUALIFIED_INDEXES),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_deterministically_and_stay_distinct() {
        let a = "a".repeat(60);
        let b = format!("{}b", "a".repeat(59));
        let (da, db) = (
            derived_name(&a, "_pending_idx"),
            derived_name(&b, "_pending_idx"),
        );
        assert!(da.len() <= MAX_IDENT && db.len() <= MAX_IDENT);
        assert_ne!(da, db);
        assert_eq!(da, derived_name(&a, "_pending_idx"));
        assert_eq!(derived_name("outbox", "_wakeup"), "outbox_wakeup");
    }

    #[test]
    fn placeholders_are_all_substituted() {
        let schema = OutboxSchema::new(TableName::new("billing.outbox").unwrap());
        for qualify in [false, true] {
            let sql = schema.render(
                include_str!("../migrations/postgres/0001_outbox.sql"),
                qualify,
            );
            assert!(!sql.contains('{'), "{sql}");
            assert!(sql.contains(r#""billing"."outbox_dead_letters""#));
            let sql = schema.render(
                include_str!("../migrations/postgres/0001_outbox_partitioned.sql"),
                qualify,
            );
            assert!(!sql.contains('{'), "{sql}");
            assert!(sql.contains(r#""billing"."outbox_default" PARTITION OF"#));
        }
        let sql = schema.render(include_str!("../migrations/sqlite/0001_outbox.sql"), true);
        assert!(!sql.contains('{'), "{sql}");
        for file in [
            include_str!("../migrations/postgres/0002_scheduled.sql"),
            include_str!("../migrations/sqlite/0002_scheduled.sql"),
            include_str!("../migrations/postgres/0003_recurring.sql"),
            include_str!("../migrations/sqlite/0003_recurring.sql"),
        ] {
            let sql = schema.render(file, true);
            assert!(!sql.contains('{'), "{sql}");
            assert!(
                sql.contains(r#""billing"."outbox_scheduled""#)
                    || sql.contains(r#""billing"."outbox_recurring""#),
                "{sql}"
            );
        }
        assert!(sql.contains(r#"ON "outbox_dead_letters" ("#), "{sql}");
        assert_eq!(schema.channel, "billing_outbox_wakeup");
        assert_ne!(schema.key_lock_space, schema.shard_lock_space);
    }
}
