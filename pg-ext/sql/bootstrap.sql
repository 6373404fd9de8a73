-- The outbox: one row per emitted event, written in the emitting transaction.
CREATE TABLE txevents.outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type     text        NOT NULL CHECK (event_type <> ''),
    aggregate_type text,
    aggregate_id   text,
    payload        jsonb       NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    headers        jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    occurred_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The emitting transaction: lets consumers order and fence by commit
    -- visibility rather than by id, which commits do not follow.
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id()
);
REVOKE ALL ON txevents.outbox FROM PUBLIC;
COMMENT ON TABLE txevents.outbox IS 'Events emitted by txevents.emit, one row per event; written in the emitting transaction.';
