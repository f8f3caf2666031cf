"""The process graph: what a validated BPMN process is made of (elements,
flows, timers, tasks), stored as JSON beside the XML of its version, and the
graph the interpreter runs, its expressions compiled. bpmn.py builds it from
XML; the stepper loads it from a stored version, as it was saved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from services.workflows.domain import MAP_PARAMETERS
from services.workflows.expressions import Expression, load_expression
from services.workflows.multi_spec import CompiledMulti, MultiInstance, compile_multi
from services.workflows.user_task_rules import UserTaskSpec


@dataclass(frozen=True)
class Timer:
    kind: str  # duration, date or cycle
    value: str  # an ISO-8601 literal, or a CEL expression after '='


@dataclass(frozen=True)
class Task:
    type: str
    retries: int
    headers: dict[str, str]


@dataclass(frozen=True)
class Script:
    """A script task done by the engine: a CEL expression whose value is the result."""

    expression: str
    result: str


@dataclass(frozen=True)
class Node:
    id: str
    type: str
    scope: str | None
    incoming: list[str] = field(default_factory=list)
    outgoing: list[str] = field(default_factory=list)
    event: str | None = None
    default: str | None = None
    timer: Timer | None = None
    message: str | None = None
    task: Task | None = None
    attached_to: str | None = None
    interrupting: bool = True
    boundaries: list[str] = field(default_factory=list)
    start: str | None = None
    called: str | None = None
    error_code: str | None = None
    # Zeebe output mappings: (variable, CEL expression) set when the element completes.
    outputs: list[tuple[str, str]] = field(default_factory=list)
    # Zeebe input mappings: local variables of the element, set when it is activated.
    inputs: list[tuple[str, str]] = field(default_factory=list)
    script: Script | None = None
    # A user task's assignment and schedule (user_task_rules.py).
    user_task: UserTaskSpec | None = None
    # Signal, escalation and link events (bpmn_events.py): the signal's name
    # (static or '=expr'), the escalation code (None: a catch-all boundary),
    # the link's name.
    signal: str | None = None
    escalation_code: str | None = None
    link: str | None = None
    # zeebe:subscription correlationKey ('=expr'); None: the user id.
    correlation_key: str | None = None
    # A call activity naming the BPMN process id rather than the workflow id,
    # whether all the child's variables reach the parent, and whether all the
    # parent's reach the child (else only the call activity's inputs).
    called_process: str | None = None
    propagate_all: bool = True
    propagate_parent: bool = True
    # A multi-instance marker (multi_spec.py, interpreter_multi.py).
    multi: MultiInstance | None = None
    # An event sub-process (triggeredByEvent; bpmn_esp.py, interpreter_esp.py).
    triggered: bool = False
    # The segment a timer cycle start event names: the workflow is a recurring
    # campaign (bpmn_campaigns.py, campaigns.py).
    segment: str | None = None
    # Compensation (bpmn_compensation.py, interpreter_compensation.py): a
    # compensation boundary event's handler, a compensation throw or end
    # event's activityRef (None: every activity), and a handler's marker.
    handler: str | None = None
    activity_ref: str | None = None
    for_compensation: bool = False


@dataclass(frozen=True)
class Flow:
    id: str
    source: str
    target: str
    condition: str | None = None


@dataclass(frozen=True)
class Definition:
    """A validated process, stored as JSON beside the XML of its version."""

    process_id: str
    start: str
    nodes: dict[str, Node]
    flows: dict[str, Flow]

    @property
    def start_message(self) -> str | None:
        node = self.nodes[self.start]
        return node.message if node.event == "message" else None

    @property
    def start_signal(self) -> str | None:
        node = self.nodes[self.start]
        return node.signal if node.event == "signal" else None

    def to_json(self) -> dict[str, Any]:
        return {
            "process_id": self.process_id,
            "start": self.start,
            # Read by the database (workflow_versions.start_signal).
            "start_signal": self.start_signal,
            "nodes": [asdict(node) for node in self.nodes.values()],
            "flows": [asdict(flow) for flow in self.flows.values()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Definition:
        nodes = {}
        for raw in data["nodes"]:
            item = dict(raw)
            item["timer"] = Timer(**item["timer"]) if item["timer"] else None
            item["task"] = Task(**item["task"]) if item["task"] else None
            item["outputs"] = [tuple(pair) for pair in item["outputs"]]
            # Versions saved before inputs and scripts have neither.
            item["inputs"] = [tuple(pair) for pair in item.get("inputs", [])]
            item["script"] = Script(**item["script"]) if item.get("script") else None
            # Versions saved before user tasks have none.
            user_task = item.get("user_task")
            item["user_task"] = UserTaskSpec(**user_task) if user_task else None
            # Versions saved before multi-instance markers have none.
            item["multi"] = MultiInstance(**item["multi"]) if item.get("multi") else None
            nodes[item["id"]] = Node(**item)
        flows = {raw["id"]: Flow(**raw) for raw in data["flows"]}
        return cls(data["process_id"], data["start"], nodes, flows)


@dataclass(frozen=True)
class CompiledTimer:
    kind: str
    literal: str | None
    expression: Expression | None


@dataclass
class Graph:
    """A definition ready to run: its expressions compiled."""

    definition: Definition
    conditions: dict[str, Expression]
    timers: dict[str, CompiledTimer]
    header_expressions: dict[tuple[str, str], Expression]
    outputs: dict[str, list[tuple[str, Expression]]]
    inputs: dict[str, list[tuple[str, Expression]]] = field(default_factory=dict)
    scripts: dict[str, Expression] = field(default_factory=dict)
    # A user task's attribute expressions, by (element, field).
    user_tasks: dict[tuple[str, str], Expression] = field(default_factory=dict)
    # Multi-instance markers' expressions, by element.
    multi: dict[str, CompiledMulti] = field(default_factory=dict)
    # Whether a scope has local variables the elements inside it see (a
    # multi-instance instance's, a sub-process's inputs).
    scoped_locals: bool = False

    @property
    def nodes(self) -> dict[str, Node]:
        return self.definition.nodes

    @property
    def flows(self) -> dict[str, Flow]:
        return self.definition.flows

    @property
    def needs_user(self) -> bool:
        """Whether an expression reads the user's profile (fetched before each step)."""
        return any(e.uses_user for e in self.expressions())

    def expressions(self) -> list[Expression]:
        timers = [t.expression for t in self.timers.values() if t.expression]
        outputs = [e for pairs in self.outputs.values() for _, e in pairs]
        inputs = [e for pairs in self.inputs.values() for _, e in pairs]
        return [
            *self.conditions.values(),
            *timers,
            *self.header_expressions.values(),
            *outputs,
            *inputs,
            *self.scripts.values(),
            *self.user_tasks.values(),
            *(e for spec in self.multi.values() for e in spec.expressions()),
        ]


