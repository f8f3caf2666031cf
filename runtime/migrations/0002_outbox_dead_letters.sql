-- Messages the callee kept refusing for their content (INVALID_ARGUMENT,
-- FAILED_PRECONDITION, NOT_FOUND, ...): moved out of the relay's way and kept
-- for an operator to read, fix the cause, and send again (`lifecycle outbox retry`).
CREATE TABLE outbox_dead_letters (
  id BIGINT PRIMARY KEY,
  topic TEXT NOT NULL,
  payload BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL,
  attempts INTEGER NOT NULL,
  last_error TEXT NOT NULL,
  dead_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
