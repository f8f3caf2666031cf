-- Whom an execution works for (docs/workflows.md, docs/schema.md): the actors
-- of the call that started it (StartExecution's caller, a message's publisher,
-- a called workflow's parent's), the original caller first. Its timers and the
-- built-in tasks' calls to the users service act on their behalf. Executions
-- started before work as the service alone.
ALTER TABLE workflow_executions ADD COLUMN actors TEXT[] NOT NULL DEFAULT '{}';
