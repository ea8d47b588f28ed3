"""Static checks of the client SDK (client/), with the configuration in pyproject.toml.

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
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)


@pytest.mark.timeout(300)
def test_mypy_client():
    """mypy on the files [tool.mypy] names (the client SDK): no errors."""
    result = run_tool("mypy")
    assert result.returncode == 0, f"mypy failed (exit {result.returncode}):\n{result.stdout}"
