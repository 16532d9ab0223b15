-- ms-saga 0001: saga instances and the messages parked behind them (PostgreSQL).
-- Times are Unix milliseconds (the same on both databases, so inspection reads one shape).
--
-- {instances}: one row per saga instance.
--   saga, instance  the saga's NAME and the instance's correlation id
--   state           the state, serde JSON
--   version         1 after the first message, +1 per handled message: the optimistic lock
--   status          'active', 'parked' (a message failed; later ones wait in {parked}) or
--                   'completed' (kept until purged)
--   timeouts        the pending timeouts, JSON object name -> scheduled envelope id
--   created_at, updated_at, completed_at
CREATE TABLE IF NOT EXISTS {instances} (
    saga         TEXT    NOT NULL,
    instance     TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    status       TEXT    NOT NULL,
    timeouts     TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL,
    completed_at BIGINT,
    PRIMARY KEY (saga, instance)
);

CREATE INDEX IF NOT EXISTS {instances_status_idx} ON {instances} (saga, status, updated_at);

-- {parked}: messages not handled, in arrival order per instance (id): the one that failed,
-- those that came after it, and those for an unknown instance under `UnknownInstance::Park`.
CREATE TABLE IF NOT EXISTS {parked} (
    id        BIGSERIAL PRIMARY KEY,
    saga      TEXT   NOT NULL,
    instance  TEXT   NOT NULL,
    envelope  TEXT   NOT NULL,
    reason    TEXT   NOT NULL,
    parked_at BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS {parked_instance_idx} ON {parked} (saga, instance, id);
