-- users and user_lifecycle_history as in the design, plus (docs/schema.md):
--  * unique lower(email), because emails are unique case-insensitively;
--  * attributes NOT NULL, a JSON object of at most 64 KiB;
--  * created_at/updated_at NOT NULL, updated_at kept by a trigger;
--  * history ordered by (transitioned_at, id), transitioned_at NOT NULL.

CREATE TABLE users (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  email VARCHAR(255) UNIQUE NOT NULL,
  current_lifecycle_stage VARCHAR(50) NOT NULL,
  attributes JSONB NOT NULL DEFAULT '{}',
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),

  CONSTRAINT valid_lifecycle_stage CHECK (
    current_lifecycle_stage IN ('Acquisition', 'Activation', 'Retention', 'Revenue', 'Referral')
  ),
  CONSTRAINT attributes_object CHECK (jsonb_typeof(attributes) = 'object'),
  CONSTRAINT attributes_size CHECK (octet_length(attributes::text) <= 65536)
);

CREATE INDEX idx_users_lifecycle_stage ON users(current_lifecycle_stage);
CREATE INDEX idx_users_attributes ON users USING GIN (attributes);
CREATE INDEX idx_users_created_at ON users(created_at);
CREATE UNIQUE INDEX idx_users_email_lower ON users (lower(email));

CREATE TRIGGER users_touch_updated_at BEFORE UPDATE ON users
  FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE user_lifecycle_history (
  id BIGSERIAL PRIMARY KEY,
  user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  from_stage VARCHAR(50),
  to_stage VARCHAR(50) NOT NULL,
  transitioned_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  workflow_execution_id UUID,
  metadata JSONB DEFAULT '{}',

  CONSTRAINT valid_stages CHECK (
    (from_stage IS NULL OR from_stage IN ('Acquisition', 'Activation', 'Retention', 'Revenue', 'Referral'))
    AND to_stage IN ('Acquisition', 'Activation', 'Retention', 'Revenue', 'Referral')
  )
);

CREATE INDEX idx_lifecycle_history_user ON user_lifecycle_history(user_id, transitioned_at DESC);
CREATE INDEX idx_lifecycle_history_stage ON user_lifecycle_history(to_stage, transitioned_at DESC);

-- RFC 7396 JSON merge patch: null removes a key, objects merge recursively,
-- anything else replaces. Done in SQL so that an update is one statement.
CREATE FUNCTION jsonb_merge_patch(target JSONB, patch JSONB) RETURNS JSONB
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN jsonb_typeof(patch) IS DISTINCT FROM 'object' THEN patch
    ELSE (
      SELECT coalesce(jsonb_object_agg(key, value), '{}'::jsonb)
      FROM (
        SELECT t.key, t.value
        FROM jsonb_each(CASE WHEN jsonb_typeof(target) = 'object' THEN target ELSE '{}'::jsonb END) t
        WHERE NOT patch ? t.key
        UNION ALL
        SELECT p.key, jsonb_merge_patch(
                 CASE WHEN jsonb_typeof(target) = 'object' THEN target -> p.key END, p.value)
        FROM jsonb_each(patch) p
        WHERE jsonb_typeof(p.value) <> 'null'
      ) merged
    )
  END
$$;
