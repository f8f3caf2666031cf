-- How many items a message holds: a message of a mergeable topic may carry
-- many (a batch of tracked events is one PublishMessages message, not one per
-- event), and the relay fills each call up to its destination's item limit.
ALTER TABLE outbox ADD COLUMN items INTEGER NOT NULL DEFAULT 1 CHECK (items >= 1);
ALTER TABLE outbox_dead_letters ADD COLUMN items INTEGER NOT NULL DEFAULT 1 CHECK (items >= 1);
