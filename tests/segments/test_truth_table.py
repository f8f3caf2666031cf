"""The truth tables of docs/conditions.md, read from the page: the attribute
operators, time in stage and creation time in both engines on a real
PostgreSQL, the event's type and attribute changes (per event, Python only).
What the reference says is what runs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conditions import MISSING, TRIGGER, AttributeChanges, Context, Evaluator
from conditions import parse_condition as parse
from conditions.model import (
    CREATED_AT_OPERATORS,
    EVENT_TYPE_OPERATORS,
    OPERATORS,
    STAGE_AGE_OPERATORS,
)
from conditions.values import parse_timestamp
from tests.segments.engines import (
    CAP,
    StoredUser,
    Transition,
    condition_of,
    insert_users,
    python_verdicts,
    sql_verdicts,
    users_connection,
)
from tests.support import ScratchDatabase

DOC = Path(__file__).parents[2] / "docs" / "conditions.md"
AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
_SAMPLE = re.compile(r"`(.+?)` ([TF])")
_ENTERED = re.compile(r"entered (\S+?)(?:, again (\S+))? ")
STAGE = "Activation"


def documented_table(name: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the table under `<!-- name: ... -->` in the page."""
    text = DOC.read_text().split(f"<!-- {name}:")[1]
    rows = []
    for line in text.splitlines()[1:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows[0], rows[2:]


def _code(cell: str) -> Any:
    return json.loads(cell.strip("`"))


def _moment(text: str) -> datetime:
    moment = parse_timestamp(text)
    assert moment is not None, text
    return moment


@dataclass(frozen=True)
class Case:
    leaf: dict[str, Any]
    user: StoredUser
    expected: bool
    # What the row and column say, for a failure's message.
    shown: str


def _document(leaf: dict[str, Any], value: Any) -> dict[str, Any]:
    if value is MISSING:
        return {}
    document: Any = value
    for key in reversed(leaf["attr"].split(".")):
        document = {key: document}
    return dict(document)


def attribute_cases() -> list[Case]:
    cases = []
    for operator, example, missing, null, *samples in documented_table("truth-table")[1]:
        leaf = _code(example)
        values = [(MISSING, missing), (None, null)]
        values += [(json.loads(v), flag) for cell in samples for v, flag in _SAMPLE.findall(cell)]
        for value, flag in values:
            cases.append(
                Case(leaf, StoredUser(_document(leaf, value)), flag == "T", f"{operator} {value}")
            )
    return cases


def _history(column: str) -> tuple[Transition, ...]:
    found = _ENTERED.match(column)
    if found is None:
        assert column == "no transition recorded", column
        return ()
    entered, again = found.groups()
    history: list[Transition] = [(None, STAGE, _moment(entered))]
    return (*history, (STAGE, STAGE, _moment(again))) if again else tuple(history)


def moment_cases(name: str, user_of: Any) -> list[Case]:
    """The cases of a table whose columns are users and whose rows are leaves."""
    header, rows = documented_table(name)
    users = [user_of(column) for column in header[1:]]
    return [
        Case(_code(example), user, flag == "T", f"{example} for {column}")
        for example, *flags in rows
        for user, column, flag in zip(users, header[1:], flags, strict=True)
    ]


ATTRIBUTE_CASES = attribute_cases()
STAGE_AGE_CASES = moment_cases(
    "stage-age-table", lambda column: StoredUser({}, STAGE, AS_OF, _history(column))
)
CREATED_AT_CASES = moment_cases(
    "created-at-table",
    lambda column: StoredUser({}, STAGE, _moment(column.removeprefix("created "))),
)


def test_the_tables_cover_every_operator() -> None:
    documented = {case.leaf["op"] for case in ATTRIBUTE_CASES}
    assert documented == {op.name for op in OPERATORS.values() if not op.change}
    assert len(ATTRIBUTE_CASES) > 150
    assert {c.leaf["stage_age"]["op"] for c in STAGE_AGE_CASES} == set(STAGE_AGE_OPERATORS)
    assert {c.leaf["created_at"]["op"] for c in CREATED_AT_CASES} == set(CREATED_AT_OPERATORS)


@pytest.mark.users
async def test_both_engines_give_the_documented_answer(segments_database: ScratchDatabase) -> None:
    cases = ATTRIBUTE_CASES + STAGE_AGE_CASES + CREATED_AT_CASES
    async with users_connection(segments_database) as conn:
        ids = await insert_users(conn, [c.user for c in cases], AS_OF)
        by_leaf: dict[str, list[int]] = {}
        for index, case in enumerate(cases):
            by_leaf.setdefault(json.dumps(case.leaf, sort_keys=True), []).append(index)
        wrong = []
        for leaf_json, indexes in by_leaf.items():
            condition = condition_of({"v": 1, **json.loads(leaf_json)})
            chosen = [ids[i] for i in indexes]
            sql = await sql_verdicts(conn, condition, chosen, AS_OF, AS_OF + CAP)
            python = await python_verdicts(conn, condition, chosen, AS_OF, AS_OF + CAP)
            for i in indexes:
                got = (ids[i] in sql.members, ids[i] in python.members)
                if got != (cases[i].expected, cases[i].expected):
                    wrong.append(f"{cases[i].shown}: (sql, python) = {got}")
        assert wrong == []


def test_event_types_as_documented() -> None:
    header, rows = documented_table("event-type-table")
    events = [None if column == "no event" else column.strip("`") for column in header[1:]]
    for example, *flags in rows:
        evaluator = Evaluator(parse({"v": 1, **_code(example)}, "c", TRIGGER))
        got = [evaluator.matches(Context(AS_OF, event_type=event)) for event in events]
        assert got == [flag == "T" for flag in flags], example
    assert {_code(row[0])["event_type"]["op"] for row in rows} == set(EVENT_TYPE_OPERATORS)


def _side(cell: str, path: str) -> dict[str, Any]:
    return {} if cell == "missing" else {path: _code(cell)}


def test_attribute_changes_as_documented() -> None:
    header, rows = documented_table("change-table")
    path = header[0].split("`")[1]
    evaluators = []
    for column in header[1:]:
        op, _, value = column.strip("`").partition(" ")
        leaf = {"attr": path, "op": op, **({"value": json.loads(value)} if value else {})}
        evaluators.append(Evaluator(parse({"v": 1, **leaf}, "c", TRIGGER)))
    assert {e.condition.source_json["op"] for e in evaluators} == {
        op.name for op in OPERATORS.values() if op.change
    }
    for change, *flags in rows:
        context = Context(AS_OF)
        if change != "no change in the context":
            before, after = change.split(" → ")
            changes = AttributeChanges(_side(before, path), _side(after, path))
            context = Context(AS_OF, changes=changes)
        got = [evaluator.matches(context) for evaluator in evaluators]
        assert got == [flag == "T" for flag in flags], change
