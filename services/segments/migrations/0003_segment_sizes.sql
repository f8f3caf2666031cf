-- Each segment's member count per UTC day, the day's last count (ListSegmentSizes,
-- docs/conditions.md "Size over time"): written in the transaction of every
-- change of its memberships and by each full refresh. A day without a row had
-- the size of the row before it. Counts only, no user's data (docs/schema.md).
CREATE TABLE segment_sizes (
  segment_id UUID NOT NULL REFERENCES user_segments(id) ON DELETE CASCADE,
  day DATE NOT NULL,
  members BIGINT NOT NULL,
  recorded_at TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (segment_id, day)
);

-- The segments that exist already start from their members now.
INSERT INTO segment_sizes (segment_id, day, members, recorded_at)
SELECT s.id, (now() AT TIME ZONE 'UTC')::date,
       (SELECT count(*) FROM user_segment_memberships m WHERE m.segment_id = s.id), now()
FROM user_segments s;
