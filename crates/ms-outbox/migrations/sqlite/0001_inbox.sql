-- ms-outbox inbox 0001: the envelopes each consumer has handled (SQLite).
-- Times are Unix milliseconds. See the PostgreSQL version for what each column means.
-- SQLite takes the schema on the index's name, never on the `ON` table: {inbox_table} is the
-- unqualified name.

CREATE TABLE IF NOT EXISTS {inbox} (
    consumer    TEXT    NOT NULL,
    envelope_id TEXT    NOT NULL,
    handled_at  INTEGER NOT NULL,
    PRIMARY KEY (consumer, envelope_id)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS {inbox_handled_idx} ON {inbox_table} (handled_at);
