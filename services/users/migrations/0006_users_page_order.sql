-- ListUsers pages in (created_at, id) order. Users imported in one
-- transaction share created_at, so the design's index on created_at alone
-- leaves every page to sort all the users of that moment; this one serves the
-- order and the page cursor as a range.
CREATE INDEX idx_users_created_at_id ON users (created_at, id);
