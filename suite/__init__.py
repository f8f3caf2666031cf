"""The suite as a whole: the registry of services, the embedded database, the
`lifecycle` command and the process supervisor behind `lifecycle up`."""
