-- triggers and trigger_executions as in the design, except (docs/schema.md):
--  * trigger_executions is partitioned by month on executed_at (as the design's
--    partitioning section says), so its primary key is (id, executed_at) and
--    executed_at is NOT NULL; partitions are made by runtime.partitions;
--  * no foreign keys to workflows, workflow_executions or users: they belong to
--    other services (asked over gRPC instead);
--  * timestamps NOT NULL, updated_at kept by a trigger.

CREATE TABLE triggers (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  name VARCHAR(255) NOT NULL,
  event_type VARCHAR(255) NOT NULL,
  conditions JSONB NOT NULL,
  workflow_id UUID,
  enabled BOOLEAN DEFAULT true,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_triggers_event_type ON triggers(event_type) WHERE enabled = true;
CREATE INDEX idx_triggers_workflow ON triggers(workflow_id) WHERE enabled = true;

CREATE TRIGGER triggers_touch_updated_at BEFORE UPDATE ON triggers
  FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE trigger_executions (
  id UUID NOT NULL DEFAULT gen_random_uuid(),
  trigger_id UUID NOT NULL REFERENCES triggers(id),
  user_id UUID,
  event_data JSONB,
  condition_met BOOLEAN NOT NULL,
  workflow_execution_id UUID,
  executed_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),

  PRIMARY KEY (id, executed_at)
) PARTITION BY RANGE (executed_at);

CREATE INDEX idx_trigger_executions_trigger ON trigger_executions(trigger_id, executed_at DESC);
CREATE INDEX idx_trigger_executions_user ON trigger_executions(user_id, executed_at DESC);
