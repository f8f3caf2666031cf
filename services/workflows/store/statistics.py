"""Per-element counts of one workflow version, for the console's heatmap: one
set-based statement over the version's executions, never a load of them."""

from __future__ import annotations

import uuid
from typing import NamedTuple

from runtime.database import Executor


class ElementCounts(NamedTuple):
    element_id: str
    # Executions with a token at the element now (an execution with two tokens there counts once).
    active: int
    # Its `completed` history rows.
    completed: int
    # Its incidents not resolved yet.
    incidents: int


# Each count is grouped on its own table before the join, so that no row of
# one multiplies the rows of another.
_STATISTICS = """
WITH version_executions AS (
  SELECT id FROM workflow_executions WHERE workflow_id = $1 AND workflow_version = $2
), active AS (
  SELECT t.element_id, count(DISTINCT t.execution_id) AS n
  FROM execution_tokens t JOIN version_executions e ON e.id = t.execution_id
  GROUP BY t.element_id
), completed AS (
  SELECT h.element_id, count(*) AS n
  FROM execution_history h JOIN version_executions e ON e.id = h.execution_id
  WHERE h.state = 'completed'
  GROUP BY h.element_id
), open_incidents AS (
  SELECT i.element_id, count(*) AS n
  FROM incidents i JOIN version_executions e ON e.id = i.execution_id
  WHERE i.resolved_at IS NULL
  GROUP BY i.element_id
)
SELECT element_id, coalesce(a.n, 0), coalesce(c.n, 0), coalesce(o.n, 0)
FROM active a
FULL JOIN completed c USING (element_id)
FULL JOIN open_incidents o USING (element_id)
ORDER BY element_id
"""


async def element_counts(
    conn: Executor, workflow_id: uuid.UUID, version: str
) -> list[ElementCounts]:
    """The counts of every element of the version that has any."""
    rows = await conn.fetch(_STATISTICS, workflow_id, version)
    return [ElementCounts(*row) for row in rows]
