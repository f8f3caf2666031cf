"""A timer cycle on the process's start event: a recurring campaign
(docs/workflows.md, "Recurring campaigns"), checked when the workflow is saved.

Every execution belongs to a user, so a cycle cannot start an execution of
its own: each cycle starts one per member of a segment, which the start event
names with a Camunda Modeler extension property,
`<zeebe:properties><zeebe:property name="segment" value="SEGMENT_ID"/></zeebe:properties>`.
The cycle must be a literal: the schedule is computed when the workflow is
activated, outside any execution whose variables an expression could read.
StartExecution on such a workflow starts the user's execution at once, as a
message start event's does (the interpreter arms no timer for it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from xml.etree.ElementTree import Element as XmlElement

from services.workflows.bpmn_tasks import ZEEBE, extension
from services.workflows.graph import Definition, Node

SEGMENT_PROPERTY = "segment"
HOW = (
    'name its segment with <zeebe:property name="segment" value="SEGMENT_ID"/>'
    " in the start event's zeebe:properties"
)


@dataclass(frozen=True)
class CampaignSpec:
    """What a version's cycle start event asks: when, and for whom."""

    cycle: str
    segment_id: uuid.UUID


def read_segment(element: XmlElement) -> str | None:
    """The value of the start event's `segment` extension property, if it has one."""
    for found in extension(element, ZEEBE, "property"):
        if found.get("name") == SEGMENT_PROPERTY:
            return (found.get("value") or "").strip()
    return None


def campaign_problems(start: Node) -> list[str]:
    """What is wrong with the process's start event as a campaign's (nothing
    when it has no timer cycle)."""
    if start.timer is None or start.timer.kind != "cycle":
        return []
    problems = []
    if start.timer.value.startswith("="):
        problems.append(
            "a timer cycle on the process's start event must be a literal, not an expression"
        )
    if start.segment is None:
        problems.append(f"a timer cycle start event starts a recurring campaign: {HOW}")
    elif _uuid(start.segment) is None:
        problems.append(
            f"the segment property must be a segment id (a UUID), not {start.segment!r}"
        )
    return problems


def campaign_of(definition: Definition) -> CampaignSpec | None:
    """The campaign a saved version's start event asks for; None for any other start."""
    start = definition.nodes[definition.start]
    if start.timer is None or start.timer.kind != "cycle" or start.segment is None:
        return None
    segment_id = _uuid(start.segment)
    return None if segment_id is None else CampaignSpec(start.timer.value, segment_id)


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
