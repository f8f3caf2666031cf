-- workflows and workflow_executions as in the design, except (docs/schema.md):
--  * workflow_executions.user_id has no foreign key: users live in the users
--    service's schema, and an erase reaches this service through its API;
--  * timestamps NOT NULL, updated_at kept by a trigger.

CREATE TABLE workflows (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  name VARCHAR(255) NOT NULL,
  description TEXT,
  bpmn_xml TEXT NOT NULL,
  version VARCHAR(50) NOT NULL DEFAULT '1.0.0',
  lifecycle_stages VARCHAR(50)[] DEFAULT '{}',
  status VARCHAR(50) NOT NULL DEFAULT 'draft',
  created_by UUID,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),

  CONSTRAINT valid_workflow_status CHECK (
    status IN ('draft', 'active', 'inactive', 'archived')
  )
);

CREATE INDEX idx_workflows_status ON workflows(status);
CREATE INDEX idx_workflows_lifecycle ON workflows USING GIN (lifecycle_stages);

CREATE TRIGGER workflows_touch_updated_at BEFORE UPDATE ON workflows
  FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE workflow_executions (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  workflow_id UUID NOT NULL REFERENCES workflows(id),
  user_id UUID NOT NULL,
  status VARCHAR(50) NOT NULL DEFAULT 'pending',
  variables JSONB DEFAULT '{}',
  current_node_id VARCHAR(255),
  started_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  completed_at TIMESTAMP WITH TIME ZONE,
  error_message TEXT,

  CONSTRAINT valid_execution_status CHECK (
    status IN ('pending', 'running', 'completed', 'failed', 'cancelled')
  )
);

CREATE INDEX idx_executions_workflow ON workflow_executions(workflow_id, started_at DESC);
CREATE INDEX idx_executions_user ON workflow_executions(user_id, started_at DESC);
CREATE INDEX idx_executions_status ON workflow_executions(status, started_at DESC);
