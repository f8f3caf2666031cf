-- User tasks (docs/workflows.md, "User tasks"; docs/schema.md): the record a
-- bpmn:userTask creates when a token reaches it, while the token waits for
-- CompleteUserTask. It outlives its token (completed or cancelled, it stays
-- until its execution is deleted: retention, DeleteWorkflow, an erase), hence
-- a foreign key to the execution and none to the token.
CREATE TABLE user_tasks (
  id UUID PRIMARY KEY,
  execution_id UUID NOT NULL REFERENCES workflow_executions(id) ON DELETE CASCADE,
  token INTEGER NOT NULL,
  element_id TEXT NOT NULL,
  workflow_id UUID NOT NULL,
  workflow_version VARCHAR(50) NOT NULL,
  -- The execution's user: whom the task is about, not who works on it.
  user_id UUID NOT NULL,
  state TEXT NOT NULL DEFAULT 'created'
    CHECK (state IN ('created', 'assigned', 'completed', 'cancelled')),
  assignee TEXT,
  candidate_groups TEXT[] NOT NULL DEFAULT '{}',
  candidate_users TEXT[] NOT NULL DEFAULT '{}',
  due_at TIMESTAMPTZ,
  follow_up_at TIMESTAMPTZ,
  -- Its input mappings' values, else the execution's variables when it was created.
  variables JSONB NOT NULL DEFAULT '{}',
  created_at TIMESTAMPTZ NOT NULL,
  -- When it was completed or cancelled.
  completed_at TIMESTAMPTZ,
  UNIQUE (execution_id, token),
  CONSTRAINT user_tasks_assigned CHECK ((state = 'assigned') = (assignee IS NOT NULL)
    OR state IN ('completed', 'cancelled'))
);
-- ListUserTasks, newest first, by each filter.
CREATE INDEX user_tasks_created ON user_tasks (created_at DESC, id DESC);
CREATE INDEX user_tasks_open ON user_tasks (state, created_at DESC, id DESC);
CREATE INDEX user_tasks_assignee ON user_tasks (assignee, created_at DESC, id DESC)
  WHERE assignee IS NOT NULL;
CREATE INDEX user_tasks_user ON user_tasks (user_id, created_at DESC, id DESC);
CREATE INDEX user_tasks_candidate_groups ON user_tasks USING GIN (candidate_groups);
CREATE INDEX user_tasks_candidate_users ON user_tasks USING GIN (candidate_users);
