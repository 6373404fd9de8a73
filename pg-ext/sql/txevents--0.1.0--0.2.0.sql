\echo Use "ALTER EXTENSION txevents UPDATE" to load this file. \quit

-- 0.2.0: a tick writes pending claim rows that concurrent polls take with SKIP LOCKED
-- (polls no longer queue on the group's row), and ordered groups (one lane per
-- aggregate id). See src/delivery.rs.

ALTER TABLE txevents.consumers ADD COLUMN ordered boolean NOT NULL DEFAULT false;

-- Every 0.1.0 claim is one batch in flight: inflight = all of it. Its attempts are
-- the deliveries so far, as in 0.2.0.
ALTER TABLE txevents.claims
    ALTER COLUMN lease_until DROP NOT NULL,
    ADD COLUMN inflight int,
    ADD COLUMN lane text,
    ADD COLUMN last_error text;
UPDATE txevents.claims SET inflight = cardinality(event_ids);
ALTER TABLE txevents.claims ALTER COLUMN inflight SET NOT NULL;
CREATE INDEX claims_pending ON txevents.claims (consumer, id) WHERE lease_until IS NULL;
CREATE UNIQUE INDEX claims_lane ON txevents.claims (consumer, lane) WHERE lane IS NOT NULL;

-- create_consumer gains `ordered` (last, so that 0.1.0 calls keep working). The
-- library keeps 0.1.0's five-argument entry point for the 0.1.0 definition, which
-- runs until this script does.
DROP FUNCTION txevents.create_consumer(text, text[], int, interval, interval);
CREATE FUNCTION txevents."create_consumer"(
	"name" TEXT,
	"event_types" TEXT[] DEFAULT NULL,
	"max_attempts" INT DEFAULT 10,
	"backoff_base" interval DEFAULT '1s',
	"backoff_max" interval DEFAULT '5 min',
	"ordered" bool DEFAULT false
) RETURNS void
SECURITY DEFINER
SET search_path TO @extschema@, pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'txevents_create_consumer_ordered_wrapper';
REVOKE EXECUTE ON FUNCTION txevents.create_consumer FROM PUBLIC;
GRANT EXECUTE ON FUNCTION txevents.create_consumer TO txevents_admin;

-- Issue 9 (metrics, coalesced NOTIFY), also new in 0.2.0.

-- Transactions whose events the coalesced notify worker has yet to send
-- (txevents.notify = coalesced, src/coalesced.rs): written by emit once per
-- transaction, deleted by the worker in the transaction that sends the notifications.
CREATE TABLE txevents.coalesced (
    txid    xid8 PRIMARY KEY,
    channel text NOT NULL
);

CREATE FUNCTION txevents."_errors"() RETURNS TABLE (
	"dboid" oid,
	"sqlstate" TEXT,
	"condition" TEXT,
	"count" bigint,
	"last_message" TEXT,
	"last_at_us" bigint
)
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c
AS 'MODULE_PATHNAME', 'txevents_errors_wrapper';

CREATE FUNCTION txevents."_latency_buckets"() RETURNS TABLE (
	"dboid" oid,
	"histogram" TEXT,
	"bucket" INT,
	"le" double precision,
	"count" bigint,
	"cumulative" bigint
)
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c
AS 'MODULE_PATHNAME', 'txevents_latency_buckets_wrapper';

CREATE FUNCTION txevents."_metrics"() RETURNS TABLE (
	"dboid" oid,
	"commits" bigint,
	"rollbacks" bigint,
	"xact_p50_ms" double precision,
	"xact_p90_ms" double precision,
	"xact_p99_ms" double precision,
	"xact_p999_ms" double precision,
	"xact_max_ms" double precision,
	"commit_p50_ms" double precision,
	"commit_p90_ms" double precision,
	"commit_p99_ms" double precision,
	"commit_p999_ms" double precision,
	"commit_max_ms" double precision,
	"events_emitted" bigint,
	"events_published" bigint,
	"events_acked" bigint,
	"events_retried" bigint,
	"events_dead_lettered" bigint,
	"events_redriven" bigint,
	"errors" bigint,
	"errors_overflow" bigint,
	"reset_at_us" bigint
)
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c
AS 'MODULE_PATHNAME', 'txevents_metrics_wrapper';

CREATE FUNCTION txevents."metrics_untracked"() RETURNS bigint
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c
AS 'MODULE_PATHNAME', 'txevents_metrics_untracked_wrapper';

CREATE FUNCTION txevents."reset_metrics"() RETURNS void
STRICT VOLATILE PARALLEL RESTRICTED 
LANGUAGE c
AS 'MODULE_PATHNAME', 'txevents_reset_metrics_wrapper';

REVOKE EXECUTE ON FUNCTION txevents._errors, txevents._latency_buckets, txevents._metrics,
    txevents.metrics_untracked, txevents.reset_metrics FROM PUBLIC;

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

-- Metrics: read by txevents_admin and pg_monitor; reset by txevents_admin.
GRANT USAGE ON SCHEMA txevents TO pg_monitor;
GRANT SELECT ON txevents.metrics, txevents.errors, txevents.latency_buckets,
    txevents.consumer_lag TO txevents_admin, pg_monitor;
GRANT EXECUTE ON FUNCTION txevents._metrics, txevents._errors, txevents._latency_buckets,
    txevents.metrics_untracked TO txevents_admin, pg_monitor;
GRANT EXECUTE ON FUNCTION txevents.reset_metrics TO txevents_admin;
