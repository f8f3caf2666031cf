"""Documents with inclusive gateways and multi-instance markers, written as
Camunda Modeler 5 saves them (zeebe: extensions, modeler attributes, a
diagram), for the tests of the inclusive gateway and multi-instance."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from tests.workflows.bpmn_docs import definitions, flow


def inclusive(id: str, default: str | None = None) -> str:
    attribute = f' default="{default}"' if default else ""
    return f'<bpmn:inclusiveGateway id="{id}" name="{id.title()}"{attribute}/>'


def marker(
    collection: str,
    element: str | None = "item",
    *,
    sequential: bool = False,
    output: tuple[str, str] | None = None,
    completion: str | None = None,
) -> str:
    """A multi-instance marker: `output` is (outputCollection, outputElement)."""
    attributes = f"inputCollection={quoteattr(collection)}"
    if element:
        attributes += f" inputElement={quoteattr(element)}"
    if output:
        attributes += (
            f" outputCollection={quoteattr(output[0])} outputElement={quoteattr(output[1])}"
        )
    condition = (
        '<bpmn:completionCondition xsi:type="bpmn:tFormalExpression"'
        ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"{escape(completion)}</bpmn:completionCondition>"
        if completion
        else ""
    )
    sequential_attribute = ' isSequential="true"' if sequential else ""
    return (
        f"<bpmn:multiInstanceLoopCharacteristics{sequential_attribute}>"
        f"<bpmn:extensionElements><zeebe:loopCharacteristics {attributes}/>"
        f"</bpmn:extensionElements>{condition}</bpmn:multiInstanceLoopCharacteristics>"
    )


def job(id: str, task_type: str, multi: str = "", extra: str = "") -> str:
    return (
        f'<bpmn:serviceTask id="{id}" name="{id.title()}"><bpmn:extensionElements>'
        f'<zeebe:taskDefinition type="{task_type}" retries="1"/>{extra}'
        f"</bpmn:extensionElements>{multi}</bpmn:serviceTask>"
    )


def script(id: str, expression: str, result: str, multi: str = "") -> str:
    return (
        f'<bpmn:scriptTask id="{id}"><bpmn:extensionElements>'
        f"<zeebe:script expression={quoteattr(expression)} resultVariable={quoteattr(result)}/>"
        f"</bpmn:extensionElements>{multi}</bpmn:scriptTask>"
    )


def line(*pairs: tuple[str, str]) -> list[str]:
    """Flows f1, f2, ... between the (source, target) pairs."""
    return [flow(f"f{i}", s, t) for i, (s, t) in enumerate(pairs, 1)]


def around(element: str, element_id: str, *more: str) -> str:
    """start → element → end."""
    return definitions(
        '<bpmn:startEvent id="start"/>',
        element,
        '<bpmn:endEvent id="end"/>',
        *line(("start", element_id), (element_id, "end")),
        *more,
    )


def diamond(
    conditions: dict[str, str | None],
    default: str | None = None,
    join: bool = True,
    task_type: str = "work",
) -> str:
    """start → fork → one job per branch (named by its flow) → join → end;
    conditions by branch (None: the default flow)."""
    parts = ['<bpmn:startEvent id="start"/>', inclusive("fork", default and f"to_{default}")]
    parts.append(flow("f0", "start", "fork"))
    for branch, condition in conditions.items():
        parts.append(job(branch, task_type))
        parts.append(flow(f"to_{branch}", "fork", branch, condition))
        parts.append(flow(f"from_{branch}", branch, "join" if join else "end"))
    if join:
        parts += [inclusive("join"), flow("after", "join", "end")]
    parts.append('<bpmn:endEvent id="end"/>')
    return definitions(*parts)
