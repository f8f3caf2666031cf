-- lifecycle_events and metrics_daily as in the design, except (docs/schema.md):
--  * partitioned as the design's partitioning section says (lifecycle_events by
--    month on created_at, metrics_daily by year on metric_date), so each
--    primary key includes the partition key and that key is NOT NULL;
--    partitions are made by runtime.partitions, and there is no default one;
--  * lifecycle_events has no foreign keys to users or workflow_executions:
--    they belong to other services, and the audit log must outlive them.

CREATE TABLE lifecycle_events (
  id BIGSERIAL,
  event_type VARCHAR(100) NOT NULL,
  user_id UUID,
  workflow_execution_id UUID,
  lifecycle_stage VARCHAR(50),
  event_data JSONB,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),

  PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX idx_lifecycle_events_user ON lifecycle_events(user_id, created_at DESC);
CREATE INDEX idx_lifecycle_events_type ON lifecycle_events(event_type, created_at DESC);
CREATE INDEX idx_lifecycle_events_stage ON lifecycle_events(lifecycle_stage, created_at DESC);
CREATE INDEX idx_lifecycle_events_created ON lifecycle_events(created_at DESC);

CREATE TABLE metrics_daily (
  id BIGSERIAL,
  metric_date DATE NOT NULL,
  lifecycle_stage VARCHAR(50) NOT NULL,
  metric_name VARCHAR(100) NOT NULL,
  metric_value NUMERIC NOT NULL,
  dimensions JSONB DEFAULT '{}',

  PRIMARY KEY (id, metric_date),
  UNIQUE (metric_date, lifecycle_stage, metric_name, dimensions)
) PARTITION BY RANGE (metric_date);

CREATE INDEX idx_metrics_date_stage ON metrics_daily(metric_date DESC, lifecycle_stage);
CREATE INDEX idx_metrics_name ON metrics_daily(metric_name, metric_date DESC);
