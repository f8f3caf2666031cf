-- Signals, escalations and correlation keys (docs/workflows.md "Signals",
-- "Messages"; docs/schema.md).

-- A token waiting for a signal at a catch or boundary event. BroadcastSignal
-- (and a signal throw or end event) finds every subscriber of a name with one
-- statement. Goes with its token (erase, retention, DeleteWorkflow).
CREATE TABLE signal_subscriptions (
  execution_id UUID NOT NULL,
  token INTEGER NOT NULL,
  element_id TEXT NOT NULL,
  signal_name TEXT NOT NULL,
  PRIMARY KEY (execution_id, token, element_id),
  FOREIGN KEY (execution_id, token) REFERENCES execution_tokens ON DELETE CASCADE
);
CREATE INDEX signal_subscriptions_name ON signal_subscriptions (signal_name);

-- The signal name of a signal start event: a broadcast starts the workflow.
ALTER TABLE workflow_versions
  ADD COLUMN start_signal TEXT GENERATED ALWAYS AS (definition ->> 'start_signal') STORED;
CREATE INDEX workflow_versions_start_signal ON workflow_versions (start_signal)
  WHERE start_signal IS NOT NULL;

-- zeebe:subscription correlationKey: the key a subscription waits on and a
-- message carries, within its user; NULL is the user id (the default).
ALTER TABLE message_subscriptions ADD COLUMN correlation_key TEXT;
ALTER TABLE messages ADD COLUMN correlation_key TEXT;
