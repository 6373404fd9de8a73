-- The outbox: one row per emitted event, written in the emitting transaction.
-- Only the extension's SECURITY DEFINER functions write it, and txevents.emit checks
-- every argument (non-empty type, object payload and headers) before the INSERT; the
-- table carries no CHECK constraints because Postgres re-reads and re-plans them for
-- every single-row INSERT, which cost a fifth of emit's time.
CREATE TABLE txevents.outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type     text        NOT NULL,
    aggregate_type text,
    aggregate_id   text,
    payload        jsonb       NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}',
    occurred_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The emitting transaction: lets consumers order and fence by commit
    -- visibility rather than by id, which commits do not follow.
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id()
);
REVOKE ALL ON txevents.outbox FROM PUBLIC;
COMMENT ON TABLE txevents.outbox IS 'Events emitted by txevents.emit, one row per event; written in the emitting transaction.';
-- Consumers read the outbox by (txid, id) ranges.
CREATE INDEX outbox_txid_id ON txevents.outbox (txid, id);

-- Consumer groups. Every event whose transaction is visible in done_snapshot has been
-- written to the group's claim rows; range_snapshot is the newer snapshot being worked
-- through, up to (range_txid, range_id). ordered: one lane per aggregate id, handing
-- out its events one at a time. See src/delivery.rs.
CREATE TABLE txevents.consumers (
    name           text        PRIMARY KEY CHECK (name <> ''),
    event_types    text[],
    max_attempts   int         NOT NULL CHECK (max_attempts >= 1),
    backoff_base   interval    NOT NULL,
    backoff_max    interval    NOT NULL,
    done_snapshot  pg_snapshot NOT NULL,
    range_snapshot pg_snapshot,
    range_txid     xid8,
    range_id       bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    ordered        boolean     NOT NULL DEFAULT false
);

-- Events of a group by the batch (src/delivery.rs). attempts = deliveries so far, per
-- event. The first `inflight` events are held by a worker until lease_until; a row
-- without a lease is pending, written by a tick for polls to take. lane: the
-- aggregate id of an ordered group's lane (its head only is ever in flight).
CREATE TABLE txevents.claims (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer    text        NOT NULL REFERENCES txevents.consumers (name) ON DELETE CASCADE,
    event_ids   bigint[]    NOT NULL,
    attempts    int[]       NOT NULL,
    lease_until timestamptz,
    inflight    int         NOT NULL,
    lane        text,
    last_error  text
);
-- Expired leases (poll) and leased rows (ack, nack).
CREATE INDEX claims_consumer_lease ON txevents.claims (consumer, lease_until);
-- Pending rows, oldest first (poll).
CREATE INDEX claims_pending ON txevents.claims (consumer, id) WHERE lease_until IS NULL;
-- One lane per aggregate and group: a tick appends to it.
CREATE UNIQUE INDEX claims_lane ON txevents.claims (consumer, lane) WHERE lane IS NOT NULL;

-- Events a worker nacked, waiting for their next attempt. attempts = deliveries so far.
CREATE TABLE txevents.retries (
    consumer        text        NOT NULL REFERENCES txevents.consumers (name) ON DELETE CASCADE,
    event_id        bigint      NOT NULL,
    attempts        int         NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX retries_due ON txevents.retries (consumer, next_attempt_at);

-- Events that failed max_attempts times (or whose lease ran out on the last attempt).
CREATE TABLE txevents.dead (
    consumer   text        NOT NULL REFERENCES txevents.consumers (name) ON DELETE CASCADE,
    event_id   bigint      NOT NULL,
    attempts   int         NOT NULL,
    last_error text,
    failed_at  timestamptz NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- Notifications of prepared transactions, sent by COMMIT PREPARED (src/notify.rs).
CREATE TABLE txevents.prepared_notify (
    gid      text   PRIMARY KEY,
    channels text[] NOT NULL,
    payloads text[] NOT NULL
);

-- Transactions whose events the coalesced notify worker has yet to send
-- (txevents.notify = coalesced, src/coalesced.rs): written by emit once per
-- transaction, deleted by the worker in the transaction that sends the notifications.
CREATE TABLE txevents.coalesced (
    txid    xid8 PRIMARY KEY,
    channel text NOT NULL
);
