-- What event ingestion and evaluation need beyond the design's two tables
-- (docs/triggers.md; the deviations are listed in docs/schema.md).

-- The re-entry policy: how often one user may fire a trigger.
ALTER TABLE triggers
  ADD COLUMN reentry_mode VARCHAR(20) NOT NULL DEFAULT 'every_time'
    CHECK (reentry_mode IN ('every_time', 'once_per_user', 'once_per_period')),
  ADD COLUMN reentry_period INTERVAL,
  ADD CONSTRAINT triggers_reentry_period_check CHECK (
    (reentry_mode = 'once_per_period') = (reentry_period IS NOT NULL)
    AND (reentry_period IS NULL OR reentry_period > INTERVAL '0')
  );

-- What was evaluated (a prefix trigger matches several types), and why nothing
-- started when the condition held.
ALTER TABLE trigger_executions
  ADD COLUMN event_type VARCHAR(100),
  ADD COLUMN message_id VARCHAR(200),
  ADD COLUMN skip_reason TEXT;

-- Bumped by every change of `triggers`, whatever statement made it: each
-- replica compares it once per ingest batch and reloads its trigger cache
-- when it moved, so a change applies to the next batch everywhere.
CREATE TABLE trigger_catalog (
  id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
  version BIGINT NOT NULL DEFAULT 0
);
INSERT INTO trigger_catalog DEFAULT VALUES;

CREATE FUNCTION bump_trigger_catalog() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
  UPDATE trigger_catalog SET version = version + 1;
  RETURN NULL;
END
$$;

CREATE TRIGGER triggers_bump_catalog AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON triggers
  FOR EACH STATEMENT EXECUTE FUNCTION bump_trigger_catalog();

-- Every event acknowledged: stored once per message_id (the deduplication key),
-- kept for LIFECYCLE_TRIGGERS_EVENT_RETENTION_DAYS.
CREATE TABLE events (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  message_id VARCHAR(200) NOT NULL UNIQUE,
  user_id UUID NOT NULL,
  event_type VARCHAR(100) NOT NULL,
  data JSONB NOT NULL,
  event_time TIMESTAMP WITH TIME ZONE NOT NULL,
  received_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_events_user ON events(user_id);

-- The last firing of a trigger per user, for the once-per-user and
-- once-per-period policies (never written for every_time).
CREATE TABLE trigger_entries (
  trigger_id UUID NOT NULL REFERENCES triggers(id) ON DELETE CASCADE,
  user_id UUID NOT NULL,
  fired_at TIMESTAMP WITH TIME ZONE NOT NULL,
  PRIMARY KEY (trigger_id, user_id)
);

CREATE INDEX idx_trigger_entries_user ON trigger_entries(user_id);

-- Workflow starts that wait for the workflows service (StartExecution, by the
-- starter worker), with the trace of the event that caused them. A row goes
-- once the workflows service answered, in the transaction that writes the
-- answer into trigger_executions.
CREATE TABLE pending_starts (
  trigger_execution_id UUID PRIMARY KEY,
  executed_at TIMESTAMP WITH TIME ZONE NOT NULL,
  trigger_id UUID NOT NULL REFERENCES triggers(id) ON DELETE CASCADE,
  user_id UUID NOT NULL,
  event_type VARCHAR(100) NOT NULL,
  request BYTEA NOT NULL,
  traceparent TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  available_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  last_error TEXT
);

CREATE INDEX idx_pending_starts_due ON pending_starts(available_at);
CREATE INDEX idx_pending_starts_user ON pending_starts(user_id);

-- Erased users (tombstones): their later events are refused.
CREATE TABLE erased_users (
  user_id UUID PRIMARY KEY,
  erased_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
