"""Static checks, with the configuration in pyproject.toml: ruff (lint and format) over the
whole tree, mypy over the client SDK (client/).

Each check runs its tool from the repository root, in this interpreter's environment, and
fails with the tool's own report.
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_tool(*args: str) -> subprocess.CompletedProcess:
    """``python -m ARGS`` from the repository root; stdout and stderr together."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )


@pytest.mark.timeout(300)
def test_mypy_client():
    """mypy on the files [tool.mypy] names (the client SDK): no errors."""
    result = run_tool("mypy")
    assert result.returncode == 0, f"mypy failed (exit {result.returncode}):\n{result.stdout}"


@pytest.mark.timeout(120)
def test_ruff_lint():
    """ruff check over the tree ([tool.ruff]): no findings."""
    result = run_tool("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, f"ruff check failed:\n{result.stdout}"


@pytest.mark.timeout(120)
def test_ruff_format():
    """Every Python file as ``ruff format`` writes it."""
    result = run_tool("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, f"ruff format --check failed (run `ruff format`):\n{result.stdout}"
