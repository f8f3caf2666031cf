"""The inclusive gateway (a mixin of interpreter.Interpreter), as Zeebe 8 runs it.

Fork: every outgoing flow whose condition is true is taken, the default flow
only when none is, and an incident when none is and there is no default.

Join (more than one incoming flow): the gateway waits, per scope, for a token
on each incoming flow that can still receive one. It fires as soon as every
incoming flow has a token, or, once the step has nothing else to do, when no
other token of its scope can still reach an incoming flow without a token
(`join_blocked`, over the graph, no I/O): a branch that ended elsewhere, or
went another way at an exclusive gateway, does not hold it. A gateway with
several incoming and outgoing flows joins, then forks. Tokens waiting at it
on a flow that already has one wait for its next round, as at a parallel join.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from services.workflows.domain import ENDED_STATUSES
from services.workflows.expressions import Expression, ExpressionError, Scope, evaluate_bool
from services.workflows.graph import Graph, Node
from services.workflows.interpreter_tasks import Locals
from services.workflows.state import ExecutionState, Token
from services.workflows.token_index import TokenIndex

INCLUSIVE = "inclusiveGateway"
NO_FLOW_TAKEN = "no condition of an outgoing flow is true and none is default"


def predecessors(graph: Graph, node: Node) -> Iterable[str]:
    """The elements a token can come to `node` from, in its scope."""
    for flow_id in node.incoming:
        yield graph.flows[flow_id].source
    if node.type == "boundaryEvent" and node.attached_to:
        yield node.attached_to  # a token at the host leaves by its boundary event
    link = getattr(node, "link", None)
    if link and node.type == "intermediateCatchEvent":
        for other in graph.nodes.values():  # entered by the link throw events of its name
            if (
                other.type == "intermediateThrowEvent"
                and getattr(other, "link", None) == link
                and other.scope == node.scope
            ):
                yield other.id


def reaching(graph: Graph, join: str, flow_id: str) -> frozenset[str]:
    """The elements from which a token can take `flow_id` into `join` without
    passing through the join itself."""
    source = graph.flows[flow_id].source
    found: set[str] = set()
    queue = deque([source])
    while queue:
        element = queue.popleft()
        if element in found or element == join:
            continue
        found.add(element)
        queue.extend(predecessors(graph, graph.nodes[element]))
    return frozenset(found)


def join_blocked(
    graph: Graph,
    join: str,
    arrived: Iterable[str],
    live: Iterable[str],
    cache: dict[tuple[str, str], frozenset[str]] | None = None,
) -> bool:
    """Whether the join must wait: one of its incoming flows without a token
    (not in `arrived`) can still be taken by a token at one of the `live`
    elements of its scope."""
    cache = {} if cache is None else cache
    node = graph.nodes[join]
    missing = [f for f in node.incoming if f not in set(arrived)]
    if not missing:
        return False
    elements = {e for e in live if e != join}
    for flow_id in missing:
        key = (join, flow_id)
        if key not in cache:
            cache[key] = reaching(graph, join, flow_id)
        if not cache[key].isdisjoint(elements):
            return True
    return False


class GatewaySteps:
    """The interpreter's inclusive gateway steps."""

    graph: Graph
    state: ExecutionState
    _at: int | None
    _reaching: dict[tuple[str, str], frozenset[str]]
    index: TokenIndex

    if TYPE_CHECKING:

        def _context(self, expression: Expression, local: Locals = None) -> Scope: ...
        def _incident(self, token: Token, message: str) -> None: ...
        def _history(self, node: Node, state: str, local: Locals = None) -> None: ...
        def _take(self, flow_id: str, scope: int | None) -> None: ...
        def _remove(self, no: int, *, record: str | None) -> None: ...
        def _drain(self) -> Iterator[None]: ...
        def _new_token(
            self, node: Node, scope: int | None, via: str | None = None, local: Locals = None
        ) -> Token: ...

    def _inclusive(self, node: Node, scope: int | None, via: str | None) -> None:
        if len(node.incoming) > 1 and via is not None:
            # A join: fires at once when every incoming flow has a token, else
            # when the step settles (_settle_joins) and none can come.
            self._new_token(node, scope, via)
            arrived = self._arrivals(node, scope)
            if len(arrived) < len(node.incoming):
                return
            for token in arrived.values():
                self._remove(token.no, record=None)
        self._fork(node, scope)

    def _fork(self, node: Node, scope: int | None) -> None:
        try:
            taken = self._flows_chosen(node, first_only=False)
        except ExpressionError as error:
            # Resolving the incident runs the fork again (a token arriving by no flow).
            self._incident(self._new_token(node, scope), str(error))
            return
        if not taken:
            self._incident(self._new_token(node, scope), NO_FLOW_TAKEN)
            return
        self._history(node, "completed")
        for flow_id in taken:
            self._take(flow_id, scope)

    def _flows_chosen(self, node: Node, *, first_only: bool) -> list[str]:
        """The outgoing flows whose condition holds (for an exclusive gateway, the
        first), or else the default flow, if any; ExpressionError as evaluated."""
        taken = []
        for flow_id in node.outgoing:
            if flow_id == node.default:
                continue
            condition = self.graph.conditions.get(flow_id)
            if condition is None or evaluate_bool(condition, self._context(condition)):
                taken.append(flow_id)
                if first_only:
                    break
        return taken or ([node.default] if node.default is not None else [])

    def _arrivals(self, node: Node, scope: int | None) -> dict[str, Token]:
        """The first token waiting at the join on each incoming flow."""
        first: dict[str, Token] = {}
        waiting = [t for t in self.index.at(node.id) if t.scope == scope and t.via in node.incoming]
        for token in sorted(waiting, key=lambda t: t.no):
            assert token.via is not None
            first.setdefault(token.via, token)
        return first

    def _drain_settled(self) -> Iterator[None]:
        """Runs the queue, then fires the inclusive joins no token can still
        reach, until nothing changes; pauses where _drain does."""
        yield from self._drain()
        while self.state.status not in ENDED_STATUSES and self._settle_joins():
            yield from self._drain()

    def _settle_joins(self) -> bool:
        known = self.graph.__dict__
        if "inclusive_joins" not in known:
            known["inclusive_joins"] = frozenset(
                n.id
                for n in self.graph.nodes.values()
                if n.type == INCLUSIVE and len(n.incoming) > 1
            )
        joins: frozenset[str] = known["inclusive_joins"]
        if not joins:
            return False
        waiting: dict[tuple[str, int | None], None] = {}
        for token in self.index.at_any(joins):
            if token.via in self.graph.nodes[token.element].incoming:
                waiting[(token.element, token.scope)] = None
        cache = getattr(self, "_reaching", None)
        if cache is None:
            cache = {}
            self._reaching = cache
        for element, scope in waiting:
            node = self.graph.nodes[element]
            arrived = self._arrivals(node, scope)
            tokens = self.state.tokens
            live = [tokens[no].element for no in self.index.children(scope)]
            if join_blocked(self.graph, element, arrived, live, cache):
                continue
            for token in arrived.values():
                self._remove(token.no, record=None)
            self._at = scope
            self._fork(node, scope)
            return True
        return False
