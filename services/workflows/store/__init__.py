"""The workflows service's SQL, by aggregate. Every function runs on the
connection it is given, inside the caller's transaction where one is open;
writes of many executions are one statement each (unnest arrays).

definitions  workflows and their versions
locks        the advisory lock per user that orders erases, publishes and steps
executions   execution rows: insert, lock and load, start checks, reads
steps        the batched write of a step's rows (tokens, timers, jobs, ...)
messages     buffered messages and subscriptions
timers       due timers
jobs         jobs: activation, retries, failures
incidents    incidents
campaigns    recurring campaigns' cycles: schedule, cursor, outcome
retention    what `lifecycle maintenance` deletes
statistics   per-element counts of a workflow version (the console's heatmap)
waits        what an execution waits on now, a page at a time (ListExecutionWaits)
"""
