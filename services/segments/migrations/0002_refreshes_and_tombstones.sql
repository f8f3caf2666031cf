-- The segments service's bookkeeping beside the designed tables (docs/schema.md).

-- One row per segment: its last full refresh, and when the scheduler refreshes
-- it next. `changed_at` is when its definition, or that of a segment it
-- references, last changed: memberships evaluated before it are stale.
CREATE TABLE segment_refreshes (
  segment_id UUID PRIMARY KEY REFERENCES user_segments(id) ON DELETE CASCADE,
  changed_at TIMESTAMPTZ NOT NULL,
  evaluated_at TIMESTAMPTZ,
  member_count BIGINT NOT NULL DEFAULT 0,
  next_refresh_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX segment_refreshes_due ON segment_refreshes (next_refresh_at);

-- A segment's members in user order: keyset pages of ListSegmentMembers and the
-- refresh's walk over the members it compares with the new ones.
CREATE INDEX idx_memberships_segment_user ON user_segment_memberships (segment_id, user_id);

-- Users erased (EraseUserData): a membership is never written for them again,
-- whatever arrives late. Kept 90 days (`lifecycle maintenance`).
CREATE TABLE erased_users (
  user_id UUID PRIMARY KEY,
  erased_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX erased_users_erased_at ON erased_users (erased_at);
