"""Fast tests of the use cases' logic, without PostgreSQL nor services."""
