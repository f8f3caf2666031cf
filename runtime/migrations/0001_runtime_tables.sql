-- Applied into every service's schema before the service's own migrations.

-- Calls to other services that must happen, written in the same transaction
-- as the change that needs them and relayed by runtime.outbox.
CREATE TABLE outbox (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  topic TEXT NOT NULL,
  payload BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  available_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT
);
CREATE INDEX outbox_available ON outbox (available_at, id);

-- request_id replay for creates (runtime.idempotency).
CREATE TABLE idempotency_keys (
  method TEXT NOT NULL,
  request_id UUID NOT NULL,
  request_hash BYTEA NOT NULL,
  response BYTEA,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (method, request_id)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Keeps updated_at true on every change; clock_timestamp() so that two
-- changes of one row in quick succession never share a value.
CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := clock_timestamp();
  RETURN NEW;
END
$$;
