-- ms-outbox 0002: scheduled messages (PostgreSQL), for plain and partitioned outboxes alike.
-- A scheduled message waits here, out of the outbox table, until it is due: the relay's claim
-- never reads it (its cost with a million future rows is that of an empty outbox), and a
-- partition of a partitioned outbox is never pinned by a row due next year. When it is due a
-- relay moves it into the outbox, where it draws its id: that is how it joins its key's order
-- at its due time. {scheduled} and the index names are substituted like 0001's.

CREATE TABLE IF NOT EXISTS {scheduled} (
    id            BIGSERIAL   PRIMARY KEY,
    -- The envelope's CloudEvents id, by which the caller cancels or moves it.
    message_id    TEXT        NOT NULL,
    -- Where it goes once due, computed at enqueue as for an immediate row.
    shard         SMALLINT    NOT NULL,
    partition_key TEXT        NOT NULL,
    -- The advisory lock that orders writers of its key (see the outbox's enqueue).
    key_lock      INTEGER     NOT NULL,
    kind          SMALLINT    NOT NULL,
    destination   TEXT        NOT NULL,
    -- The envelope as enqueued: trace context and correlation ID of the scheduling
    -- transaction, and the due time in its `deliverat` extension.
    envelope      TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    due_at        TIMESTAMPTZ NOT NULL
);

-- The relay's timer (the earliest due row) and its move of the due rows, in due order.
CREATE INDEX IF NOT EXISTS {scheduled_due_idx} ON {scheduled} (due_at, id);
-- Cancel and reschedule by id, cancel by key.
CREATE INDEX IF NOT EXISTS {scheduled_message_idx} ON {scheduled} (message_id);
CREATE INDEX IF NOT EXISTS {scheduled_key_idx} ON {scheduled} (partition_key);
