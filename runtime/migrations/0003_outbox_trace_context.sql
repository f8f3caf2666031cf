-- The trace a message was written in (W3C traceparent), so that the call the
-- relay makes later still belongs to the request that caused it.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
ALTER TABLE outbox_dead_letters ADD COLUMN traceparent TEXT;
