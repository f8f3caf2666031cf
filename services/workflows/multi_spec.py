"""Multi-instance markers as the graph keeps them (graph.py): what
`bpmn:multiInstanceLoopCharacteristics` with `zeebe:loopCharacteristics` says
(bpmn_markers.py reads it when a workflow is saved), and its expressions
compiled for the interpreter (interpreter_multi.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.workflows.expressions import Expression, load_expression

if TYPE_CHECKING:
    from services.workflows.graph import Definition

# Instances one multi-instance activity may have: a larger collection is an
# incident on the activity (and a static one is refused when saved).
MAX_INSTANCES = 10_000
# The local variable of each instance counting them from 1, as in Zeebe.
LOOP_COUNTER = "loopCounter"


@dataclass(frozen=True)
class MultiInstance:
    sequential: bool
    # CEL giving the list (a leading '=' allowed, as Zeebe writes it).
    input_collection: str
    # The local variable of each instance holding its element, if any.
    input_element: str | None = None
    # The variable collecting each instance's output element, in input order.
    output_collection: str | None = None
    # CEL evaluated when an instance completes, in the instance's scope.
    output_element: str | None = None
    # CEL evaluated after each instance completes: true cancels the others.
    completion_condition: str | None = None

    @property
    def output_variable(self) -> str | None:
        """The output element when it names a variable (`=result`): a local
        variable of each instance (null at first), so that what a job gives back
        under that name stays in its instance, as Zeebe does."""
        source = (self.output_element or "").strip().removeprefix("=").strip()
        if source.isidentifier() and source not in (self.input_element, LOOP_COUNTER):
            return source
        return None


@dataclass(frozen=True)
class CompiledMulti:
    collection: Expression
    output: Expression | None
    completion: Expression | None

    def expressions(self) -> list[Expression]:
        return [e for e in (self.collection, self.output, self.completion) if e is not None]


def compile_multi(definition: Definition) -> dict[str, CompiledMulti]:
    compiled = {}
    for node in definition.nodes.values():
        spec = node.multi
        if spec is None:
            continue
        compiled[node.id] = CompiledMulti(
            load_expression(spec.input_collection),
            load_expression(spec.output_element) if spec.output_element else None,
            load_expression(spec.completion_condition) if spec.completion_condition else None,
        )
    return compiled