def compile_graph(definition: Definition) -> Graph:
    conditions = {
        flow.id: load_expression(flow.condition)
        for flow in definition.flows.values()
        if flow.condition
    }
    timers = {}
    headers: dict[tuple[str, str], Expression] = {}
    for node in definition.nodes.values():
        if node.timer is not None:
            expression = (
                load_expression(node.timer.value) if node.timer.value.startswith("=") else None
            )
            literal = None if expression else node.timer.value
            timers[node.id] = CompiledTimer(node.timer.kind, literal, expression)
        if node.task is not None:
            for key in MAP_PARAMETERS.get(node.task.type, ()):
                if key in node.task.headers:
                    headers[(node.id, key)] = load_expression(node.task.headers[key])
    outputs = {
        node.id: [(target, load_expression(source)) for target, source in node.outputs]
        for node in definition.nodes.values()
        if node.outputs
    }
    inputs = {
        node.id: [(target, load_expression(source)) for target, source in node.inputs]
        for node in definition.nodes.values()
        if node.inputs
    }
    scripts = {
        node.id: load_expression(node.script.expression)
        for node in definition.nodes.values()
        if node.script is not None
    }
    user_tasks = {
        (node.id, name): load_expression(value)
        for node in definition.nodes.values()
        if node.user_task is not None
        for name, value in asdict(node.user_task).items()
        if isinstance(value, str) and value.startswith("=")
    }
    graph = Graph(definition, conditions, timers, headers, outputs, inputs, scripts, user_tasks)
    graph.multi = compile_multi(definition)
    graph.scoped_locals = bool(graph.multi) or any(
        definition.nodes[element].type == "subProcess" for element in inputs
    )
    return graph
