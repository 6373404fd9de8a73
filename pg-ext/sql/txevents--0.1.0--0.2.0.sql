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
