-- The record of each erase (docs/schema.md, "Erasing a user"): which user id,
-- when, and who asked for it (the actors of the DeleteUser call, the original
-- caller first). Nothing else of the user: no email, no attributes, no stage.
-- The erase deletes the user and their history, never this; it is kept for
-- good (docs/schema.md, "Retention").
CREATE TABLE user_erasures (
  user_id UUID PRIMARY KEY,
  erased_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  actors TEXT[] NOT NULL
);
