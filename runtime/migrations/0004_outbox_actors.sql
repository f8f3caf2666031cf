-- Whom a message is sent for (runtime.identity): the actors of the change that
-- wrote it, the original caller first. The relay makes the call on their
-- behalf, so that the callee attributes what it does to them. Messages written
-- before keep an empty chain: the service sends them as itself.
ALTER TABLE outbox ADD COLUMN actors TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE outbox_dead_letters ADD COLUMN actors TEXT[] NOT NULL DEFAULT '{}';
