"""What the interpreter (interpreter.py) does when a token reaches a user task:
the task's assignment and schedule evaluated (user_task_rules.py), and the row
its record is created from, with the task's variables: its input mappings'
when it has some, else the execution's at that moment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.workflows.expressions import ExpressionError, evaluate, plain
from services.workflows.graph import Node
from services.workflows.state import Token, UserTaskRow
from services.workflows.user_task_rules import DATES, assignment

if TYPE_CHECKING:
    from services.workflows.interpreter import Interpreter


def user_task_row(run: Interpreter, token: Token, node: Node) -> UserTaskRow:
    """The record of the user task `token` reached; ExpressionError names the
    attribute that failed."""
    spec = node.user_task
    assert spec is not None
    local = token.variables

    def value_of(field: str, source: str) -> Any:
        expression = run.graph.user_tasks[(node.id, field)]
        try:
            value = evaluate(expression, run._context(expression, local))
        except ExpressionError as error:
            raise ExpressionError(f"{field.replace('_', ' ')} of {node.id!r}: {error}") from error
        return value if field in DATES else plain(value)

    variables = dict(local) if local is not None else dict(run.state.variables)
    return UserTaskRow(token.no, node.id, assignment(spec, value_of), variables)
