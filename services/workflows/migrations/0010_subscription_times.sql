-- When a token began to wait for a message or a signal (ListExecutionWaits,
-- the console's execution page), by the step's clock. NULL on subscriptions
-- made before it was recorded.
ALTER TABLE message_subscriptions ADD COLUMN created_at TIMESTAMPTZ;
ALTER TABLE signal_subscriptions ADD COLUMN created_at TIMESTAMPTZ;
