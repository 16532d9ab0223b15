-- ms-outbox 0002: scheduled messages (SQLite). Times are Unix milliseconds. See the
-- PostgreSQL version for why they wait in a table of their own; {scheduled_table} is the
-- unqualified name (SQLite takes the schema on the index's name).

CREATE TABLE IF NOT EXISTS {scheduled} (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT    NOT NULL,
    shard         INTEGER NOT NULL,
    partition_key TEXT    NOT NULL,
    key_lock      INTEGER NOT NULL,
    kind          INTEGER NOT NULL,
    destination   TEXT    NOT NULL,
    envelope      TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    due_at        INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS {scheduled_due_idx} ON {scheduled_table} (due_at, id);
CREATE INDEX IF NOT EXISTS {scheduled_message_idx} ON {scheduled_table} (message_id);
CREATE INDEX IF NOT EXISTS {scheduled_key_idx} ON {scheduled_table} (partition_key);
