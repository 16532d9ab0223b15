-- ms-outbox 0003: recurring schedules (PostgreSQL), for plain and partitioned outboxes alike.
-- One row per named schedule; a relay turns each due tick into a scheduled message (in
-- {scheduled}) in the transaction that advances `next_tick_ms`, under the row's lock, which
-- other relays skip: a tick is enqueued once. Ticks are Unix milliseconds, multiples of
-- `every_ms` or the cron expression's occurrences. {recurring} and the index name are
-- substituted like 0001's.

CREATE TABLE IF NOT EXISTS {recurring} (
    name          TEXT        PRIMARY KEY,
    -- A fixed interval, or (0) a cron expression with seconds, in an IANA time zone.
    every_ms      BIGINT      NOT NULL,
    cron          TEXT,
    time_zone     TEXT,
    -- 0 = fire the latest missed tick once, 1 = fire every missed tick, 2 = skip them.
    missed        SMALLINT    NOT NULL,
    kind          SMALLINT    NOT NULL,
    destination   TEXT        NOT NULL,
    -- The template: each tick's envelope is this one with the tick's id and time.
    envelope      TEXT        NOT NULL,
    next_tick_ms  BIGINT      NOT NULL,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The relay's timer: the earliest next tick.
CREATE INDEX IF NOT EXISTS {recurring_next_idx} ON {recurring} (next_tick_ms);
