"""What ``pip install .`` installs is what the tests test.

The tests run on an editable install, which imports straight from the source folders and so
cannot see a package left out of the wheel (``samtriton.server.amg_filter`` once was: every
container's ``pip install .`` could neither export nor serve). Here samtriton is installed the
containers' way, non-editable from this tree, into a fresh venv, and that install exports
MobileSAM's real checkpoint, serves it on the embedded tritonserver and segments a photo.

Cost: samtriton's dependencies are not installed again (torch alone is minutes on 2 cores);
the fresh venv sees the project venv's site-packages through a ``.pth`` line, which adds the
folder without running its own ``.pth`` files, so the project's editable samtriton stays out
of reach: ``import samtriton`` can only find the installed wheel (checked below).
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "client": "samtriton",
    "server": "samtriton/server",
    "export": "samtriton/export",
    "tools": "samtriton/tools",
}

# Run by the installed samtriton: export, serve, segment; prints what it saw as JSON.
EXPORT_SERVE_SEGMENT = """
import json, subprocess, sys
from pathlib import Path

import numpy as np
from skimage import data

import samtriton
from samtriton import SamPredictor
from samtriton.server import EmbeddedTriton

checkpoint, repository = sys.argv[1], Path(sys.argv[2])
subprocess.run(
    [str(Path(sys.executable).parent / "samtriton"), "export", "--model-type", "vit_t", "--checkpoint", checkpoint,
     "--repository", str(repository), "--name", "sam", "--encoder-backend", "torch", "--decoder-backend", "torch",
     "--torch-device", "cpu"],
    check=True,
)
image = data.astronaut()
with EmbeddedTriton.on_free_ports(repository, startup_timeout=240) as server:
    with SamPredictor(server.grpc_url, model="sam") as predictor:
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(point_coords=np.array([[260, 110]]), point_labels=np.array([1]))
print(json.dumps({"samtriton": samtriton.__file__, "masks": list(masks.shape), "area": int(masks[0].sum()),
                  "score": float(scores[0])}))
"""


def dockerfile_sources(dockerfile: Path = ROOT / "docker" / "Dockerfile.server"):
    """The context paths a Dockerfile's ``COPY`` lines take (files and folders)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources += parts[1:-1]
    return sources


def source_tree(out: Path) -> Path:
    """What the server image's ``COPY`` lines put in its build folder, from git's tracked
    files and the untracked ones it does not ignore: the containers' ``pip install .`` builds
    from exactly that. Never this tree itself: setuptools would reuse its build/ folder,
    whose stale copies hide a package the build left out."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *dockerfile_sources()],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, out / name)
    return out


def built_wheel(out: Path) -> zipfile.ZipFile:
    source = source_tree(out / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)],
        check=True,
        timeout=120,
    )
    return zipfile.ZipFile(next(out.glob("samtriton-*.whl")))


def test_the_wheel_holds_every_python_file_of_the_package_folders(tmp_path):
    """Every tracked .py file of client/, server/, export/ and tools/ is in the wheel, at its
    package's path (setuptools discovers the packages under package-dir: none can be forgotten)."""
    tracked = subprocess.run(["git", "ls-files", *FOLDERS], cwd=ROOT, capture_output=True, text=True, check=True)
    expected = set()
    for name in tracked.stdout.split():
        folder, _, rest = name.partition("/")
        if name.endswith(".py") and (ROOT / name).exists():
            expected.add(f"{FOLDERS[folder]}/{rest}")
    with built_wheel(tmp_path) as wheel:
        missing = expected - set(wheel.namelist())
    assert expected and not missing, f"left out of the wheel: {sorted(missing)}"


@pytest.mark.timeout(600)
def test_pip_install_dot_exports_serves_and_segments(checkpoint, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies: this venv's site-packages, without running its .pth files (so without
    # the editable samtriton's import hook).
    (site / "project_dependencies.pth").write_text("".join(f"{p}\n" for p in sys.path if p.endswith("site-packages")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    # The containers' install: `pip install .` (built here without isolation: same backend,
    # no setuptools download), non-editable.
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--no-build-isolation"]
        + [str(source_tree(tmp_path / "source"))],
        check=True,
        env=env,
        timeout=180,
    )
    script = tmp_path / "export_serve_segment.py"
    script.write_text(EXPORT_SERVE_SEGMENT)
    result = subprocess.run(
        [python, str(script), str(checkpoint), str(tmp_path / "model_repository")],
        cwd=tmp_path,  # not the repository root: nothing imported from the source folders
        capture_output=True,
        text=True,
        env=env,
        timeout=480,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(seen["samtriton"]).is_relative_to(site), seen["samtriton"]
    # One point on the astronaut's face: 3 masks of the photo's size, a real region, a confident score.
    assert seen["masks"] == [3, 512, 512] and 1000 < seen["area"] < 512 * 512 // 2 and seen["score"] > 0.5
