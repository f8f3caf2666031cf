-- user_segments and user_segment_memberships as in the design, except
-- (docs/schema.md): memberships.user_id has no foreign key to users (another
-- service's schema; an erase removes memberships through this service's API),
-- and timestamps are NOT NULL with updated_at kept by a trigger.

CREATE TABLE user_segments (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  name VARCHAR(255) NOT NULL,
  description TEXT,
  conditions JSONB NOT NULL,
  lifecycle_stages VARCHAR(50)[] DEFAULT '{}',
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_segments_stages ON user_segments USING GIN (lifecycle_stages);

CREATE TRIGGER user_segments_touch_updated_at BEFORE UPDATE ON user_segments
  FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE user_segment_memberships (
  user_id UUID NOT NULL,
  segment_id UUID NOT NULL REFERENCES user_segments(id) ON DELETE CASCADE,
  evaluated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
  valid_until TIMESTAMP WITH TIME ZONE,

  PRIMARY KEY (user_id, segment_id)
);

CREATE INDEX idx_memberships_segment ON user_segment_memberships(segment_id, evaluated_at DESC);
CREATE INDEX idx_memberships_expiry ON user_segment_memberships(valid_until) WHERE valid_until IS NOT NULL;
