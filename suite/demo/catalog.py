"""The product the demo sets up: its workflows (BPMN), segments and triggers,
created through the services' APIs like any client would."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lifecycle.common.v1 import stage_pb2
from lifecycle.segments.v1 import segments_pb2
from lifecycle.triggers.v1 import triggers_pb2
from lifecycle.workflows.v1 import workflows_pb2
from runtime.structs import dict_to_struct
from suite.demo.clients import Suite

ONCE = triggers_pb2.ReentryPolicy(mode=triggers_pb2.REENTRY_MODE_ONCE_PER_USER)


_DAYS = re.compile(r"<bpmn:timeDuration>P(\d+)D</bpmn:timeDuration>")


def bpmn(name: str, day_seconds: float) -> str:
    """A BPMN file of the demo, its waits of days compressed to the demo's days."""
    document = (resources.files("suite.demo") / f"{name}.bpmn").read_text()
    return _DAYS.sub(
        lambda days: f"<bpmn:timeDuration>PT{int(days[1]) * day_seconds:g}S</bpmn:timeDuration>",
        document,
    )


@dataclass(frozen=True)
class Catalog:
    workflows: dict[str, str]
    segments: dict[str, str]
    triggers: list[str]


async def _workflow(suite: Suite, name: str, document: str, stages: list[int]) -> str:
    created = await suite.workflows.CreateWorkflow(
        workflows_pb2.CreateWorkflowRequest(
            workflow=workflows_pb2.Workflow(
                name=name,
                bpmn_xml=document,
                lifecycle_stages=stages,  # type: ignore[arg-type]
            )
        )
    )
    await suite.workflows.ActivateWorkflow(
        workflows_pb2.ActivateWorkflowRequest(workflow_id=created.workflow.id)
    )
    return str(created.workflow.id)


async def _segment(suite: Suite, name: str, conditions: dict[str, Any], stages: list[int]) -> str:
    created = await suite.segments.CreateSegment(
        segments_pb2.CreateSegmentRequest(
            segment=segments_pb2.Segment(
                name=name,
                conditions=dict_to_struct(conditions),
                lifecycle_stages=stages,  # type: ignore[arg-type]
            )
        )
    )
    return str(created.segment.id)


async def _trigger(
    suite: Suite,
    name: str,
    event_type: str,
    workflow_id: str,
    conditions: dict[str, Any],
    *,
    reentry: triggers_pb2.ReentryPolicy = ONCE,
) -> str:
    created = await suite.triggers.CreateTrigger(
        triggers_pb2.CreateTriggerRequest(
            trigger=triggers_pb2.Trigger(
                name=name,
                event_type=event_type,
                conditions=dict_to_struct(conditions),
                workflow_id=workflow_id,
                reentry=reentry,
            )
        )
    )
    return str(created.trigger.id)


async def set_up(suite: Suite, tag: str, day_seconds: float) -> Catalog:
    """The workflows, segments and triggers of the demo product, named with `tag`."""
    stage = stage_pb2.LifecycleStage
    workflows = {
        "onboarding": await _workflow(
            suite,
            f"Onboarding ({tag})",
            bpmn("onboarding", day_seconds),
            [stage.LIFECYCLE_STAGE_ACQUISITION],
        ),
        "winback": await _workflow(
            suite,
            f"Win-back ({tag})",
            bpmn("winback", day_seconds),
            [stage.LIFECYCLE_STAGE_RETENTION],
        ),
    }
    for target in ("Retention", "Revenue", "Referral"):
        workflows[target] = await _workflow(
            suite,
            f"Advance to {target} ({tag})",
            bpmn("advance", day_seconds).replace("STAGE", target),
            [],
        )
    segments = {
        "power users": await _segment(
            suite,
            f"Power users ({tag})",
            {
                "v": 1,
                "all": [
                    {"attr": "plan", "op": "in", "value": ["pro", "team"]},
                    {"attr": "sessions", "op": "gte", "value": 8},
                ],
            },
            [],
        ),
        "at risk": await _segment(
            suite,
            f"At risk ({tag})",
            {"v": 1, "attr": "last_seen", "op": "not_within_last", "value": "P5D"},
            [stage.LIFECYCLE_STAGE_ACTIVATION, stage.LIFECYCLE_STAGE_RETENTION],
        ),
        # What people did (docs/conditions.md): a person enters as their third
        # login of the week is tracked and leaves as it ages out of the week.
        "engaged this week": await _segment(
            suite,
            f"Engaged this week ({tag})",
            {
                "v": 1,
                "event": {
                    "type": "login",
                    "window": {"last": "P7D"},
                    "count": {"op": "gte", "value": 3},
                },
            },
            [],
        ),
    }
    every_time = triggers_pb2.ReentryPolicy(mode=triggers_pb2.REENTRY_MODE_EVERY_TIME)
    week = triggers_pb2.ReentryPolicy(mode=triggers_pb2.REENTRY_MODE_ONCE_PER_PERIOD)
    week.period.FromNanoseconds(int(7 * day_seconds * 1e9))
    triggers = [
        await _trigger(
            suite, "Onboard new users", "signup", workflows["onboarding"], {}, reentry=every_time
        ),
        await _trigger(
            suite,
            "Regulars are retained",
            "login",
            workflows["Retention"],
            {
                "v": 1,
                "all": [
                    {"stage": {"op": "eq", "value": "Activation"}},
                    {"attr": "sessions", "op": "gte", "value": 5},
                ],
            },
        ),
        await _trigger(
            suite,
            "Buyers bring revenue",
            "purchase",
            workflows["Revenue"],
            {"v": 1, "stage": {"op": "in", "value": ["Activation", "Retention"]}},
        ),
        await _trigger(
            suite,
            "Inviters refer",
            "invite",
            workflows["Referral"],
            {"v": 1, "stage": {"op": "eq", "value": "Revenue"}},
        ),
        await _trigger(
            suite,
            "The engaged are retained",
            "segment.entered",
            workflows["Retention"],
            {
                "v": 1,
                "all": [
                    {
                        "src": "event",
                        "attr": "segment_id",
                        "op": "eq",
                        "value": segments["engaged this week"],
                    },
                    {"stage": {"op": "eq", "value": "Activation"}},
                ],
            },
        ),
        await _trigger(
            suite,
            "Win back users at risk",
            "segment.entered",
            workflows["winback"],
            {
                "v": 1,
                "src": "event",
                "attr": "segment_id",
                "op": "eq",
                "value": segments["at risk"],
            },
            reentry=week,
        ),
    ]
    return Catalog(workflows, segments, triggers)
