-- Compensation (docs/workflows.md, "Compensation"; docs/schema.md): one row
-- per completion of an activity that has a compensation boundary event, in
-- completion order (seq), until a compensation throw event's handler undid it
-- or the execution ended (the engine deletes an ended execution's rows). It
-- outlives the activity's token and its scope's (a completed sub-process's
-- activities stay compensable), hence a foreign key to the execution, with
-- which it goes (erase, retention, DeleteWorkflow).
CREATE TABLE compensations (
  execution_id UUID NOT NULL REFERENCES workflow_executions(id) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  -- The activity that completed.
  element_id TEXT NOT NULL,
  -- The scope tokens it completed in, innermost first: [[token, element], ...].
  scopes JSONB NOT NULL,
  completed_at TIMESTAMPTZ NOT NULL,
  -- The token of the compensation throw or end event running its handler.
  thrower INTEGER,
  PRIMARY KEY (execution_id, seq)
);
