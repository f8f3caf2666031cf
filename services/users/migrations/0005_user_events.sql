-- Each person's tracked events, which the conditions' event leaves read
-- (docs/conditions.md, "What people did"; docs/architecture.md, "Who keeps
-- what people did"). The triggers service sends them (RecordUserEvents, from
-- its outbox, in the transaction that stores the event); stored once per
-- message_id. They go with their user (ON DELETE CASCADE: the erase) and are
-- deleted LIFECYCLE_USERS_EVENT_RETENTION_DAYS after they happened.
--
-- Not partitioned: a condition reads one person's events across the whole
-- retention (a "first" leaf, a 30-day window), which is one index probe here
-- and one per monthly partition (fourteen) there, for every person a refresh
-- scans; and events arrive with their own past times, which a range partition
-- must already exist for. Retention deletes in batches by idx_user_events_time.
CREATE TABLE user_events (
  message_id VARCHAR(200) PRIMARY KEY,
  user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  event_type VARCHAR(100) NOT NULL,
  occurred_at TIMESTAMP WITH TIME ZONE NOT NULL,
  data JSONB NOT NULL DEFAULT '{}',
  recorded_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  CONSTRAINT user_events_data_object CHECK (jsonb_typeof(data) = 'object')
);

-- A condition's lookup: one person's events of a type, by time.
CREATE INDEX idx_user_events_person ON user_events(user_id, event_type, occurred_at);
-- Retention.
CREATE INDEX idx_user_events_time ON user_events(occurred_at);
