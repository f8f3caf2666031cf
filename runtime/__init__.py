"""The runtime every lifecycle-ops service shares.

config      typed settings from environment variables
database    the asyncpg pool of a service (its own role and schema)
migrations  versioned, locked, idempotent schema migrations per service
partitions  creating time partitions ahead of need
server      the gRPC host: health, reflection, interceptors, graceful shutdown
errors      domain errors and their google.rpc.Status form
telemetry   OpenTelemetry tracing and JSON logs with trace ids
clients     long-lived channels to other services, with deadlines and retries
outbox      reliable calls to other services (transactional outbox and relay)
idempotency request_id replay for creates
pagination  page sizes and opaque page tokens
stages      the five AARRR stages
"""
