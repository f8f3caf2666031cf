"""The task part of the BPMN parser (bpmn.py): what each kind of task needs and
takes, read from the Zeebe (and Camunda 7) extensions, and checked when the
workflow is saved.

- `task` and `manualTask` pass through (no job, as in Zeebe).
- `serviceTask`, `sendTask` and `businessRuleTask` are jobs
  (`zeebe:taskDefinition`); a business rule task calling a DMN decision
  (`zeebe:calledDecision`) is refused.
- `scriptTask` is a job too with a `zeebe:taskDefinition`, or evaluates
  `zeebe:script expression` into `resultVariable` in the engine.
- Message intermediate throw and end events are jobs as in Zeebe, like a send
  task (`zeebe:taskDefinition`, headers, inputs; refused without a type).
- `zeebe:ioMapping`: inputs are local variables of the element (seen by its
  job, its built-in task and its output mappings, never by the process);
  outputs are set in the process when it completes.
- The built-in tasks take each parameter from an input or a header, the input
  winning: static values are checked here, the others when they run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from xml.etree.ElementTree import Element as XmlElement

from runtime.stages import STAGES
from services.workflows.cel_rules import with_article
from services.workflows.domain import (
    BUILTIN_PREFIX,
    BUILTIN_TYPES,
    EMIT_EVENT,
    PUBLISH_MESSAGE,
    SET_STAGE,
    UPDATE_ATTRIBUTES,
    event_name_problem,
)
from services.workflows.expressions import (
    RESERVED_NAMES,
    ExpressionError,
    Scope,
    WorkBudget,
    compile_expression,
    evaluate,
    plain,
)
from services.workflows.graph import Script, Task
from services.workflows.publish_rules import RULES, VARIABLES, problem_of

BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
ZEEBE = "http://camunda.org/schema/zeebe/1.0"
CAMUNDA = "http://camunda.org/schema/1.0/bpmn"
DEFAULT_RETRIES = 3

# Tasks done by a job (a worker, or the engine for built-in types).
JOB_TASKS = frozenset({"serviceTask", "sendTask", "businessRuleTask"})
# Tasks a token passes straight through.
PASSING_TASKS = frozenset({"task", "manualTask"})
TASKS = frozenset({*JOB_TASKS, *PASSING_TASKS, "scriptTask"})
# Events that are jobs when they throw a message (Zeebe's message throw and end events).
JOB_EVENTS = frozenset({"intermediateThrowEvent", "endEvent"})
# Elements that take input mappings (their local variables), as job events do;
# a sub-process's are seen by everything inside it.
TAKES_INPUTS = frozenset(
    {*TASKS, "userTask", "receiveTask", "subProcess", "callActivity", "intermediateCatchEvent"}
)
# A mark for an input whose value is known only when the element runs.
DYNAMIC = object()


def local_name(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        return namespace, name
    return "", tag


def extension(element: XmlElement, namespace: str, tag: str) -> Iterator[XmlElement]:
    for child in element:
        if local_name(child.tag) == (BPMN, "extensionElements"):
            yield from child.iter(f"{{{namespace}}}{tag}")


def static_value(source: str) -> Any:
    """The value of an expression that reads nothing (`="Activation"`), else DYNAMIC."""
    try:
        expression = compile_expression(source)
        if expression.names:
            return DYNAMIC
        return plain(evaluate(expression, Scope({}, WorkBudget())))
    except ExpressionError:
        return DYNAMIC  # reported with the other expressions of the element


class TaskParser:
    """Reads tasks' extensions; the builder (bpmn._Builder) collects the
    problems and the expressions to compile."""

    problems: list[Any]
    expressions: list[tuple[str, str]]

    def problem(self, element_id: str, message: str) -> None:
        raise NotImplementedError

    def task_fields(
        self, element: XmlElement, name: str, element_id: str, event: str | None = None
    ) -> dict[str, Any]:
        """The node fields of a task or a message throw event: its job (`task`)
        or script, and its inputs."""
        job_event = event == "message" and name in JOB_EVENTS
        inputs = self._mappings(element, element_id, "input", name in TAKES_INPUTS or job_event)
        fields: dict[str, Any] = {"inputs": inputs}
        if job_event:
            fields["task"] = self._task(element, name, element_id, inputs)
        if name not in TASKS:
            return fields
        definitions = list(extension(element, ZEEBE, "taskDefinition"))
        scripts = list(extension(element, ZEEBE, "script"))
        decisions = list(extension(element, ZEEBE, "calledDecision"))
        if name == "businessRuleTask" and decisions:
            self.problem(
                element_id,
                "businessRuleTask with zeebe:calledDecision (a DMN decision) is not"
                " supported; give it a zeebe:taskDefinition for a job worker instead",
            )
            return fields
        if name == "scriptTask":
            if definitions and scripts:
                self.problem(
                    element_id, "a script task takes zeebe:script or zeebe:taskDefinition, not both"
                )
            elif scripts:
                fields["script"] = self._script(scripts[0], element_id)
                return fields
            elif not definitions:
                self.problem(
                    element_id,
                    "scriptTask is not supported without zeebe:script (expression and"
                    " resultVariable) or zeebe:taskDefinition",
                )
                return fields
        if name in PASSING_TASKS:
            return fields
        fields["task"] = self._task(element, name, element_id, fields["inputs"])
        return fields

    def _script(self, script: XmlElement, element_id: str) -> Script | None:
        expression = (script.get("expression") or "").strip()
        result = (script.get("resultVariable") or "").strip()
        if not expression:
            self.problem(element_id, "zeebe:script needs an expression")
        if not result.isidentifier() or result in RESERVED_NAMES:
            self.problem(
                element_id,
                f"zeebe:script resultVariable {result!r} is not a usable variable name",
            )
        if not expression or not result.isidentifier() or result in RESERVED_NAMES:
            return None
        self.expressions.append((element_id, expression))
        return Script(expression, result)

    def _task(
        self, element: XmlElement, name: str, element_id: str, inputs: list[tuple[str, str]]
    ) -> Task | None:
        task_type, retries = None, str(DEFAULT_RETRIES)
        for definition in extension(element, ZEEBE, "taskDefinition"):
            task_type = definition.get("type")
            retries = definition.get("retries") or retries
        if task_type is None and element.get(f"{{{CAMUNDA}}}type") == "external":
            task_type = element.get(f"{{{CAMUNDA}}}topic")
        headers = {
            header.get("key", ""): header.get("value", "")
            for header in extension(element, ZEEBE, "header")
        }
        task_type = (task_type or "").strip()
        if not task_type:
            kind = {
                "serviceTask": "a service task",
                "sendTask": "a send task",
                "businessRuleTask": "a business rule task",
                "scriptTask": "a script task",
                "intermediateThrowEvent": "a message intermediate throw event",
                "endEvent": "a message end event",
            }[name]
            self.problem(element_id, f"{kind} needs a type (zeebe:taskDefinition)")
            return None
        if not retries.isdigit() or not 1 <= int(retries) <= 100:
            self.problem(element_id, "retries must be a number from 1 to 100")
            retries = str(DEFAULT_RETRIES)
        self._check_builtin(task_type, headers, dict(inputs), element_id)
        return Task(task_type, int(retries), headers)

    def _check_builtin(
        self, task_type: str, headers: dict[str, str], inputs: dict[str, str], element_id: str
    ) -> None:
        if not task_type.startswith(BUILTIN_PREFIX):
            return
        if task_type not in BUILTIN_TYPES:
            known = ", ".join(sorted(BUILTIN_TYPES))
            self.problem(element_id, f"unknown built-in task type {task_type!r} ({known})")
        elif task_type == SET_STAGE:
            self._check_stage(headers, inputs, element_id)
        elif task_type == UPDATE_ATTRIBUTES:
            self._map_parameter(headers, inputs, "attributes", element_id, required=True)
        elif task_type == EMIT_EVENT:
            self._check_event(headers, inputs, element_id)
            self._map_parameter(headers, inputs, "data", element_id, required=False)
        elif task_type == PUBLISH_MESSAGE:
            self._check_publish(headers, inputs, element_id)
            self._map_parameter(headers, inputs, VARIABLES, element_id, required=False)

    def _check_stage(
        self, headers: dict[str, str], inputs: dict[str, str], element_id: str
    ) -> None:
        stages = ", ".join(STAGES)
        if "stage" in inputs:
            value = static_value(inputs["stage"])
            if value is not DYNAMIC and value not in STAGES:
                self.problem(element_id, f"input 'stage' gives {value!r}: must be one of {stages}")
        elif "stage" in headers:
            if headers["stage"] not in STAGES:
                self.problem(element_id, f"header 'stage' must be one of {stages}")
        else:
            self.problem(
                element_id,
                f"header 'stage' must be one of {stages}, or an input mapping must"
                " have the target 'stage'",
            )

    def _check_event(
        self, headers: dict[str, str], inputs: dict[str, str], element_id: str
    ) -> None:
        if "event" in inputs:
            value = static_value(inputs["event"])
            if value is not DYNAMIC and (problem := event_name_problem(value)):
                self.problem(element_id, f"input 'event' {problem}")
        elif problem := event_name_problem(headers.get("event", "")):
            self.problem(element_id, f"header 'event' {problem}")

    def _check_publish(
        self, headers: dict[str, str], inputs: dict[str, str], element_id: str
    ) -> None:
        """lifecycle.publish_message's static parameters (publish_rules.py)."""
        for key in RULES:
            if key in inputs:
                value = static_value(inputs[key])
                problem = None if value is DYNAMIC else problem_of(key, value)
                where = f"input {key!r}"
            elif key in headers:
                problem, where = problem_of(key, headers[key]), f"header {key!r}"
            else:
                problem, where = problem_of(key, None), f"header {key!r} (or an input {key!r})"
            if problem is not None:
                self.problem(element_id, f"{where} {problem}")

    def _map_parameter(
        self,
        headers: dict[str, str],
        inputs: dict[str, str],
        key: str,
        element_id: str,
        *,
        required: bool,
    ) -> None:
        if key in headers:
            self.expressions.append((element_id, headers[key]))
        if key in inputs:
            value = static_value(inputs[key])
            if value is not DYNAMIC and not isinstance(value, dict):
                self.problem(element_id, f"input {key!r} must give a map")
        elif key not in headers and required:
            self.problem(element_id, f"header {key!r} is required (or an input {key!r})")

    def outputs(self, element: XmlElement, element_id: str) -> list[tuple[str, str]]:
        return self._mappings(element, element_id, "output", True)

    def _mappings(
        self, element: XmlElement, element_id: str, kind: str, allowed: bool
    ) -> list[tuple[str, str]]:
        found = list(extension(element, ZEEBE, kind))
        if found and not allowed:
            name = local_name(element.tag)[1]
            self.problem(element_id, f"{kind} mappings on {with_article(name)} are not supported")
            return []
        mappings = []
        for mapping in found:
            target, source = mapping.get("target", ""), mapping.get("source", "")
            if not target.isidentifier() or target in RESERVED_NAMES:
                self.problem(element_id, f"{kind} target {target!r} is not a usable variable name")
                continue
            self.expressions.append((element_id, source))
            mappings.append((target, source))
        return mappings
