"""The users service's tests. Most call the session's users service (the
`users` stub of tests/conftest.py); those that change its settings start one
of their own. Every module here carries the `users` marker, with which CI runs
them again against the machine's PostgreSQL (`-m 'schema or users'`, .ci/run)."""
