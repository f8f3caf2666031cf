"""CEL expressions and ISO-8601 timer values: compiled and checked once when a
workflow is saved, evaluated at run time. No Python eval anywhere: CEL is
side-effect free, and its parser runs in Rust behind a size limit that keeps
its recursion bounded.

The CEL library cannot be interrupted and holds the GIL while it evaluates, so
an expression is kept from holding the event loop twice: when it is saved,
what it names and what it would cost on small data are checked (cel_rules),
and before each evaluation its cost over the actual values is estimated
(cel_cost): one over the budget is refused, an ExpressionError, not run."""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cel

from runtime.structs import compact_json
from services.workflows import cel_rules
from services.workflows.cel_cost import STEP_BUDGET, estimate
from services.workflows.cel_syntax import MAX_SYNTAX_DEPTH, CelSyntaxError, Expr, depth, parse
from services.workflows.cron import Cron, CronError, looks_like_cron, parse_cron

# Well under the nesting at which the CEL library's evaluator exhausts its stack.
MAX_EXPRESSION_CHARS = 4096
# Lists and maps nested in a variable's value, whether a request or an
# expression gives it (an output mapping can wrap a variable in itself on each
# turn of a loop): well inside the 32 levels protobuf decodes in the messages
# that carry variables back out.
MAX_VALUE_DEPTH = 24
# The work one step of an execution may do, in cel_cost steps: about 100 ms
# (bench/RESULTS.md, expressions). A loop of elements that evaluate nothing
# ends at the engine's MAX_ACTIVATIONS first.
STEP_WORK_BUDGET = 3_000_000
# The work between two pauses of a long step, in which the service answers its
# other calls: about 10 ms.
SLICE_STEPS = 300_000
# What an evaluation costs besides its estimate (reading its names, estimating).
EVALUATION_STEPS = 150
# What converting the variables for the CEL library costs besides their size.
CONVERSION_STEPS = 500
# Bytes of variables (as JSON) the CEL library converts per step.
BYTES_PER_STEP = 1
# Names an expression sees besides the execution's variables; variables may not use them.
RESERVED_NAMES = cel_rules.RESERVED_NAMES


class ExpressionError(Exception):
    """An expression that does not compile, or fails or has the wrong type when evaluated."""


@dataclass(frozen=True)
class Expression:
    source: str
    program: cel.Program
    # None for a tree too deep to analyse, which only a version saved before
    # the limit can have: its evaluations are refused.
    tree: Expr | None
    # The names it reads: only these are converted for the CEL library.
    names: frozenset[str]

    @property
    def uses_user(self) -> bool:
        return "user" in self.names


def strip_marker(text: str) -> str:
    """Zeebe marks expressions with a leading '='; CEL itself does not need it."""
    text = text.strip()
    return text[1:].strip() if text.startswith("=") else text


def compile_expression(text: str) -> Expression:
    """An expression being saved: valid CEL that calls only the functions
    expressions may call and stays within the limits of docs/workflows.md."""
    expression = load_expression(text)
    if expression.tree is None:
        raise ExpressionError(f"nests operators and calls more than {MAX_SYNTAX_DEPTH} levels deep")
    problem = cel_rules.problem(expression.tree)
    if problem is not None:
        raise ExpressionError(problem)
    return expression


def load_expression(text: str) -> Expression:
    """An expression of a stored workflow, compiled again without the checks made
    when it was saved (a version runs as it was saved, whatever the rules now)."""
    source = strip_marker(text)
    if not source:
        raise ExpressionError("is empty")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError) as error:
        raise ExpressionError(f"is not valid CEL: {_first_line(error)}") from error
    try:
        tree = parse(source)
    except CelSyntaxError as error:
        raise ExpressionError(f"is not supported: {error}") from error
    analysable = tree if depth(tree) <= MAX_SYNTAX_DEPTH else None
    return Expression(source, program, analysable, frozenset(program.variables()))


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:300]


