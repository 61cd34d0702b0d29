"""The style bar, enforced by the test command: ruff clean (lint and format) and mypy --strict clean
for hv1/ (the versions are pinned in pyproject's `test` extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install '.[test]')")
def test_ruff_lint_and_format() -> None:
    lint = _run("ruff", "check", "hv1", "tests", "bench", "examples")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", "hv1", "tests", "bench", "examples")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.timeout(300)
def test_mypy_strict() -> None:
    pytest.importorskip("mypy", reason="mypy not installed (pip install '.[test]')")
    r = _run(sys.executable, "-m", "mypy", "hv1", "examples")
    assert r.returncode == 0, r.stdout + r.stderr
