"""The condition language shared by segments and triggers (docs/conditions.md).

One versioned JSON language, parsed once (`parse_condition`), then either
evaluated in Python (`Evaluator`, one user or one event at a time) or compiled
to a PostgreSQL WHERE clause (`compile_sql`, all users at once, in the users
service). Both engines give the same answer; tests/segments checks it.
"""

from conditions.evaluate import (
    AttributeChanges,
    Context,
    Evaluator,
    LeafOutcome,
    UserProfile,
)
from conditions.events import EventReads, PersonEvent, event_reads
from conditions.model import AUTHORED, EXPANDED, VERSION, Condition, Dependencies, EventLeaf
from conditions.parse import SEGMENT, SQL, TRIGGER, Scope, parse_condition
from conditions.references import ReferenceProblem, SegmentDefinition, resolve, size
from conditions.sql import STAGE_ENTRY_JOIN, SqlCondition, compile_sql
from conditions.values import MISSING

__all__ = [
    "AUTHORED",
    "EXPANDED",
    "MISSING",
    "SEGMENT",
    "SQL",
    "STAGE_ENTRY_JOIN",
    "TRIGGER",
    "VERSION",
    "AttributeChanges",
    "Condition",
    "Context",
    "Dependencies",
    "Evaluator",
    "EventLeaf",
    "EventReads",
    "LeafOutcome",
    "PersonEvent",
    "ReferenceProblem",
    "Scope",
    "SegmentDefinition",
    "SqlCondition",
    "UserProfile",
    "compile_sql",
    "event_reads",
    "parse_condition",
    "resolve",
    "size",
]