class StepTooLong(Exception):
    """A step of an execution spent its work budget without reaching a wait state."""


class WorkBudget:
    """What one step of an execution may spend, in the steps of cel_cost (a few
    tens of nanoseconds each): every evaluation's estimate, converting the
    variables for the CEL library, every element activated. Each evaluation is
    bounded alone (STEP_BUDGET); this bounds a loop with no wait state whose
    thousands of turns each do a little."""

    def __init__(self, steps: int = STEP_WORK_BUDGET) -> None:
        self.limit = steps
        self.left = steps
        self._next_pause = steps - SLICE_STEPS

    def pause_due(self) -> bool:
        """Whether a slice of work was spent since the last pause (and so, a pause now)."""
        if self.left > self._next_pause:
            return False
        self._next_pause = self.left - SLICE_STEPS
        return True

    def spend(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise StepTooLong(
                f"the step did more than its budget of {self.limit:,} steps of work"
                " without reaching a wait state (a loop with no wait state?)"
            )


class Scope:
    """What an execution's expressions read during a step: the values, for the
    cost estimate and the error sentences, and the names an expression reads
    converted for the CEL library once until the values change (converting
    64 KiB of variables takes about a millisecond; evaluating converted ones,
    microseconds; converting only what is read keeps a lone condition cheap)."""

    def __init__(self, values: Mapping[str, Any], work: WorkBudget) -> None:
        self.values = values
        self.work = work
        self._converted: dict[frozenset[str], cel.Context] = {}
        self._read_once: set[frozenset[str]] = set()

    def read(self, names: frozenset[str]) -> dict[str, Any]:
        return {name: self.values[name] for name in names if name in self.values}

    def converted(self, names: frozenset[str]) -> cel.Context | dict[str, Any]:
        """The names read, for the library: as they are the first time (it converts
        them on each call, cheaper than keeping them for one call), then kept
        converted, for a step that reads them again."""
        context = self._converted.get(names)
        if context is not None:
            return context
        read = self.read(names)
        size = sum(map(_json_size, read.values()))
        self.work.spend(CONVERSION_STEPS + size // BYTES_PER_STEP)
        if names not in self._read_once:
            self._read_once.add(names)
            return read
        context = self._converted[names] = cel.Context(variables=read)
        return context


def _json_size(value: Any) -> int:
    """Bytes of a value as JSON, about; a timestamp or a profile's fields count as a few."""
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, dict | list):
        return 8
    try:
        return len(compact_json(value))
    except (TypeError, ValueError):
        return len(str(value))


def evaluate(expression: Expression, scope: Scope) -> Any:
    """The expression's value; ExpressionError, as a sentence, when it fails or
    would take more than STEP_BUDGET steps."""
    names = scope.read(expression.names)
    tree = expression.tree
    if tree is None:
        raise ExpressionError(f"{expression.source!r} was not evaluated: it nests too deep")
    steps = estimate(tree, names)
    if steps > STEP_BUDGET:
        raise ExpressionError(
            f"{expression.source!r} was not evaluated: it would take about {steps:,} steps,"
            f" over the budget of {STEP_BUDGET:,}"
        )
    scope.work.spend(EVALUATION_STEPS + steps)
    converted = scope.converted(expression.names)
    try:
        return expression.program.execute(converted)
    except Exception as error:  # the CEL library raises many types for bad data
        sentence = cel_rules.failure(tree, expression.source, names, error)
        raise ExpressionError(f"{expression.source!r} failed: {sentence}") from error


def evaluate_bool(expression: Expression, scope: Scope) -> bool:
    value = evaluate(expression, scope)
    if not isinstance(value, bool):
        raise ExpressionError(f"{expression.source!r} gave {cel_rules.kind_of(value)}, not a bool")
    return value


def evaluate_map(expression: Expression, scope: Scope) -> dict[str, Any]:
    value = evaluate(expression, scope)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ExpressionError(f"{expression.source!r} must give a map with string keys")
    return {key: plain(item) for key, item in value.items()}


def plain(value: Any) -> Any:
    """A CEL result as JSON-compatible data, nested at most MAX_VALUE_DEPTH deep."""
    converted = _converted(value)
    if too_deep(converted):
        raise ExpressionError(f"gave a value nested more than {MAX_VALUE_DEPTH} levels deep")
    return converted


def _converted(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _converted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_converted(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"PT{value.total_seconds():g}S"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def too_deep(value: Any) -> bool:
    """Whether lists and maps nest in `value` more than MAX_VALUE_DEPTH levels."""
    level = [value]
    for _ in range(MAX_VALUE_DEPTH):
        level = [
            item
            for container in level
            if isinstance(container, dict | list)
            for item in (container.values() if isinstance(container, dict) else container)
        ]
    return any(isinstance(item, dict | list) for item in level)


# ---------------------------------------------------------------- timers

_DURATION = re.compile(
    r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    r"(?:T(?!$)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)
_CYCLE = re.compile(r"^R(\d*)/(.+)$")


@dataclass(frozen=True)
class Duration:
    """An ISO-8601 duration; months and years follow the calendar."""

    months: int
    delta: timedelta

    def after(self, moment: datetime) -> datetime:
        return _add_months(moment, self.months) + self.delta

    @property
    def approximate_seconds(self) -> float:
        return self.months * 30 * 86400 + self.delta.total_seconds()


def parse_duration(text: str) -> Duration:
    match = _DURATION.match(text.strip())
    if match is None:
        raise ExpressionError(f"{text!r} is not an ISO-8601 duration such as P3D or PT10M")
    years, months, weeks, days, hours, minutes, seconds = match.groups()
    return Duration(
        months=int(years or 0) * 12 + int(months or 0),
        delta=timedelta(
            weeks=int(weeks or 0),
            days=int(days or 0),
            hours=int(hours or 0),
            minutes=int(minutes or 0),
            seconds=float(seconds or 0),
        ),
    )


def parse_date(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as error:
        raise ExpressionError(f"{text!r} is not an ISO-8601 date-time") from error
    if moment.tzinfo is None:
        raise ExpressionError(f"{text!r} needs a time zone (e.g. Z or +02:00)")
    return moment.astimezone(UTC)


# When a cycle fires next after a moment: its ISO-8601 interval, or its cron rules.
Recurrence = Duration | Cron


@dataclass(frozen=True)
class Cycle:
    """R[n]/[start/]duration: n repetitions (None: unbounded); or a cron
    expression, unbounded, whose `interval` is its rules (cron.py)."""

    repetitions: int | None
    start: datetime | None
    interval: Recurrence


_NOT_A_CYCLE = (
    "is not an ISO-8601 cycle such as R3/PT1H nor a cron expression such as 0 0 9 * * MON"
)


def parse_cycle(text: str) -> Cycle:
    if looks_like_cron(text):
        try:
            return Cycle(None, None, parse_cron(text))
        except CronError as error:
            raise ExpressionError(str(error)) from error
    match = _CYCLE.match(text.strip())
    if match is None:
        raise ExpressionError(f"{text!r} {_NOT_A_CYCLE}")
    count, rest = match.groups()
    parts = rest.split("/")
    if len(parts) > 2:
        raise ExpressionError(f"{text!r} {_NOT_A_CYCLE}")
    start = parse_date(parts[0]) if len(parts) == 2 else None
    interval = parse_duration(parts[-1])
    if interval.approximate_seconds <= 0:
        raise ExpressionError(f"{text!r} repeats with an empty interval")
    repetitions = int(count) if count else None
    if repetitions == 0:
        raise ExpressionError(f"{text!r} repeats zero times")
    return Cycle(repetitions, start, interval)


def _add_months(moment: datetime, months: int) -> datetime:
    if not months:
        return moment
    total = moment.month - 1 + months
    year, month = moment.year + total // 12, total % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)
