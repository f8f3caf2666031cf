-- What the metrics service needs beyond the design (docs/schema.md):
--  * lifecycle_events.event_id: the producer's id of an event, the idempotency
--    key of RecordEvents; unique with the partition key, as PostgreSQL requires
--    of a unique constraint on a partitioned table (producers resend an event
--    with its original time, so the pair identifies it);
--  * lifecycle_events.producer: the service that sent the event (audit log);
--  * an index for ListEvents by workflow execution;
--  * erased_users: tombstones, so events arriving after a user's erase are dropped;
--  * archived_partitions: what archival wrote to cold storage before dropping a
--    partition, with its manifest.
-- The tables were empty until RecordEvents existed; the default only fills
-- rows a hand-made insert may have left, and is dropped at once.

ALTER TABLE lifecycle_events ADD COLUMN event_id UUID NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE lifecycle_events ALTER COLUMN event_id DROP DEFAULT;
ALTER TABLE lifecycle_events ADD COLUMN producer VARCHAR(50);
ALTER TABLE lifecycle_events
  ADD CONSTRAINT lifecycle_events_event_id_key UNIQUE (event_id, created_at);
CREATE INDEX idx_lifecycle_events_execution ON lifecycle_events(workflow_execution_id, created_at DESC)
  WHERE workflow_execution_id IS NOT NULL;

CREATE TABLE erased_users (
  user_id UUID PRIMARY KEY,
  erased_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE archived_partitions (
  partition_name TEXT PRIMARY KEY,
  range_start TIMESTAMPTZ NOT NULL,
  range_end TIMESTAMPTZ NOT NULL,
  data_location TEXT NOT NULL,
  manifest JSONB NOT NULL,
  archived_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
