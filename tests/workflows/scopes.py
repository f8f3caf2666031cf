"""Expressions evaluated outside an execution, as the engine would in a step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.workflows.expressions import Scope, WorkBudget


def scope(values: Mapping[str, Any]) -> Scope:
    return Scope(values, WorkBudget())
