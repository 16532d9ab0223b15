-- ms-outbox inbox 0001: the envelopes each consumer has handled (PostgreSQL).
-- {inbox} and the index name are substituted with validated, quoted identifiers by
-- `Inbox::migrate`; `Inbox::migrations` returns the rendered text for projects that run their
-- migrations with their own tool.

CREATE TABLE IF NOT EXISTS {inbox} (
    -- The consumer (group) that handled it: consumers of one topic deduplicate separately.
    consumer    TEXT        NOT NULL,
    -- The CloudEvents id of the envelope.
    envelope_id TEXT        NOT NULL,
    -- The start of the transaction that recorded it.
    handled_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, envelope_id)
);

-- Cleanup of old entries.
CREATE INDEX IF NOT EXISTS {inbox_handled_idx} ON {inbox} (handled_at);
