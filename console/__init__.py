"""The operations console: a web process that shows the suite through the
services' public gRPC APIs (docs/console.md). No database access."""
