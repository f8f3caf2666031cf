"""One statement for many rows: each column's values go as one array parameter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Statement:
    """The parameters of one statement (of data-modifying CTEs, for a step's
    write): each table's rows arrive as arrays, unnested."""

    def __init__(self) -> None:
        self.ctes: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any, sql_type: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{sql_type}"

    def unnest(self, rows: Sequence[Sequence[Any]], types: Sequence[str]) -> str:
        columns = [self.arg([row[i] for row in rows], f"{t}[]") for i, t in enumerate(types)]
        return f"unnest({', '.join(columns)})"

    def add(self, name: str, sql: str) -> None:
        self.ctes.append(f"{name} AS ({sql})")
