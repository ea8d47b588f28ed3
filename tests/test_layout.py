"""The layout holds: imports point one way between the roles, and the README's map matches
the tree.

client/ (samtriton) imports nothing of server/, export/ or tools/; server/ and export/ import
nothing of tools/. Imports are read from the source (absolute and relative, inside functions
too), so a lazy import counts as much as a top-level one.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "client": "samtriton",
    "server": "samtriton.server",
    "export": "samtriton.export",
    "tools": "samtriton.tools",
}
FORBIDDEN = {
    "client": ("samtriton.server", "samtriton.export", "samtriton.tools"),
    "server": ("samtriton.tools",),
    "export": ("samtriton.tools",),
}


def _package(path: Path):
    folder, *inner = path.relative_to(ROOT).parent.parts
    return ".".join([PACKAGES[folder], *inner])


def imported_modules(path: Path):
    """(line, module) of every import in ``path``, relative ones resolved."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(path).split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [f"{module}.{alias.name}" for alias in node.names] if not node.module else []
                yield from ((node.lineno, name) for name in [module, *names])
            else:
                yield node.lineno, node.module


def violations(folder: str):
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == banned or module.startswith(banned + ".") for banned in FORBIDDEN[folder]):
                found.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_point_one_way(folder):
    assert not violations(folder)


def test_the_check_sees_relative_and_lazy_imports(tmp_path, monkeypatch):
    """A client module importing the server (relatively, inside a function) is caught."""
    fake_root = tmp_path
    (fake_root / "client").mkdir()
    (fake_root / "client" / "bad.py").write_text("def f():\n    from .server import launcher\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", fake_root)
    assert violations("client") == ["client/bad.py:2: samtriton.server"]


def _layout_section():
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Layout") :].split("\n## ", 1)[0]


def test_readme_layout_names_every_module():
    """Every module of client/, server/ and export/ and every entry of tools/ is on the map, and
    the map names nothing that is not there."""
    layout = _layout_section()
    named = set(re.findall(r"\b([a-z_]+\.py|[a-z_]+/)", layout))
    expected = set()
    for folder in ("client", "server", "export"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name != "__init__.py":
                expected.add(path.name)
        expected |= {f"{p.name}/" for p in (ROOT / folder).iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    expected |= {
        p.name if p.is_file() else f"{p.name}/"
        for p in (ROOT / "tools").iterdir()
        if p.name not in ("__init__.py", "__pycache__")
    }
    missing = expected - named
    assert not missing, f"README Layout does not name {sorted(missing)}"
    folders = {
        f"{p.name}/"
        for p in ROOT.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name not in ("build", "out", "__pycache__")
        and not p.name.endswith(".egg-info")
    }
    assert folders <= named, f"README Layout does not name the folders {sorted(folders - named)}"
    scripts_and_tests = {"amg_oracle.py", "test_layout.py", "gpu_serve_check.py", "bootstrap.sh", "demo.sh", "test.sh"}
    stale = {name for name in named if name.endswith(".py")} - expected - scripts_and_tests - {"model.py"}
    assert not stale, f"README Layout names modules that do not exist: {sorted(stale)}"
