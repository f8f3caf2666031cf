"""console.layout: a BPMN without a diagram gets one that draws every element
of its process; one that has its own keeps it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from console.layout import BPMN, BPMNDI, DC, DI, drawable
from suite.demo.catalog import bpmn
from tests.console.diagrams import flow_nodes, job_then_message


@pytest.mark.parametrize("name", ["onboarding", "winback", "advance"])
def test_the_demo_workflows_get_a_shape_per_element_and_an_edge_per_flow(name: str) -> None:
    document = bpmn(name, 1.0)
    laid_out = ET.fromstring(drawable(document))
    original = ET.fromstring(document)
    shapes = {
        s.get("bpmnElement"): s.find(f"{{{DC}}}Bounds")
        for s in laid_out.iter(f"{{{BPMNDI}}}BPMNShape")
    }
    assert set(shapes) == flow_nodes(document)
    corners = {(b.get("x"), b.get("y")) for b in shapes.values() if b is not None}
    assert len(corners) == len(shapes), "no two shapes in the same place"
    flows = {f.get("id") for f in original.iter(f"{{{BPMN}}}sequenceFlow")}
    edges = list(laid_out.iter(f"{{{BPMNDI}}}BPMNEdge"))
    assert {e.get("bpmnElement") for e in edges} == flows
    assert all(len(e.findall(f"{{{DI}}}waypoint")) >= 2 for e in edges)
    # The process itself is what it was: same elements, same attributes.
    [before] = original.findall(f"{{{BPMN}}}process")
    [after] = laid_out.findall(f"{{{BPMN}}}process")
    assert ET.tostring(before) == ET.tostring(after)


def test_a_diagram_that_draws_everything_is_kept() -> None:
    document = job_then_message("kept", {})
    assert drawable(document) is document


@pytest.mark.parametrize(
    "document",
    [
        "not xml <",
        f'<definitions xmlns="{BPMN}"><collaboration id="c"/><process id="p">'
        '<startEvent id="s"/></process></definitions>',
    ],
)
def test_what_it_cannot_lay_out_is_left_as_it_is(document: str) -> None:
    assert drawable(document) == document
