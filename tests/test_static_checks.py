"""Static checks, with the configuration in pyproject.toml: ruff (lint and format) over the
whole tree, mypy over the client SDK (client/); and the SDK's docstrings (every public
definition documented, argument lists in segment-anything's "Arguments:" style).

Each check runs its tool from the repository root, in this interpreter's environment, and
fails with the tool's own report.
"""

import ast
import re
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


# --- the SDK's docstrings: one style (segment-anything's "Arguments:"), everything public documented

DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def public_definitions(path: Path):
    """(qualified name, node) of each public module-level function and class of ``path`` and
    each public method of those classes (a public name has no leading underscore)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, DEFINITIONS) and not node.name.startswith("_"):
            yield node.name, node
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, DEFINITIONS[:2]) and not member.name.startswith("_"):
                        yield f"{node.name}.{member.name}", member


def parameters(node) -> set:
    """The names a docstring's "Arguments:" may list: a function's parameters; a class's
    ``__init__`` parameters, or its annotated fields (a dataclass)."""
    if isinstance(node, ast.ClassDef):
        init = next((m for m in node.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"), None)
        if init is None:
            return {m.target.id for m in node.body if isinstance(m, ast.AnnAssign) and isinstance(m.target, ast.Name)}
        node = init
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return set(names) - {"self", "cls"}


def listed_arguments(docstring: str) -> list:
    """The names an "Arguments:" section lists: each entry is "  name: what it is" (or
    "  a, b: what they are"), continuation lines indented further."""
    lines = docstring.splitlines()
    if "Arguments:" not in (line.strip() for line in lines):
        return []
    start = [line.strip() for line in lines].index("Arguments:") + 1
    entries, indent = [], None
    for line in lines[start:]:
        if not line.strip():
            break
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        if depth == indent:
            entries.append(line.strip())
        else:
            entries[-1] += " " + line.strip()
    return [name.strip() for entry in entries for name in entry.split(":", 1)[0].split(",")]


def docstring_problems(root: Path) -> list:
    """What breaks the SDK's docstring style under ``root``: a public definition without a
    docstring, an "Args:" section, or an "Arguments:" entry that names no parameter."""
    problems = []
    for path in sorted(root.glob("*.py")):
        for name, node in public_definitions(path):
            where = f"{path.name}:{node.lineno} {name}"
            docstring = ast.get_docstring(node)
            if not docstring:
                problems.append(f"{where}: no docstring")
                continue
            if re.search(r"^\s*Args:", docstring, re.MULTILINE):
                problems.append(f"{where}: 'Args:' (the SDK writes 'Arguments:')")
            unknown = [n for n in listed_arguments(docstring) if n not in parameters(node)]
            if unknown:
                problems.append(f"{where}: 'Arguments:' lists {unknown}, not parameters")
    return problems


@pytest.mark.unit
def test_every_public_definition_of_the_sdk_is_documented_in_one_style():
    """Every public function, class and method of client/ has a docstring; argument lists use
    segment-anything's "Arguments:" (never "Args:") and name real parameters."""
    assert sorted(name for name, _ in public_definitions(REPO / "client" / "predictor.py"))[:2] == [
        "SamPredictor",
        "SamPredictor.backend",
    ]
    assert docstring_problems(REPO / "client") == []


@pytest.mark.unit
def test_the_docstring_check_fails_where_it_should(tmp_path):
    (tmp_path / "mod.py").write_text(
        "def bare(x):\n    return x\n\n\n"
        'def google(x):\n    """Does.\n\n    Args:\n        x: a thing.\n    """\n\n\n'
        'class Thing:\n    """A thing.\n\n    Arguments:\n      size: its size.\n      colour, weight: not here.\n    """\n\n'
        "    def __init__(self, size):\n        self.size = size\n\n"
        "    def public(self):\n        return 1\n\n"
        "    def _private(self):\n        return 2\n"
    )
    assert docstring_problems(tmp_path) == [
        "mod.py:1 bare: no docstring",
        "mod.py:5 google: 'Args:' (the SDK writes 'Arguments:')",
        "mod.py:13 Thing: 'Arguments:' lists ['colour', 'weight'], not parameters",
        "mod.py:24 Thing.public: no docstring",
    ]
