"""The coverage tables of docs/workflows.md hold: every cell marked supported is
a document the service saves, every cell marked not supported one it refuses,
naming the element. Each cell's document is the smallest one that puts the
element (or the event, in its position) in a process as Camunda Modeler does
(coverage_docs.py); test_coverage_runs.py runs them."""

from __future__ import annotations

import pytest

from services.workflows.bpmn import BpmnError, parse
from tests.workflows.coverage_docs import (
    DEFINITIONS,
    ELEMENTS,
    GATEWAYS,
    POSITIONS,
    REFUSED,
    SUPPORTED,
    cells,
    document,
    tables,
)

MAX_BYTES = 1 << 20


def test_the_tables_name_every_element_and_event_the_tests_build() -> None:
    found = tables()
    assert set(found) == {"Events", "Elements"}
    assert {next(iter(r.values())) for r in found["Events"]} == set(DEFINITIONS)
    assert [c for c in next(iter(found["Events"])) if c != "Event"] == list(POSITIONS)
    assert {next(iter(r.values())) for r in found["Elements"]} == set(ELEMENTS) | set(GATEWAYS)
    for row in found["Events"] + found["Elements"]:
        assert set(list(row.values())[1:]) <= {SUPPORTED, REFUSED, ""}, row


@pytest.mark.parametrize(("table", "row", "column", "mark"), cells())
def test_the_engine_saves_what_the_table_marks_supported_and_refuses_the_rest(
    table: str, row: str, column: str, mark: str
) -> None:
    xml = document(table, row, column)
    if mark == SUPPORTED:
        parse(xml, MAX_BYTES)
        return
    with pytest.raises(BpmnError) as refused:
        parse(xml, MAX_BYTES)
    named = [p for p in refused.value.problems if p.element_id in ("ev", "el", "esp", "join")]
    assert named, f"{row} / {column}: refused without naming the element: {refused.value}"
