-- ms-outbox 0001: the outbox and its dead letters (PostgreSQL).
-- {outbox}, {dead_letters} and the index names are substituted with validated, quoted
-- identifiers by `Outbox::migrate`; `Outbox::migrations` returns the rendered text for
-- projects that run their migrations with their own tool.

CREATE TABLE IF NOT EXISTS {outbox} (
    id              BIGSERIAL,
    -- hash(partition_key) mod shards: relays own shards, one at a time each.
    shard           SMALLINT    NOT NULL,
    partition_key   TEXT        NOT NULL,
    -- 0 = event (topic), 1 = command (destination).
    kind            SMALLINT    NOT NULL,
    destination     TEXT        NOT NULL,
    -- The CloudEvents 1.0 envelope in structured JSON, trace context and correlation ID included.
    envelope        TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Failed publish attempts, and those of them that count towards the dead letter.
    attempts        INTEGER     NOT NULL DEFAULT 0,
    strikes         INTEGER     NOT NULL DEFAULT 0,
    available_at    TIMESTAMPTZ,
    last_attempt_at TIMESTAMPTZ,
    last_error      TEXT,
    -- Set instead of deleting when published rows are kept for a retention period.
    published_at    TIMESTAMPTZ,
    -- Shard first: with a key on `id` alone, the planner walks it in id order and filters
    -- the shard, reading every shard's rows to find one shard's batch.
    PRIMARY KEY (shard, id)
);

-- The relay's claim: the oldest pending rows of a shard. Partial, so kept rows cost nothing.
CREATE INDEX IF NOT EXISTS {outbox_pending_idx}
    ON {outbox} (shard, id) WHERE published_at IS NULL;
-- Keys held back by a failing row (normally empty).
CREATE INDEX IF NOT EXISTS {outbox_failing_idx}
    ON {outbox} (shard, partition_key, id) WHERE attempts > 0 AND published_at IS NULL;
-- Retention cleanup of kept rows.
CREATE INDEX IF NOT EXISTS {outbox_published_idx}
    ON {outbox} (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS {dead_letters} (
    -- The outbox id the row had: replaying puts it back under the same id, so it is still
    -- ahead of the later rows of its key.
    id            BIGINT      PRIMARY KEY,
    shard         SMALLINT    NOT NULL,
    partition_key TEXT        NOT NULL,
    kind          SMALLINT    NOT NULL,
    destination   TEXT        NOT NULL,
    envelope      TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    attempts      INTEGER     NOT NULL,
    error         TEXT        NOT NULL,
    parked_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Whether later rows of the key wait for this one to be replayed or discarded.
    blocks_key    BOOLEAN     NOT NULL
);

CREATE INDEX IF NOT EXISTS {dead_letters_key_idx}
    ON {dead_letters} (shard, partition_key) WHERE blocks_key;
