"""The contracts: buf lint (STANDARD) passes, and the committed generated code
is exactly what `make protos` makes from them."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "lifecycle"
    committed = REPO / "lifecycle"
    fresh_files = sorted(
        p.relative_to(fresh)
        for p in fresh.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    committed_files = sorted(
        p.relative_to(committed)
        for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh_files == committed_files, "run `make protos`: the set of generated files changed"
    stale = [
        str(p) for p in fresh_files if not filecmp.cmp(fresh / p, committed / p, shallow=False)
    ]
    assert stale == [], f"run `make protos`: stale generated files {stale}"


def test_buf_lint_and_format_pass() -> None:
    buf = str(Path(sys.executable).parent / "buf")
    lint = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = subprocess.run(
        [buf, "format", "--diff", "--exit-code"], cwd=REPO, capture_output=True, text=True
    )
    assert formatted.returncode == 0, formatted.stdout


def test_every_service_has_a_versioned_package_in_its_own_folder() -> None:
    for service in ("users", "workflows", "segments", "triggers", "metrics"):
        proto = REPO / "protos" / "lifecycle" / service / "v1" / f"{service}.proto"
        assert f"package lifecycle.{service}.v1;" in proto.read_text()
