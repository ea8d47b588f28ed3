"""The wheel's packages, discovered: every folder under the folders that pyproject.toml's
``[tool.setuptools.package-dir]`` maps is a package of ``samtriton`` (a folder of data
only, such as the annotation app's ``static/``, too: Python can import it as a namespace
package, and setuptools warns about any it is not given).

A hand-written list drifted once (``samtriton.server.amg_filter`` was left out, and every
non-editable install, the containers' ``pip install .`` among them, could not export or
serve); a discovered one cannot. Everything else is declared in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.config.pyprojecttoml import read_configuration

ROOT = Path(__file__).resolve().parent


def discovered_packages(package_dir: dict) -> list:
    """Dotted names of each mapped folder and every folder below it whose name Python can
    import (not ``__pycache__``, a hidden folder or an ``.egg-info``)."""
    packages = []
    for name, folder in package_dir.items():
        base = ROOT / folder
        for directory in sorted([base, *(p for p in base.rglob("*") if p.is_dir())]):
            inner = directory.relative_to(base).parts
            if all(part.isidentifier() and part != "__pycache__" for part in inner):
                packages.append(".".join([name, *inner]))
    return packages


package_dir = read_configuration(ROOT / "pyproject.toml", expand=False)["tool"]["setuptools"]["package-dir"]
setup(packages=discovered_packages(package_dir))
