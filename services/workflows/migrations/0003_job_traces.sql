-- The trace of the step that created a job (W3C traceparent): the worker's
-- calls for the job (a built-in task's TransitionStage, say) join that trace.
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
