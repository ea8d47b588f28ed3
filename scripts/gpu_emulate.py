#!/usr/bin/env python3
"""The GPU check's set-up and run as the GPU machine will do them, on this CPU machine, before
any GPU time is spent (tests/test_gpu_emulation.py; an issue-#28 lesson: each set-up failure
found there would have cost a lent GPU).

The "machine": a shared-built Python 3.12 whose BASE site-packages holds only what the GPU
machine has (``MACHINE_PACKAGES`` of scripts/gpu_serve_check.py, installed once into a cache
folder and bind-mounted over that Python's site-packages in a private mount namespace), no
network but loopback (its own network namespace), an empty environment, its own /tmp and
HOME, and a copy of what the device tool carries (the tracked and untracked-but-not-ignored
files of this tree) with the bundle at out/gpu_bundle. There it runs, twice on the same
machine (cold, then warm)::

    python3 scripts/gpu_serve_check.py run --bundle out/gpu_bundle --device cpu --quick \\
        --models vit_t --amg-models vit_t

Needs root (unshare, mount). Usage, from the repository root::

    .venv/bin/python scripts/gpu_serve_check.py stage out/gpu_bundle
    .venv/bin/python scripts/gpu_emulate.py --bundle out/gpu_bundle --out out/gpu_emulation
"""

from __future__ import annotations

import argparse
import json
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK = runpy.run_path(str(ROOT / "scripts" / "gpu_serve_check.py"))  # the check's own lists
CACHE = Path.home() / ".cache" / "samtriton" / "gpu-emulation"
# The GPU machine's torch is 2.11+cu130; any torch for 3.12 serves here (the project's pin).
TORCH = "torch==2.13.0"
RUN = ["--device", "cpu", "--quick", "--models", "vit_t", "--amg-models", "vit_t"]


def shared_python(version: str = "3.12") -> Path:
    """A Python ``version`` built with --enable-shared (the stub links its libpython)."""
    for python in sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"), reverse=True):
        code = "import sysconfig; print(sysconfig.get_config_var('Py_ENABLE_SHARED'))"
        if subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip() == "1":
            return python
    raise SystemExit(f"no shared-built Python {version} (pyenv's, built with --enable-shared) here")


def machine_site(python: Path) -> Path:
    """The GPU machine's base site-packages: its packages, installed once into a cache folder."""
    packages = CHECK["MACHINE_PACKAGES"]
    wanted = [TORCH if name == "torch" else name for name in packages]
    site = CACHE / f"py{python.name[len('python') :]}-site"
    stamp = site / "samtriton-machine.json"
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return site
    shutil.rmtree(site, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--target", str(site), *wanted], check=True)
    stamp.write_text(json.dumps(wanted))
    print(f"machine site {site}: {time.perf_counter() - started:.0f} s", flush=True)
    return site


def carried_tree(machine: Path, bundle: Path) -> Path:
    """What the device tool copies (git's tracked files and untracked ones it does not ignore),
    with the bundle at out/gpu_bundle."""
    repo = machine / "repo"
    for name in CHECK["carried_files"]():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    shutil.copytree(bundle, repo / "out" / "gpu_bundle")
    return repo


def run_on_machine(python: Path, site: Path, machine: Path, repo: Path, name: str, extra=()) -> dict:
    """One run of the check in the emulated machine; its exit code, seconds, report and output."""
    base_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = f"out/{name}"
    check = ["python3", "scripts/gpu_serve_check.py", "run", "--bundle", "out/gpu_bundle", *RUN, *extra]
    check += ["--json", f"{out}/gpu_serve.json", "--markdown", f"{out}/gpu_serve.md"]
    environment = [f"PATH={python.parent}:/usr/local/bin:/usr/bin:/bin", f"HOME={machine / 'home'}"]
    inside = " && ".join(
        [
            "ip link set lo up",
            f"mount --bind {site} {base_site}",
            f"mount --bind {machine / 'tmp'} /tmp",
            f"cd {repo}",
            "exec env -i " + " ".join(environment + check),
        ]
    )
    started = time.perf_counter()
    result = subprocess.run(["unshare", "--mount", "--net", "sh", "-c", inside], capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 1)
    report_path = repo / out / "gpu_serve.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    (machine / f"{name}.log").write_text(result.stdout + result.stderr)
    return {
        "name": name,
        "returncode": result.returncode,
        "seconds": seconds,
        "report": report,
        "log": result.stdout + result.stderr,
    }


def emulate(bundle: Path, out: Path, runs=("cold", "warm"), extra=()) -> list:
    """A fresh machine, then the check's runs on it, in order; their results."""
    python = shared_python()
    site = machine_site(python)
    machine = Path(out).resolve()
    shutil.rmtree(machine, ignore_errors=True)
    for folder in ("tmp", "home"):
        (machine / folder).mkdir(parents=True)
    (machine / "tmp").chmod(0o1777)
    repo = carried_tree(machine, Path(bundle))
    results = []
    for name in runs:
        result = run_on_machine(python, site, machine, repo, name, extra)
        print(f"{name}: exit {result['returncode']} in {result['seconds']} s", flush=True)
        results.append(result)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(ROOT / "out" / "gpu_bundle"), help="the staged bundle")
    parser.add_argument("--out", default=str(ROOT / "out" / "gpu_emulation"), help="the machine's folder")
    parser.add_argument("extra", nargs="*", help="more arguments for `gpu_serve_check.py run` (after --)")
    args = parser.parse_args(argv)
    results = emulate(Path(args.bundle), Path(args.out), extra=args.extra)
    for result in results:
        print(f"--- {result['name']}: exit {result['returncode']}, {result['seconds']} s")
        print(result["log"][-3000:])
    return max(result["returncode"] for result in results)


if __name__ == "__main__":
    sys.exit(main())
