"""A diagram for a BPMN document that has none (or an incomplete one), so that
bpmn-js can draw every workflow: the top-level elements of its process in
columns by their distance from the start, in the order the flows reach them,
boundary events on their hosts, flows as straight or once-bent lines.
Documents that draw every element already are returned untouched."""

from __future__ import annotations

# Only to build and write the diagram; parsing is defusedxml's.
import xml.etree.ElementTree as ET
from collections import defaultdict, deque
from typing import NamedTuple

from defusedxml import ElementTree as SafeTree

BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
BPMNDI = "http://www.omg.org/spec/BPMN/20100524/DI"
DC = "http://www.omg.org/spec/DD/20100524/DC"
DI = "http://www.omg.org/spec/DD/20100524/DI"
for _prefix, _uri in (("bpmn", BPMN), ("bpmndi", BPMNDI), ("dc", DC), ("di", DI)):
    ET.register_namespace(_prefix, _uri)

# Children of a process that are not drawn as shapes of their own here.
_NOT_SHAPES = {
    "sequenceFlow", "laneSet", "textAnnotation", "association", "dataObject",
    "dataObjectReference", "dataStoreReference", "extensionElements", "documentation",
    "ioSpecification", "property",
}  # fmt: skip
COLUMN = 170
ROW = 130
MARGIN = 80


class Box(NamedTuple):
    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> tuple[int, int]:
        return self.x + self.width, self.y + self.height // 2

    @property
    def left(self) -> tuple[int, int]:
        return self.x, self.y + self.height // 2


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _size(kind: str) -> tuple[int, int]:
    if kind.endswith("Event"):
        return 36, 36
    if kind.endswith("Gateway"):
        return 50, 50
    return 100, 80


def _columns(nodes: list[str], flows: list[tuple[str, str, str]]) -> dict[str, int]:
    """Each node's column: its distance (in flows) from the nodes nothing flows into."""
    incoming = {target for _, _, target in flows}
    after = defaultdict(list)
    for _, source, target in flows:
        after[source].append(target)
    column = {node: 0 for node in nodes if node not in incoming}
    queue = deque(column)
    while queue:
        node = queue.popleft()
        for target in after[node]:
            if target not in column:
                column[target] = column[node] + 1
                queue.append(target)
    last = max(column.values(), default=-1)
    # What no path reaches (loops only) goes after the rest, in document order.
    return {node: column.get(node, last + 1) for node in nodes}


def _boxes(process: ET.Element) -> dict[str, Box]:
    kinds = {
        el.get("id", ""): _local(el.tag)
        for el in process
        if _local(el.tag) not in _NOT_SHAPES and el.get("id")
    }
    hosts = {
        el.get("id", ""): el.get("attachedToRef", "")
        for el in process
        if _local(el.tag) == "boundaryEvent"
    }
    nodes = [node for node in kinds if node not in hosts]
    flows = [
        (el.get("id", ""), el.get("sourceRef", ""), el.get("targetRef", ""))
        for el in process
        if _local(el.tag) == "sequenceFlow"
    ]
    # A flow out of a boundary event places its target as if it left the host.
    placed = [(f, hosts.get(s, s), hosts.get(t, t)) for f, s, t in flows]
    columns = _columns(nodes, placed)
    rows: dict[int, int] = defaultdict(int)
    boxes: dict[str, Box] = {}
    for node in sorted(nodes, key=lambda n: columns[n]):
        width, height = _size(kinds[node])
        row = rows[columns[node]]
        rows[columns[node]] += 1
        x = MARGIN + columns[node] * COLUMN + (100 - width) // 2
        y = MARGIN + row * ROW + (80 - height) // 2
        boxes[node] = Box(x, y, width, height)
    on_host: dict[str, int] = defaultdict(int)
    for event, host in hosts.items():
        if host in boxes:
            spot = boxes[host]
            boxes[event] = Box(spot.x + spot.width - 40 - 40 * on_host[host], spot.y + 62, 36, 36)
            on_host[host] += 1
    return boxes


def _waypoints(source: Box, target: Box) -> list[tuple[int, int]]:
    if target.x <= source.x:
        # A loop back runs under both, from the bottom of one to the bottom of the other.
        below = max(source.y + source.height, target.y + target.height) + 25
        out, back = source.x + source.width // 2, target.x + target.width // 2
        return [
            (out, source.y + source.height),
            (out, below),
            (back, below),
            (back, target.y + target.height),
        ]
    start, end = source.right, target.left
    if start[1] == end[1]:
        return [start, end]
    middle = (start[0] + end[0]) // 2
    return [start, (middle, start[1]), (middle, end[1]), end]


def _diagram(process: ET.Element, boxes: dict[str, Box]) -> ET.Element:
    diagram = ET.Element(f"{{{BPMNDI}}}BPMNDiagram", id="console_layout")
    plane = ET.SubElement(
        diagram,
        f"{{{BPMNDI}}}BPMNPlane",
        id="console_layout_plane",
        bpmnElement=process.get("id", ""),
    )
    for node, box in boxes.items():
        shape = ET.SubElement(plane, f"{{{BPMNDI}}}BPMNShape", id=f"{node}_di", bpmnElement=node)
        ET.SubElement(
            shape,
            f"{{{DC}}}Bounds",
            x=str(box.x),
            y=str(box.y),
            width=str(box.width),
            height=str(box.height),
        )
    for flow in process:
        source, target = flow.get("sourceRef", ""), flow.get("targetRef", "")
        if _local(flow.tag) != "sequenceFlow" or source not in boxes or target not in boxes:
            continue
        edge = ET.SubElement(
            plane,
            f"{{{BPMNDI}}}BPMNEdge",
            id=f"{flow.get('id')}_di",
            bpmnElement=flow.get("id", ""),
        )
        for x, y in _waypoints(boxes[source], boxes[target]):
            ET.SubElement(edge, f"{{{DI}}}waypoint", x=str(x), y=str(y))
    return diagram


def drawable(bpmn_xml: str) -> str:
    """The document with a diagram of its process, made here when its own
    does not draw every element; unchanged when it does, or when it is not a
    single process this can lay out (a collaboration of pools)."""
    try:
        root = SafeTree.fromstring(bpmn_xml)
    except SafeTree.ParseError:
        return bpmn_xml
    processes = root.findall(f"{{{BPMN}}}process")
    if len(processes) != 1 or root.find(f"{{{BPMN}}}collaboration") is not None:
        return bpmn_xml
    [process] = processes
    drawn = {shape.get("bpmnElement") for shape in root.iter(f"{{{BPMNDI}}}BPMNShape")}
    boxes = _boxes(process)
    if set(boxes) <= drawn:
        return bpmn_xml
    for old in root.findall(f"{{{BPMNDI}}}BPMNDiagram"):
        root.remove(old)
    root.append(_diagram(process, boxes))
    return ET.tostring(root, encoding="unicode")
