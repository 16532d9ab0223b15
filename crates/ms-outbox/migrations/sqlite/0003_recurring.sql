-- ms-outbox 0003: recurring schedules (SQLite). See the PostgreSQL version for what each
-- column means; {recurring_table} is the unqualified name.

CREATE TABLE IF NOT EXISTS {recurring} (
    name          TEXT    PRIMARY KEY,
    every_ms      INTEGER NOT NULL,
    cron          TEXT,
    time_zone     TEXT,
    missed        INTEGER NOT NULL,
    kind          INTEGER NOT NULL,
    destination   TEXT    NOT NULL,
    envelope      TEXT    NOT NULL,
    next_tick_ms  INTEGER NOT NULL,
    registered_at INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS {recurring_next_idx} ON {recurring_table} (next_tick_ms);
