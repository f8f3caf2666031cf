"""The truth table of docs/conditions.md, read from the page and checked in both
engines on a real PostgreSQL: what the reference says is what runs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runtime.conditions import MISSING
from runtime.conditions.model import OPERATORS
from tests.segments.engines import (
    CAP,
    StoredUser,
    condition_of,
    insert_users,
    python_verdicts,
    sql_verdicts,
    users_connection,
)
from tests.support import ScratchDatabase

pytestmark = pytest.mark.users

DOC = Path(__file__).parents[2] / "docs" / "conditions.md"
AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
_SAMPLE = re.compile(r"`(.+?)` ([TF])")


@dataclass(frozen=True)
class Case:
    operator: str
    leaf: dict[str, Any]
    value: Any
    expected: bool

    @property
    def document(self) -> dict[str, Any]:
        if self.value is MISSING:
            return {}
        document: Any = self.value
        for key in reversed(self.leaf["attr"].split(".")):
            document = {key: document}
        return dict(document)


def documented_cases() -> list[Case]:
    text = DOC.read_text().split("<!-- truth-table")[1]
    rows = []
    for line in text.splitlines()[1:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    cases = []
    for operator, example, missing, null, *samples in rows[2:]:
        leaf = json.loads(example.strip("`"))
        cases.append(Case(operator, leaf, MISSING, missing == "T"))
        cases.append(Case(operator, leaf, None, null == "T"))
        for cell in samples:
            cases += [
                Case(operator, leaf, json.loads(value), flag == "T")
                for value, flag in _SAMPLE.findall(cell)
            ]
    return cases


CASES = documented_cases()


def test_the_table_covers_every_attribute_operator() -> None:
    documented = {case.leaf["op"] for case in CASES}
    assert documented == {op.name for op in OPERATORS.values() if not op.change}
    assert len(CASES) > 150


async def test_both_engines_give_the_documented_answer(segments_database: ScratchDatabase) -> None:
    async with users_connection(segments_database) as conn:
        ids = await insert_users(conn, [StoredUser(c.document) for c in CASES], AS_OF)
        by_leaf: dict[str, list[int]] = {}
        for index, case in enumerate(CASES):
            by_leaf.setdefault(json.dumps(case.leaf, sort_keys=True), []).append(index)
        wrong = []
        for leaf_json, indexes in by_leaf.items():
            condition = condition_of({"v": 1, **json.loads(leaf_json)})
            chosen = [ids[i] for i in indexes]
            sql = await sql_verdicts(conn, condition, chosen, AS_OF, AS_OF + CAP)
            python = await python_verdicts(conn, condition, chosen, AS_OF, AS_OF + CAP)
            for i in indexes:
                case = CASES[i]
                got = (ids[i] in sql.members, ids[i] in python.members)
                if got != (case.expected, case.expected):
                    wrong.append(f"{case.leaf} on {case.document}: (sql, python) = {got}")
        assert wrong == []
