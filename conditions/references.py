"""`in_segment`: a condition may require membership in another segment. The
segments service resolves each reference to the referenced segment's stages
and condition (recursively), refusing cycles, so that both engines evaluate
the definition itself, as of now, rather than a cache of it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace

from conditions.model import AllOf, AnyOf, Condition, Node, Not, SegmentRef


@dataclass(frozen=True)
class SegmentDefinition:
    stages: tuple[str, ...]
    condition: Condition


class ReferenceProblem(Exception):
    """A reference that cannot be resolved; `location` is where it sits."""

    def __init__(self, location: str, message: str) -> None:
        super().__init__(message)
        self.location = location
        self.message = message


def resolve(
    condition: Condition,
    definitions: Mapping[uuid.UUID, SegmentDefinition],
    chain: tuple[uuid.UUID, ...] = (),
) -> Condition:
    """The condition with every in_segment resolved. `chain` holds the segments
    being resolved already (the segment that owns the condition first): meeting
    one again is a cycle."""
    return replace(condition, root=_resolve(condition.root, definitions, chain))


def _resolve(
    node: Node, definitions: Mapping[uuid.UUID, SegmentDefinition], chain: tuple[uuid.UUID, ...]
) -> Node:
    if isinstance(node, AllOf | AnyOf):
        return replace(node, children=tuple(_resolve(c, definitions, chain) for c in node.children))
    if isinstance(node, Not):
        return replace(node, child=_resolve(node.child, definitions, chain))
    if not isinstance(node, SegmentRef):
        return node
    if node.segment_id in chain:
        cycle = " -> ".join(
            str(s) for s in (*chain[chain.index(node.segment_id) :], node.segment_id)
        )
        raise ReferenceProblem(node.location, f"segment references form a cycle: {cycle}")
    definition = definitions.get(node.segment_id)
    if definition is None:
        raise ReferenceProblem(node.location, f"segment {node.segment_id} does not exist")
    try:
        inner = resolve(definition.condition, definitions, (*chain, node.segment_id))
    except ReferenceProblem as problem:
        raise ReferenceProblem(node.location, problem.message) from problem
    return replace(node, stages=definition.stages, condition=inner)


def size(condition: Condition) -> tuple[int, int]:
    """Nodes and depth of the condition, resolved references included."""
    return _size(condition.root)


def _size(node: Node) -> tuple[int, int]:
    children: list[Node] = []
    if isinstance(node, AllOf | AnyOf):
        children = list(node.children)
    elif isinstance(node, Not):
        children = [node.child]
    elif isinstance(node, SegmentRef) and node.condition is not None:
        children = [node.condition.root]
    sizes = [_size(child) for child in children]
    return 1 + sum(n for n, _ in sizes), 1 + max((d for _, d in sizes), default=0)
