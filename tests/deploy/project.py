"""What the deployment must agree with, read from the project itself: the README's
configuration and port tables, the calls of docs/architecture.md, and the files
docs/operations.md shows in full."""

from __future__ import annotations

import re
from pathlib import Path

from runtime.config import SERVICE_NAMES

REPO = Path(__file__).parents[2]
_ROW = re.compile(r"^\|(.+)\|\s*$")
_FENCED = re.compile(r"^```[a-z]*\n(.*?)^```$", re.M | re.S)


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `heading`, cells stripped."""
    section = text.split(heading, 1)[1]
    rows: list[list[str]] = []
    for line in section.splitlines():
        match = _ROW.match(line)
        if match is None:
            if rows:
                break
            continue
        rows.append([cell.strip() for cell in match[1].split("|")])
    return [row for row in rows[1:] if not set(row[0]) <= {"-", ":"}]


def documented_settings() -> set[str]:
    """Every variable the README's configuration table names, <SERVICE> expanded."""
    readme = (REPO / "README.md").read_text()
    names = set()
    for row in table_rows(readme, "## Configuration"):
        name = row[0].strip("`")
        if "<SERVICE>" in name:
            names |= {name.replace("<SERVICE>", s.upper()) for s in SERVICE_NAMES}
        else:
            names.add(name)
    # That row is "standard OpenTelemetry sampler settings": the sampler and its argument.
    if "OTEL_TRACES_SAMPLER" in names:
        names.add("OTEL_TRACES_SAMPLER_ARG")
    return names


def documented_ports() -> dict[str, int]:
    readme = (REPO / "README.md").read_text()
    return {row[0]: int(row[2]) for row in table_rows(readme, "# lifecycle-ops")}


def architecture_calls() -> set[tuple[str, str]]:
    """(caller, callee) for every row of "Who calls whom"; "every service" means
    every other service."""
    text = (REPO / "docs" / "architecture.md").read_text()
    calls = set()
    for row in table_rows(text, "## Who calls whom"):
        caller, callees = (side.strip() for side in row[0].split("→"))
        for callee in (c.strip() for c in callees.split(",")):
            callers = SERVICE_NAMES if caller == "every service" else (caller,)
            calls |= {(c, callee) for c in callers if c != callee}
    assert calls, "no calls found in docs/architecture.md"
    unknown = {name for call in calls for name in call} - set(SERVICE_NAMES)
    assert not unknown, f"unknown services in docs/architecture.md: {unknown}"
    return calls


def documented_files(folder: str) -> dict[str, str]:
    """The files under `folder` that docs/operations.md shows in full, by name:
    fenced blocks whose first line is `# <folder><name>`."""
    text = (REPO / "docs" / "operations.md").read_text()
    files = {}
    for block in _FENCED.findall(text):
        first_line = block.split("\n", 1)[0]
        if first_line.startswith(f"# {folder}"):
            files[first_line.removeprefix(f"# {folder}")] = block
    assert files, f"docs/operations.md shows no file of {folder}"
    return files
