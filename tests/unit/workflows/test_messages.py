"""Messages built from kinds and element names read with the right article."""

from __future__ import annotations

import pytest

from services.workflows.bpmn import BpmnError, parse
from services.workflows.cel_rules import with_article
from tests.workflows.bpmn_docs import definitions, end, flow

BAD = definitions(
    "<bpmn:ioSpecification/>",
    '<bpmn:startEvent id="start"><bpmn:errorEventDefinition/></bpmn:startEvent>',
    end(),
    flow("f1", "start", "end"),
)


@pytest.mark.parametrize(
    ("noun", "said"),
    [
        ("int", "an int"),
        ("string", "a string"),
        ("ioSpecification", "an ioSpecification"),
        ("error", "an error"),
        ("Object", "an Object"),
        ("timer", "a timer"),
        ("bytes", "bytes"),
        ("null", "null"),
    ],
)
def test_with_article(noun: str, said: str) -> None:
    assert with_article(noun) == said


def test_bpmn_problems_read_with_the_right_article() -> None:
    with pytest.raises(BpmnError) as raised:
        parse(BAD, 1 << 20)
    problems = [problem.describe() for problem in raised.value.problems]
    assert "an ioSpecification has no id" in problems
    assert "element 'start': an error startEvent is only for event sub-processes" in problems
    assert not any(" a ioSpecification" in p or " a error" in p for p in problems)
