-- The local variables of an element while it waits (docs/workflows.md): what
-- its input mappings gave when it was activated. Its job sees them beside the
-- execution's variables, its output mappings read them; they go with the token.
ALTER TABLE execution_tokens ADD COLUMN variables JSONB;
