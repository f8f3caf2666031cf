"""The runtime every lifecycle-ops service shares: what a service needs to run,
and nothing of any one service's domain.

Hosting a service
server          the gRPC host: start, readiness, graceful stop
admission       whether a server takes new calls, and those it is serving
interceptors    the server interceptor: tracing, deadlines, identity, errors
wire_checks     what every request must hold before a service reads it
errors          domain errors and their google.rpc.Status form
telemetry       OpenTelemetry tracing and JSON logs with trace ids
config          typed settings from environment variables (SettingsReader)
worker          the base of background loops: rounds, wakes, backoff, stop
clock           the services' time (system, or moved by tests)

Security
tls             TLS and mutual TLS on every server and channel, reloaded on rotation
auth            JWT and certificate authentication, a permission per RPC
identity        who is calling, and on whose behalf a service acts
chains          actor chains stored in SQL

Storage
database        the asyncpg pool of a service (its own role) and its unit of work
migrations      versioned, locked, idempotent schema migrations per service
partitions      creating time partitions ahead of need
idempotency     request_id replay for creates
tombstones      erased users, remembered by every service that keeps user data

Calling other services
clients         long-lived channels to other services, with deadlines and retries
deadlines       the deadline left of the call being served, for calls on its behalf
outbox          reliable calls to other services (transactional outbox and relay)
operations      what waits in a service's outbox and queues; its dead letters sent again
lifecycle_events  the lifecycle events and outbox topics services send each other

Batches and fairness
group_commit    concurrent calls written together, set-based
isolation       one item's fault fails that item alone
pacing          long synchronous loops that let the event loop in

Shared vocabulary
pagination      page sizes and opaque page tokens; one List page read
parsing         request fields parsed into named violations
stages          the five AARRR stages
structs         protobuf well-known types to plain values
"""
