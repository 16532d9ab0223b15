-- ms-outbox 0001: the outbox and its dead letters (SQLite).
-- Times are Unix milliseconds. See the PostgreSQL version for what each column means.
-- SQLite takes the schema on the index's name, never on the `ON` table: {outbox_table} and
-- {dead_letters_table} are the unqualified names.

CREATE TABLE IF NOT EXISTS {outbox} (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    shard           INTEGER NOT NULL,
    partition_key   TEXT    NOT NULL,
    kind            INTEGER NOT NULL,
    destination     TEXT    NOT NULL,
    envelope        TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    strikes         INTEGER NOT NULL DEFAULT 0,
    available_at    INTEGER,
    last_attempt_at INTEGER,
    last_error      TEXT,
    published_at    INTEGER
);

CREATE INDEX IF NOT EXISTS {outbox_pending_idx}
    ON {outbox_table} (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS {outbox_failing_idx}
    ON {outbox_table} (partition_key, id) WHERE attempts > 0 AND published_at IS NULL;
CREATE INDEX IF NOT EXISTS {outbox_published_idx}
    ON {outbox_table} (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS {dead_letters} (
    id            INTEGER PRIMARY KEY,
    shard         INTEGER NOT NULL,
    partition_key TEXT    NOT NULL,
    kind          INTEGER NOT NULL,
    destination   TEXT    NOT NULL,
    envelope      TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    attempts      INTEGER NOT NULL,
    error         TEXT    NOT NULL,
    parked_at     INTEGER NOT NULL,
    blocks_key    INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS {dead_letters_key_idx}
    ON {dead_letters_table} (partition_key) WHERE blocks_key;
