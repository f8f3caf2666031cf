-- Whom a workflow start is made for (docs/triggers.md): the actors of the call
-- that tracked the event, the original caller first. The starter calls
-- StartExecution on their behalf. Starts written before send as the service.
ALTER TABLE pending_starts ADD COLUMN actors TEXT[] NOT NULL DEFAULT '{}';
