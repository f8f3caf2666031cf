-- Who made each change (docs/metrics.md, docs/schema.md): the actors of an
-- event, the original caller first. NULL for events recorded before changes
-- were attributed, and in the archives written before (a restore leaves it
-- NULL). ListEvents finds the events an actor had a part in with `@>`, which
-- a GIN index on the array serves.
ALTER TABLE lifecycle_events ADD COLUMN actors TEXT[];
CREATE INDEX idx_lifecycle_events_actors ON lifecycle_events USING GIN (actors);
