-- erased_events: what the daily metrics count of an erased user's events, once
-- the erase has deleted the events themselves (docs/metrics.md, "Erasing a
-- user"). One row per deleted event, with nothing that names the user or links
-- the rows to each other: the UTC day, the type, the stage, the breakdown value
-- (a workflow, trigger or segment id), the stage move and its dwell time, and
-- whether it was the user's first activity of the day (in its stage, in all).
-- The rollup reads these rows beside the log; archival deletes them with the
-- partition of their days. event_key is a SHA-256 of the event's identity
-- (event_id and event_time), so that an event counted once is not counted
-- again when it arrives (again) after the erase. It names nobody: event ids are
-- random UUIDs picked by the producers, and the digest leads back to an event
-- only for someone who holds that event's id already.

CREATE TABLE erased_events (
  event_day DATE NOT NULL,
  event_type VARCHAR(100) NOT NULL,
  lifecycle_stage VARCHAR(50),
  subject TEXT,
  from_stage VARCHAR(50),
  to_stage VARCHAR(50),
  dwell_seconds NUMERIC,
  first_activity_in_stage BOOLEAN NOT NULL,
  first_activity_of_day BOOLEAN NOT NULL,
  event_key BYTEA NOT NULL UNIQUE
);

CREATE INDEX idx_erased_events_day ON erased_events(event_day);
