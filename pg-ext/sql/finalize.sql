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

-- Metrics (SPEC 3.4). The _metrics, _errors and _latency_buckets functions read the
-- shared memory set up by shared_preload_libraries (src/metrics.rs) and raise 55000
-- without it; timestamps come as Postgres microseconds since 2000-01-01 UTC.
CREATE VIEW txevents.metrics AS
SELECT d.datname, m.commits, m.rollbacks,
       CASE WHEN m.commits + m.rollbacks > 0
            THEN m.rollbacks::float8 / (m.commits + m.rollbacks) END AS rollback_rate,
       m.xact_p50_ms, m.xact_p90_ms, m.xact_p99_ms, m.xact_p999_ms, m.xact_max_ms,
       m.commit_p50_ms, m.commit_p90_ms, m.commit_p99_ms, m.commit_p999_ms, m.commit_max_ms,
       m.events_emitted, m.events_published, m.events_acked, m.events_retried,
       m.events_dead_lettered, m.events_redriven, m.errors, m.errors_overflow,
       timestamptz '2000-01-01 00:00:00+00' + m.reset_at_us * interval '1 microsecond' AS reset_at
  FROM txevents._metrics() m
  JOIN pg_catalog.pg_database d ON d.oid = m.dboid;
COMMENT ON VIEW txevents.metrics IS
    'Per database, client backends since the last reset: transactions, durations (ms), events, errors. Needs shared_preload_libraries.';

-- datname is NULL for errors raised before a connection had a database (refused logins).
CREATE VIEW txevents.errors AS
SELECT d.datname, e.sqlstate, e.condition, e.count, e.last_message,
       timestamptz '2000-01-01 00:00:00+00' + e.last_at_us * interval '1 microsecond' AS last_at
  FROM txevents._errors() e
  LEFT JOIN pg_catalog.pg_database d ON d.oid = e.dboid
 WHERE e.dboid = 0 OR d.oid IS NOT NULL;
COMMENT ON VIEW txevents.errors IS
    'ERRORs (and worse) reported to client backends, by database and SQLSTATE. Needs shared_preload_libraries.';

CREATE VIEW txevents.latency_buckets AS
SELECT d.datname, b.histogram, b.bucket, b.le, b.count, b.cumulative
  FROM txevents._latency_buckets() b
  JOIN pg_catalog.pg_database d ON d.oid = b.dboid;
COMMENT ON VIEW txevents.latency_buckets IS
    'Transaction and commit duration histograms: count per bucket, le = upper bound in seconds. Needs shared_preload_libraries.';

-- Per consumer group: committed matching events not yet handed out (pending: those
-- not yet read into claim rows, by the visibility rules of src/poll.rs, plus those
-- waiting in pending claim rows), events held by workers (in_flight), waiting retries
-- (the retries table and lane heads nacked in an ordered group), dead letters, and the
-- age of the oldest event not yet handed out.
CREATE VIEW txevents.consumer_lag AS
SELECT c.name AS consumer,
       coalesce(p.pending, 0) + coalesce(k.pending, 0) AS pending,
       coalesce(k.in_flight, 0) AS in_flight,
       (SELECT count(*) FROM txevents.retries r WHERE r.consumer = c.name)
           + coalesce(k.retrying, 0) AS retrying,
       (SELECT count(*) FROM txevents.dead x WHERE x.consumer = c.name) AS dead,
       clock_timestamp() - least(
           p.oldest,
           k.oldest,
           (SELECT min(o.occurred_at) FROM txevents.retries r
              JOIN txevents.outbox o ON o.id = r.event_id
             WHERE r.consumer = c.name)) AS oldest_pending_age
  FROM txevents.consumers c
  LEFT JOIN LATERAL (
       SELECT count(*) AS pending, min(o.occurred_at) AS oldest
         FROM txevents.outbox o
        WHERE o.txid >= pg_catalog.pg_snapshot_xmin(c.done_snapshot)
          AND NOT pg_catalog.pg_visible_in_snapshot(o.txid, c.done_snapshot)
          AND NOT (c.range_snapshot IS NOT NULL
                   AND pg_catalog.pg_visible_in_snapshot(o.txid, c.range_snapshot)
                   AND (o.txid, o.id) <= (c.range_txid, c.range_id))
          AND (c.event_types IS NULL OR o.event_type = ANY (c.event_types))) p ON true
  LEFT JOIN LATERAL (
       SELECT sum(pg_catalog.cardinality(cl.event_ids) - cl.inflight) AS pending,
              sum(cl.inflight) FILTER (WHERE cl.lane IS NULL OR cl.last_error IS NULL)
                  AS in_flight,
              count(*) FILTER (WHERE cl.lane IS NOT NULL AND cl.last_error IS NOT NULL)
                  AS retrying,
              (SELECT min(o.occurred_at)
                 FROM txevents.claims w,
                      LATERAL unnest(w.event_ids[w.inflight + 1:]) AS e(id)
                 JOIN txevents.outbox o ON o.id = e.id
                WHERE w.consumer = c.name) AS oldest
         FROM txevents.claims cl WHERE cl.consumer = c.name) k ON true;
COMMENT ON VIEW txevents.consumer_lag IS
    'Per consumer group: pending, in-flight, retrying and dead events, and the age of the oldest undelivered one.';

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

-- Metrics: read by txevents_admin and pg_monitor; reset by txevents_admin.
GRANT USAGE ON SCHEMA txevents TO pg_monitor;
GRANT SELECT ON txevents.metrics, txevents.errors, txevents.latency_buckets,
    txevents.consumer_lag TO txevents_admin, pg_monitor;
GRANT EXECUTE ON FUNCTION txevents._metrics, txevents._errors, txevents._latency_buckets,
    txevents.metrics_untracked TO txevents_admin, pg_monitor;
GRANT EXECUTE ON FUNCTION txevents.reset_metrics TO txevents_admin;
