-- The execution engine's state (docs/workflows.md, docs/schema.md).

-- Every version executions can run on; `workflows` holds the current one.
CREATE TABLE workflow_versions (
  workflow_id UUID NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
  version VARCHAR(50) NOT NULL,
  bpmn_xml TEXT NOT NULL,
  -- The validated process graph (services/workflows/bpmn.py), so nothing is parsed at run time.
  definition JSONB NOT NULL,
  checksum BYTEA NOT NULL,
  -- The message name of a message start event: publishing it starts executions.
  start_message TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (workflow_id, version)
);
CREATE INDEX workflow_versions_start_message ON workflow_versions (start_message)
  WHERE start_message IS NOT NULL;

-- Executions pin the version they started on. `exclusive` executions are the
-- one running execution of their workflow for their user (conflict policy).
ALTER TABLE workflow_executions
  ADD COLUMN workflow_version VARCHAR(50) NOT NULL,
  ADD COLUMN exclusive BOOLEAN NOT NULL DEFAULT true,
  ADD COLUMN parent_execution_id UUID,
  ADD COLUMN parent_token INTEGER,
  ADD COLUMN next_token INTEGER NOT NULL DEFAULT 1,
  ADD CONSTRAINT workflow_executions_version_fkey
    FOREIGN KEY (workflow_id, workflow_version) REFERENCES workflow_versions (workflow_id, version);
CREATE UNIQUE INDEX idx_executions_one_running ON workflow_executions (workflow_id, user_id)
  WHERE exclusive AND status IN ('pending', 'running');
CREATE INDEX idx_executions_finished ON workflow_executions (completed_at)
  WHERE completed_at IS NOT NULL;
CREATE INDEX idx_executions_parent ON workflow_executions (parent_execution_id)
  WHERE parent_execution_id IS NOT NULL;

-- A token is one visit of one element; it lives while the element waits.
CREATE TABLE execution_tokens (
  execution_id UUID NOT NULL REFERENCES workflow_executions(id) ON DELETE CASCADE,
  token INTEGER NOT NULL,
  element_id TEXT NOT NULL,
  -- The sub-process token this token runs inside, if any.
  scope_token INTEGER,
  -- The sequence flow it arrived by (parallel joins count arrivals per flow).
  arrived_via TEXT,
  PRIMARY KEY (execution_id, token)
);

CREATE TABLE timers (
  execution_id UUID NOT NULL,
  token INTEGER NOT NULL,
  -- The timer event: a catch event, a boundary event, or the start event.
  element_id TEXT NOT NULL,
  due_at TIMESTAMPTZ NOT NULL,
  -- Repetitions of a cycle left after this one; NULL for unbounded.
  repeat INTEGER,
  PRIMARY KEY (execution_id, token, element_id),
  FOREIGN KEY (execution_id, token) REFERENCES execution_tokens ON DELETE CASCADE
);
CREATE INDEX timers_due ON timers (due_at);

CREATE TABLE message_subscriptions (
  execution_id UUID NOT NULL,
  token INTEGER NOT NULL,
  element_id TEXT NOT NULL,
  message_name TEXT NOT NULL,
  user_id UUID NOT NULL,
  PRIMARY KEY (execution_id, token, element_id),
  FOREIGN KEY (execution_id, token) REFERENCES execution_tokens ON DELETE CASCADE
);
CREATE INDEX message_subscriptions_user ON message_subscriptions (user_id, message_name);

-- Published messages: buffered until expires_at for executions that subscribe
-- later (each execution takes one at most once), and kept a day at least so
-- that a repeated message_id is recognised.
CREATE TABLE messages (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name TEXT NOT NULL,
  user_id UUID NOT NULL,
  message_id TEXT UNIQUE,
  variables JSONB NOT NULL,
  published_at TIMESTAMPTZ NOT NULL,
  expires_at TIMESTAMPTZ NOT NULL,
  delivered_to UUID[] NOT NULL DEFAULT '{}'
);
CREATE INDEX messages_buffer ON messages (user_id, name, expires_at);
CREATE INDEX messages_published ON messages (published_at);

-- Service task work. `available_at` is when a ready job may be activated, and
-- the deadline of an activated one, after which it may be activated again.
CREATE TABLE jobs (
  execution_id UUID NOT NULL,
  token INTEGER NOT NULL,
  job_type TEXT NOT NULL,
  element_id TEXT NOT NULL,
  workflow_id UUID NOT NULL,
  user_id UUID NOT NULL,
  headers JSONB NOT NULL,
  retries INTEGER NOT NULL,
  failures INTEGER NOT NULL DEFAULT 0,
  state TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'activated', 'failed')),
  available_at TIMESTAMPTZ NOT NULL,
  worker TEXT,
  error_message TEXT,
  PRIMARY KEY (execution_id, token),
  FOREIGN KEY (execution_id, token) REFERENCES execution_tokens ON DELETE CASCADE
);
CREATE INDEX jobs_activatable ON jobs (job_type, available_at) WHERE state <> 'failed';

CREATE TABLE incidents (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  execution_id UUID NOT NULL REFERENCES workflow_executions(id) ON DELETE CASCADE,
  token INTEGER NOT NULL,
  element_id TEXT NOT NULL,
  -- Raised by a job (its retries ran out, or an uncaught error): resolving retries the job.
  from_job BOOLEAN NOT NULL,
  error_message TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL,
  resolved_at TIMESTAMPTZ
);
CREATE INDEX incidents_execution ON incidents (execution_id);

CREATE TABLE execution_history (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  execution_id UUID NOT NULL REFERENCES workflow_executions(id) ON DELETE CASCADE,
  element_id TEXT NOT NULL,
  element_type TEXT NOT NULL,
  state TEXT NOT NULL,
  at TIMESTAMPTZ NOT NULL
);
CREATE INDEX execution_history_execution ON execution_history (execution_id, id);

-- Users erased through EraseUserData: later work for them is refused.
CREATE TABLE erased_users (
  user_id UUID PRIMARY KEY,
  erased_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
