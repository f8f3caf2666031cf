-- A trigger's action is a workflow to start or a signal to broadcast for the
-- event's user (docs/triggers.md; the deviation is listed in docs/schema.md).

ALTER TABLE triggers
  ADD COLUMN signal_name VARCHAR(255),
  ADD CONSTRAINT triggers_one_action_check CHECK ((workflow_id IS NULL) <> (signal_name IS NULL));

-- The broadcast a firing made: the signal and what the workflows service
-- answered (tokens reached, executions started), set when it answered.
ALTER TABLE trigger_executions
  ADD COLUMN signal_name VARCHAR(255),
  ADD COLUMN signal_delivered INTEGER,
  ADD COLUMN signal_started INTEGER;

-- A waiting call is a BroadcastSignal of this name when it is set, else a
-- StartExecution; `request` is that call's request.
ALTER TABLE pending_starts ADD COLUMN signal_name VARCHAR(255);
