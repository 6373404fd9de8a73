-- Runs after every function of the extension exists.

-- Row capture: the trigger function installed by txevents.capture().
-- TG_ARGV[0] = event prefix, TG_ARGV[1] = single-column primary key ('' if none).
CREATE FUNCTION txevents.capture_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = @extschema@, pg_catalog, pg_temp AS $$
DECLARE
    old_row jsonb;
    new_row jsonb;
    key     text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN old_row := to_jsonb(OLD); END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN new_row := to_jsonb(NEW); END IF;
    IF TG_ARGV[1] <> '' THEN key := coalesce(new_row, old_row) ->> TG_ARGV[1]; END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM @extschema@.emit(TG_ARGV[0] || '.inserted', jsonb_build_object('new', new_row), TG_TABLE_NAME, key);
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM @extschema@.emit(TG_ARGV[0] || '.updated', jsonb_build_object('old', old_row, 'new', new_row), TG_TABLE_NAME, key);
    ELSE
        PERFORM @extschema@.emit(TG_ARGV[0] || '.deleted', jsonb_build_object('old', old_row), TG_TABLE_NAME, key);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION txevents.capture(tbl regclass, event_prefix text DEFAULT NULL) RETURNS void
LANGUAGE sql SET search_path = @extschema@, pg_catalog, pg_temp
AS $$ SELECT @extschema@._capture(tbl::oid, event_prefix) $$;
COMMENT ON FUNCTION txevents.capture(regclass, text) IS
    'Emit <prefix>.inserted/updated/deleted for every row change of tbl (prefix: the table name).';

CREATE FUNCTION txevents.uncapture(tbl regclass) RETURNS boolean
LANGUAGE sql SET search_path = @extschema@, pg_catalog, pg_temp
AS $$ SELECT @extschema@._uncapture(tbl::oid) $$;
COMMENT ON FUNCTION txevents.uncapture(regclass) IS
    'Remove the capture trigger of tbl; true if there was one.';

-- txevents.poll: the SECURITY DEFINER entry point around txevents._poll (src/consumer.rs).
-- PL/pgSQL returns the set materialized, so the search_path is set once per poll,
-- not once per returned row.
CREATE FUNCTION txevents.poll(consumer text, max int DEFAULT 100, lease interval DEFAULT '30s')
RETURNS TABLE(id bigint, event_type text, aggregate_type text, aggregate_id text,
              payload jsonb, headers jsonb, occurred_at timestamptz, attempt int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = @extschema@, pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT * FROM @extschema@._poll(consumer, max, lease);
END
$$;
COMMENT ON FUNCTION txevents.poll(text, int, interval) IS
    'Claim up to max events of consumer group for lease; returns them with their attempt number.';

CREATE VIEW txevents.dead_letters AS
SELECT d.consumer, d.event_id, o.event_type, o.payload, d.attempts, d.last_error, d.failed_at
  FROM txevents.dead d
  JOIN txevents.outbox o ON o.id = d.event_id;

-- Security (SPEC 3.5): nothing for PUBLIC; three roles, created once per cluster.
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['txevents_producer', 'txevents_consumer', 'txevents_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created concurrently by CREATE EXTENSION in another database
            END;
        END IF;
    END LOOP;
    BEGIN
        GRANT txevents_producer, txevents_consumer TO txevents_admin;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA txevents FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA txevents FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA txevents FROM PUBLIC;
GRANT USAGE ON SCHEMA txevents TO txevents_producer, txevents_consumer, txevents_admin;

GRANT EXECUTE ON FUNCTION txevents.emit, txevents.invalidate, txevents.invalidate_namespace
    TO txevents_producer;
GRANT EXECUTE ON FUNCTION txevents.poll, txevents.ack, txevents.nack, txevents.redrive, txevents.get
    TO txevents_consumer;
GRANT SELECT ON txevents.dead_letters TO txevents_consumer;
GRANT EXECUTE ON FUNCTION txevents.create_consumer, txevents.drop_consumer, txevents.prune,
    txevents.capture, txevents.uncapture, txevents._capture, txevents._uncapture,
    txevents.capture_trigger
    TO txevents_admin;
