"""The multi-instance marker, read when a workflow is saved (bpmn.py calls
`read_marker` for every flow node): `bpmn:multiInstanceLoopCharacteristics`
(`isSequential`) with Zeebe's `zeebe:loopCharacteristics` (`inputCollection`,
`inputElement`, `outputCollection`, `outputElement`) and
`bpmn:completionCondition`, on tasks, user tasks, sub-processes and call
activities. Loop markers (`standardLoopCharacteristics`) and a
`loopCardinality` are refused, as Zeebe refuses them."""

from __future__ import annotations

from collections.abc import Callable
from xml.etree.ElementTree import Element as XmlElement

from services.workflows.bpmn_tasks import BPMN, DYNAMIC, TASKS, ZEEBE, local_name, static_value
from services.workflows.cel_rules import with_article
from services.workflows.expressions import RESERVED_NAMES
from services.workflows.multi_spec import LOOP_COUNTER, MAX_INSTANCES, MultiInstance

# What may carry a multi-instance marker.
MULTI_HOSTS = frozenset({*TASKS, "userTask", "subProcess", "callActivity"})

Report = Callable[[str, str], None]


def read_marker(
    element: XmlElement,
    name: str,
    element_id: str,
    problem: Report,
    expressions: list[tuple[str, str]],
) -> MultiInstance | None:
    """The element's multi-instance marker, None without one; problems reported."""
    markers = [c for c in element if local_name(c.tag)[0] == BPMN]
    loops = [c for c in markers if local_name(c.tag)[1].endswith("LoopCharacteristics")]
    if not loops:
        return None
    marker = loops[0]
    if local_name(marker.tag)[1] != "multiInstanceLoopCharacteristics":
        problem(element_id, "loop markers (standardLoopCharacteristics) are not supported")
        return None
    if name not in MULTI_HOSTS:
        problem(element_id, f"a multi-instance marker on {with_article(name)} is not supported")
        return None
    characteristics = [c for c in marker.iter(f"{{{ZEEBE}}}loopCharacteristics")]
    completion = None
    for child in marker:
        namespace, tag = local_name(child.tag)
        if namespace == BPMN and tag == "completionCondition":
            completion = (child.text or "").strip() or None
        elif namespace == BPMN and tag == "loopCardinality":
            problem(element_id, "a loopCardinality is not supported: use an inputCollection")
    if len(characteristics) != 1:
        problem(
            element_id,
            "a multi-instance marker needs zeebe:loopCharacteristics with an inputCollection",
        )
        return None
    read = characteristics[0].get
    collection = (read("inputCollection") or "").strip()
    if not collection:
        problem(element_id, "a multi-instance marker needs an inputCollection")
        return None
    spec = MultiInstance(
        sequential=marker.get("isSequential") == "true",
        input_collection=collection,
        input_element=(read("inputElement") or "").strip() or None,
        output_collection=(read("outputCollection") or "").strip() or None,
        output_element=(read("outputElement") or "").strip() or None,
        completion_condition=completion,
    )
    _check(spec, element_id, problem, expressions)
    return spec


def _check(
    spec: MultiInstance, element_id: str, problem: Report, expressions: list[tuple[str, str]]
) -> None:
    for attribute, variable in (
        ("inputElement", spec.input_element),
        ("outputCollection", spec.output_collection),
    ):
        if variable is None:
            continue
        if not variable.isidentifier() or variable in RESERVED_NAMES or variable == LOOP_COUNTER:
            problem(
                element_id,
                f"{attribute} {variable!r} must be a variable name (not {LOOP_COUNTER},"
                f" {', '.join(sorted(RESERVED_NAMES))})",
            )
    if (spec.output_collection is None) != (spec.output_element is None):
        problem(element_id, "outputCollection and outputElement go together")
    for source in (spec.input_collection, spec.output_element, spec.completion_condition):
        if source is not None:
            expressions.append((element_id, source))
    value = static_value(spec.input_collection)
    if value is DYNAMIC:
        return
    if not isinstance(value, list):
        problem(element_id, f"the inputCollection must give a list, not {value!r}"[:300])
    elif len(value) > MAX_INSTANCES:
        problem(
            element_id,
            f"the inputCollection has {len(value):,} elements, more than the limit of"
            f" {MAX_INSTANCES:,} instances",
        )
