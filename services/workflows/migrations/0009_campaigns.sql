-- Recurring campaigns: workflows whose start event is a timer cycle start one
-- execution per member of a segment on each cycle (docs/workflows.md
-- "Recurring campaigns"; docs/schema.md).

-- One row per cycle of a campaign, from when it is scheduled: `scheduled` (at
-- most one per workflow, the next moment of an active workflow's cycle),
-- `running` (its pages of members being started; `page_token` is where the
-- next page starts), then `completed` or `failed` (`error_message`). The
-- executions of a cycle are idempotent per (workflow, cycle moment, user)
-- through idempotency_keys, and a page's starts and its cursor commit
-- together. Goes with its workflow's version (DeleteWorkflow); retention
-- deletes cycles that ended more than a year ago. It holds no user's data.
CREATE TABLE campaign_cycles (
  workflow_id UUID NOT NULL,
  due_at TIMESTAMPTZ NOT NULL,
  workflow_version VARCHAR(50) NOT NULL,
  segment_id UUID NOT NULL,
  cycle TEXT NOT NULL,
  -- Cycles left after this one; NULL: unbounded.
  repetitions_left INTEGER,
  status TEXT NOT NULL DEFAULT 'scheduled'
    CHECK (status IN ('scheduled', 'running', 'completed', 'failed')),
  page_token TEXT NOT NULL DEFAULT '',
  started_count INTEGER NOT NULL DEFAULT 0,
  -- When a cycle whose segments call failed is tried again, and how often it failed.
  retry_at TIMESTAMPTZ,
  failures INTEGER NOT NULL DEFAULT 0,
  error_message TEXT,
  -- Whom its executions work for: the actors of the call that activated the version.
  actors TEXT[] NOT NULL DEFAULT '{}',
  finished_at TIMESTAMPTZ,
  PRIMARY KEY (workflow_id, due_at),
  FOREIGN KEY (workflow_id, workflow_version) REFERENCES workflow_versions ON DELETE CASCADE
);
CREATE UNIQUE INDEX campaign_cycles_scheduled ON campaign_cycles (workflow_id)
  WHERE status = 'scheduled';
CREATE INDEX campaign_cycles_due ON campaign_cycles (coalesce(retry_at, due_at))
  WHERE status IN ('scheduled', 'running');
CREATE INDEX campaign_cycles_finished ON campaign_cycles (finished_at)
  WHERE finished_at IS NOT NULL;
