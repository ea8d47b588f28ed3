#!/usr/bin/env python3
"""The GPU check of the served product: the embedded tritonserver with the torch backends on
CUDA, measured through gRPC by clients on the same host, against the reference on the same GPU.

For each model (MobileSAM with its real weights rounded to fp16 when they fit the bundle, else
random; ViT-B and ViT-H with random weights from segment_anything's builders, built there):
export (``--encoder-backend torch --decoder-backend torch``, the architecture's default
precision), start ``samtriton serve``'s server, then measure

- parity: masks of 3 photographs x 4 prompt cases through the session stage vs
  ``SamPredictor`` (fp32, TF32 off) on the same GPU: mean / min mask IoU, max score difference;
- encoder throughput: raw uint8 images to NAME_encoder from ``--concurrency`` client threads
  (images in system shared memory, requests over gRPC), images/s; and the reference's
  ``SamPredictor.set_image`` rate on the same GPU;
- session clicks: one client's p50 / p99, and clicks/s from 16 concurrent clients;
- automatic mask generation of a 3 MP photo at the reference's defaults (ViT-H by default):
  seconds against ``SamAutomaticMaskGenerator`` on the same GPU, reference masks matched;
- cold start (server start to ready) and the GPU's peak memory while the model is served.

It writes JSON (``--json``) and a markdown table (``--markdown``).

Three ways to run it:

    # 1. here (the project's .venv): stage what a bare CUDA machine lacks, < 64 MiB
    python scripts/gpu_serve_check.py stage out/gpu_bundle
    # 2. there, from the repository root with out/gpu_bundle carried, ONE command, no network:
    python3 scripts/gpu_serve_check.py run --bundle out/gpu_bundle --json $OUT/gpu_serve.json \\
        --markdown $OUT/gpu_serve.md
    # 3. CI's smoke run of the same code on the CPU device (tests/test_gpu_serve_check.py):
    python scripts/gpu_serve_check.py run --device cpu --quick --json out/smoke.json

``run --bundle`` makes a virtualenv that sees the machine's own packages (torch, numpy,
grpcio, Pillow), installs the staged wheels into it without an index, unpacks the staged
tritonserver (nvidia-pytriton's, without the stubs and libpython this machine does not use),
checks the Python 3.12 stub's libraries with ldd, and re-runs itself inside that environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARRY_LIMIT = 64 * 2**20  # the device tool carries 64 MiB: the tracked tree and the bundle together
# What the GPU machine has in its base site-packages (the device tool's description): the
# staged wheels never replace these. Everything else samtriton needs is staged.
MACHINE_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "grpcio", "pillow", "scikit-image")
# samtriton's extras the run imports: export and the torch backends. The tritonserver of
# its ``serve`` extra is staged on its own, without pytriton's client.
EXTRAS = ("export", "serve-torch")
PYTRITON = "nvidia-pytriton==0.7.0"
STUB_VERSIONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
PLATFORMS = (
    "manylinux_2_35_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
PHOTOS = ("astronaut", "chelsea", "coffee")
VENV = Path("/tmp/samtriton-gpu-venv")
WEIGHTS = "mobile_sam_fp16.safetensors.xz"
STAMP = VENV / "samtriton-bundle.json"  # what the venv was set up from (a warm machine's second run)
LOG_TAIL = 60  # server log lines kept in the report when a model fails


# --- staging (here) ---------------------------------------------------------------------------


def _pip_for_target(python_version: str) -> list:
    """pip arguments that pick wheels for the GPU machine (CPython ``python_version``, x86-64
    Linux), not for this interpreter."""
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    return ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", *platforms]


def _name(requirement: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(requirement)


def staged_requirements(report: dict, root: str, extras, python_version: str) -> list:
    """``name==version`` of every distribution that ``root[extras]`` needs on the GPU machine,
    read from the wheels' metadata in pip's resolution ``report``: its dependencies followed
    down, except the machine's own packages (and theirs)."""
    from packaging.requirements import Requirement

    resolved = {_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}
    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    environment.update(sys_platform="linux", platform_system="Linux", platform_machine="x86_64")
    needed, todo = {}, [(_name(root), tuple(extras))]
    while todo:
        name, wanted = todo.pop()
        if name in needed and set(wanted) <= needed[name]:
            continue
        needed[name] = needed.get(name, set()) | set(wanted)
        for line in resolved[name].get("requires_dist", []):
            requirement = Requirement(line)
            active = requirement.marker is None or any(
                requirement.marker.evaluate({**environment, "extra": extra}) for extra in ("", *wanted)
            )
            dependency = _name(requirement.name)
            if active and dependency not in MACHINE_PACKAGES:
                todo.append((dependency, tuple(requirement.extras)))
    return sorted(f"{name}=={resolved[name]['version']}" for name in needed if name != _name(root))


def stage_wheels(wheels: Path, python_version: str) -> list:
    """samtriton's wheel, built from this tree, and every wheel it needs that the GPU machine
    lacks (samtriton's own dependencies included), resolved by pip from the wheels' metadata."""
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as source:  # not this tree: its build/ may hold stale packages
        for name in carried_files():
            (Path(source) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, Path(source) / name)
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(wheels), source], check=True)
    ours = next(wheels.glob("samtriton-*.whl"))
    report_path = wheels.parent / "resolution.json"
    # --target: pip takes another Python's tags only for an install elsewhere (a dry run here).
    target = ["--target", str(wheels.parent / "resolution")]
    resolve = [*pip, "install", "-q", "--dry-run", "--ignore-installed", *target, "--report", str(report_path)]
    subprocess.run([*resolve, *_pip_for_target(python_version), f"{ours}[{','.join(EXTRAS)}]"], check=True)
    requirements = staged_requirements(json.loads(report_path.read_text()), "samtriton", EXTRAS, python_version)
    report_path.unlink()
    download = [*pip, "download", "-q", "--no-deps", *_pip_for_target(python_version), "-d", str(wheels)]
    subprocess.run([*download, *requirements], check=True)
    return requirements


def stage(out: Path, checkpoint: str | None, python_version: str = "3.12", libpython: str | None = None) -> None:
    """The wheels the GPU machine lacks (the numpy tritonserver's stubs need among them), a slim
    tritonserver, libpython for its stub and MobileSAM in fp16, LZMA-compressed; the tracked
    tree and the bundle must fit the device carry. The photos come from the machine's
    scikit-image."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    print("staged wheels:", " ".join(stage_wheels(wheels, python_version)))
    raw = out / "raw"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *_pip_for_target(python_version)]
        + ["-d", str(raw), PYTRITON],
        check=True,
    )
    pytriton = next(raw.glob("nvidia_pytriton-*.whl"))
    _stage_stub_numpy(out, pytriton, python_version)
    unused = unused_pytriton_files(python_version)
    with zipfile.ZipFile(pytriton) as source, zipfile.ZipFile(out / "pytriton_slim.zip", "w", zipfile.ZIP_LZMA) as slim:
        for item in source.infolist():
            if not any(part in item.filename for part in unused):
                slim.writestr(item, source.read(item.filename), compress_type=zipfile.ZIP_LZMA)
    shutil.rmtree(raw)
    _stage_mobilesam(out, checkpoint)
    for wheel in wheels.glob("*.whl"):
        _repack_lzma(wheel)
    _stage_libpython(out, python_version, libpython, CARRY_LIMIT - tree_bytes() - bundle_bytes(out))
    total, tree = bundle_bytes(out), tree_bytes()
    print(f"staged {out}: {total / 2**20:.1f} MiB (+ tracked tree {tree / 2**20:.1f} MiB)")
    if total + tree > CARRY_LIMIT:
        raise SystemExit(
            f"bundle {total / 2**20:.1f} MiB + tree {tree / 2**20:.1f} MiB; the device tool carries "
            f"{CARRY_LIMIT / 2**20:.0f}"
        )


def _stage_stub_numpy(out: Path, pytriton: Path, python_version: str) -> None:
    """The numpy that nvidia-pytriton declares (``numpy<2``): its python-backend stub hands
    tensors to Python through a numpy 1 ABI, and under numpy 2 a BYTES input (a session id)
    arrives garbled, the stub aborts in ``deserialize_bytes_tensor`` and Triton reports "Stub
    process 'sam_session_0_0' is not healthy". Staged in case the machine's numpy is 2; the
    requirement goes to ``requirements.txt`` for the set-up."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(pytriton) as wheel:
        metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        lines = wheel.read(metadata).decode().splitlines()
    [numpy] = [
        str(requirement)
        for requirement in (Requirement(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist:"))
        if _name(requirement.name) == "numpy" and requirement.marker is None
    ]
    (out / "requirements.txt").write_text(numpy + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *_pip_for_target(python_version)]
        + ["-d", str(out / "wheels"), numpy],
        check=True,
    )


def _repack_lzma(wheel: Path) -> None:
    """The wheel with its members LZMA-compressed (numpy 1.26: 17.1 -> 9.8 MiB): pip reads it
    the same (zipfile), and the RECORD hashes, of the uncompressed files, still hold."""
    packed = wheel.with_suffix(".lzma")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_LZMA) as target:
        for item in source.infolist():
            target.writestr(item, source.read(item.filename), compress_type=zipfile.ZIP_LZMA)
    packed.replace(wheel)


def bundle_bytes(out: Path) -> int:
    return sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())


def carried_files() -> list:
    """What the device tool copies besides the bundle, relative to the root: git's tracked
    files and the untracked ones it does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]


def tree_bytes() -> int:
    return sum((ROOT / name).stat().st_size for name in carried_files())


def unused_pytriton_files(python_version: str):
    """nvidia-pytriton's files a server on ``python_version`` does not use: the other
    versions' stubs, and the libpython 3.13 that only the 3.13 stub links (31 MiB)."""
    unused = [f"python_backend_stubs/{v}/" for v in STUB_VERSIONS if v != python_version]
    return unused + (["libpython3-"] if python_version != "3.13" else [])


def _find_libpython(python_version: str, libpython: str | None) -> Path | None:
    """``libpythonX.Y.so.1.0`` of a shared-built Python ``python_version`` here: ``libpython``,
    else the one of ``pythonX.Y`` on PATH or of pyenv's newest X.Y."""
    if libpython:
        return Path(libpython)
    candidates = [shutil.which(f"python{python_version}")]
    candidates += sorted(Path.home().glob(f".pyenv/versions/{python_version}.*/bin/python{python_version}"))[-1:]
    for python in filter(None, candidates):
        try:
            libdir = _sysconfig(str(python), "get_config_var('LIBDIR')")
        except (subprocess.CalledProcessError, OSError):  # a pyenv shim of another version
            continue
        path = Path(libdir) / f"libpython{python_version}.so.1.0"
        if path.exists():
            return path
    return None


def _stage_libpython(out: Path, python_version: str, libpython: str | None, room: int) -> None:
    """libpython for the stub, stripped and xz-compressed (30 MiB -> ~1.5 MiB), for a machine
    whose Python was built without it; left out, with a line saying so, when none is found here
    or it does not fit the ``room`` left in the carry."""
    import lzma

    source = _find_libpython(python_version, libpython)
    if source is None:
        print(f"no libpython{python_version}.so.1.0 here (--libpython): the bundle carries none")
        return
    stripped = out / source.name
    shutil.copy2(source, stripped)
    if shutil.which("strip"):
        subprocess.run(["strip", "--strip-unneeded", str(stripped)], check=True)
    packed = out / f"{source.name}.xz"
    packed.write_bytes(lzma.compress(stripped.read_bytes(), preset=9))
    stripped.unlink()
    if packed.stat().st_size > room:
        print(f"{packed.name} ({packed.stat().st_size / 2**20:.1f} MiB) does not fit the carry: left out")
        packed.unlink()


def _stage_mobilesam(out: Path, checkpoint: str | None) -> None:
    """MobileSAM's real weights rounded to fp16 (20 MiB; the fp32 checkpoint does not fit the
    bundle): both the server and the reference there load these same values."""
    import torch
    from safetensors.torch import save_file

    if checkpoint is None:
        sys.path.insert(0, str(ROOT))
        from samtriton.export.checkpoints import official_checkpoint_path

        checkpoint = official_checkpoint_path("vit_t")
    import lzma

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    weights = out / "mobile_sam_fp16.safetensors"
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(weights))
    (out / WEIGHTS).write_bytes(lzma.compress(weights.read_bytes(), preset=9))  # 20.3 -> 18.3 MB
    weights.unlink()


# --- setting up there -----------------------------------------------------------------------------


def _sysconfig(python: str, expression: str) -> str:
    """``sysconfig.EXPRESSION`` as the interpreter ``python`` sees it."""
    code = f"import sysconfig; print(sysconfig.{expression})"
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def _fingerprint(bundle: Path) -> dict:
    """What a set-up depends on: this interpreter and the bundle's files (names and sizes)."""
    files = {str(p.relative_to(bundle)): p.stat().st_size for p in sorted(bundle.rglob("*")) if p.is_file()}
    return {"python": sys.executable, "version": sys.version, "bundle": files}


def setup(bundle: Path) -> None:
    """A virtualenv over the machine's packages with the staged wheels and tritonserver (kept
    while the bundle and the interpreter are the same: a warm machine's next run skips this)."""
    bundle = Path(bundle).resolve()
    fingerprint = _fingerprint(bundle)
    if STAMP.exists() and json.loads(STAMP.read_text()) == fingerprint:
        print(f"set-up: {VENV} is already set up from this bundle")
        return
    started = time.perf_counter()
    _make_venv()
    python = str(VENV / "bin" / "python")
    _install_wheels(python, bundle / "wheels")
    site = Path(_sysconfig(python, "get_paths()['purelib']"))
    _see_user_site(site)
    with zipfile.ZipFile(bundle / "pytriton_slim.zip") as slim:
        slim.extractall(site)
    for path in Path(site, "pytriton").rglob("*"):
        if path.is_file() and ("bin" in path.parts or path.suffix == "" or ".so" in path.name):
            path.chmod(0o755)
    _check_stub(python, site, bundle)
    STAMP.write_text(json.dumps(fingerprint))
    print(f"set-up: {VENV} in {time.perf_counter() - started:.0f} s")


def _make_venv() -> None:
    """A fresh venv that sees the base interpreter's site-packages; with pip where this Python
    has ensurepip (Debian's may not: then the base's pip installs into it)."""
    shutil.rmtree(VENV, ignore_errors=True)
    command = [sys.executable, "-m", "venv", "--system-site-packages", str(VENV)]
    if subprocess.run(command).returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([*command, "--without-pip"], check=True)


def _install_wheels(python: str, wheels: Path) -> None:
    """samtriton with the extras the run imports, from the staged wheels only: pip checks each
    requirement against the machine's packages and fails naming any that is missing."""
    ours = next(wheels.glob("samtriton-*.whl"))
    has_pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0
    pip = [python, "-m", "pip"] if has_pip else [sys.executable, "-m", "pip", "--python", python]
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = [*pip, "install", "-q", "--no-index", "--find-links", str(wheels), "--no-compile"]
    # The stubs' numpy (requirements.txt): kept from the machine where it fits, else staged's.
    stubs = (wheels.parent / "requirements.txt").read_text().split()
    subprocess.run([*install, f"{ours}[{','.join(EXTRAS)}]", *stubs], check=True, env=env)


def _see_user_site(site: Path) -> None:
    """The stubs' interpreter reads the venv's and the base's site-packages but never the user
    site: a .pth makes a user site of this Python (pip install --user) visible to them too."""
    import site as sites

    user = Path(sites.getusersitepackages())
    if sites.ENABLE_USER_SITE and user.is_dir():
        (site / "samtriton_gpu_check_user_site.pth").write_text(f"{user}\n")


def _check_stub(python: str, site: Path, bundle: Path) -> None:
    """The python backend stub for this Python must load all its libraries; a libpython this
    machine lacks comes from the bundle, into the folder on the server's LD_LIBRARY_PATH."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = site / "pytriton" / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise SystemExit(
            f"the bundle's tritonserver has no python backend stub for Python {version} (stage --python-version)"
        )
    libs = site / "nvidia_pytriton.libs"
    missing = _missing_libraries(stub, python, libs)
    carried = bundle / f"libpython{version}.so.1.0.xz"
    if missing and carried.exists() and any(f"libpython{version}" in line for line in missing):
        import lzma

        target = libs / carried.name[: -len(".xz")]
        target.write_bytes(lzma.decompress(carried.read_bytes()))
        target.chmod(0o755)
        print(f"set-up: {target.name} from the bundle (this Python has none)")
        missing = _missing_libraries(stub, python, libs)
    print(f"stub {stub.name} ({version}): {'missing ' + str(missing) if missing else 'all libraries found'}")
    if missing:
        raise SystemExit(f"the python backend stub cannot load {missing}; bring libpython{version}.so.1.0")


def _missing_libraries(stub: Path, python: str, libs: Path) -> list:
    """ldd's "not found" lines for ``stub`` with the server's LD_LIBRARY_PATH."""
    libdir = _sysconfig(python, "get_config_var('LIBDIR')")
    paths = [libdir, str(libs), os.environ.get("LD_LIBRARY_PATH", "")]
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(p for p in paths if p))
    ldd = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, env=env).stdout
    return [line.strip() for line in ldd.splitlines() if "not found" in line]


# --- models -----------------------------------------------------------------------------------------


def build_checkpoint(model_type: str, bundle: Path | None, out: Path, checkpoint: str | None) -> tuple[Path, str]:
    """A state dict file for ``model_type`` (read later with weights_only=True) and what its
    weights are: MobileSAM's real ones (fp16-rounded) where staged, else random (seed 0)."""
    import torch

    from samtriton.export.compat import ensure_reference_imports

    ensure_reference_imports()
    path = out / f"{model_type}.pth"
    staged = bundle / WEIGHTS if bundle else None
    if model_type == "vit_t" and staged is not None and staged.exists():
        import lzma

        from safetensors.torch import load

        state = {
            k: v.float() if v.is_floating_point() else v for k, v in load(lzma.decompress(staged.read_bytes())).items()
        }
        kind = "real (fp16-rounded)"
    elif model_type == "vit_t" and checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        kind = "real"
    else:
        torch.manual_seed(0)
        if model_type == "vit_t":
            from mobile_sam import sam_model_registry
        else:
            from segment_anything import sam_model_registry
        state = sam_model_registry[model_type](checkpoint=None).state_dict()
        kind = "random"
    torch.save(state, path)
    return path, kind


def reference_model(model_type: str, checkpoint: Path, device: str):
    """The reference Sam on ``device`` in fp32 (TF32 off), loaded fresh from the checkpoint."""
    import torch

    from samtriton.export.checkpoints import load_sam

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return load_sam(model_type, checkpoint, allow_unverified=True).to(device).eval()


def reference_classes(model_type: str):
    if model_type == "vit_t":
        from mobile_sam import SamAutomaticMaskGenerator, SamPredictor
    else:
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor
    return SamPredictor, SamAutomaticMaskGenerator


def photos(bundle: Path | None):
    import numpy as np
    from PIL import Image

    if bundle is not None and (bundle / "photos").exists():  # a bundle of an older stage
        return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in sorted((bundle / "photos").glob("*.png"))}
    from skimage import data

    return {name: getattr(data, name)() for name in PHOTOS}


def mask_iou(a, b) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


# --- measurements ---------------------------------------------------------------------------------------


class GpuMemory:
    """The device's used memory, sampled every 50 ms while served (NVML; None on the CPU)."""

    def __init__(self, device: str):
        self.peak = self.base = None
        self._stop = threading.Event()
        self._thread = None
        if device != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._read = lambda: pynvml.nvmlDeviceGetMemoryInfo(self._handle).used
        except Exception:  # noqa: BLE001 - no NVML: no memory figure
            return
        self.base = self.peak = self._read()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._read())

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return None if self.peak is None else round((self.peak - self.base) / 2**30, 2)


def parity(url, name, model_type, reference_sam, images, quick):
    import numpy as np

    from samtriton import SamPredictor
    from samtriton.tools.bench import prompt_cases

    Reference, _ = reference_classes(model_type)
    reference = Reference(reference_sam)
    ious, score_diffs = [], []
    with SamPredictor(url, model=name) as ours:
        for image in list(images.values())[: 1 if quick else None]:
            ours.set_image(image)
            reference.set_image(image)
            for case, prompt in prompt_cases(image.shape).items():
                multimask = case == "point"
                masks, scores, _ = ours.predict(**prompt, multimask_output=multimask)
                ref_masks, ref_scores, _ = reference.predict(**prompt, multimask_output=multimask)
                ious += [mask_iou(a, b) for a, b in zip(masks, ref_masks)]
                score_diffs.append(float(np.abs(scores - ref_scores).max()))
    return {
        "masks": len(ious),
        "iou_mean": round(float(np.mean(ious)), 5),
        "iou_min": round(float(min(ious)), 5),
        "score_diff_max": float(max(score_diffs)),
    }


def encoder_throughput(url, name, images, seconds, concurrency, headers=None):
    """Images/s of NAME_encoder: ``concurrency`` threads, each sending one preprocessed
    uint8 image per request from its own system shared-memory region (registered with
    ``headers``: a server that restricts the shared-memory protocol wants its admin key)."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.utils.shared_memory as shm

    from samtriton.transforms import preprocess

    padded, size = preprocess(next(iter(images.values())))
    image = padded[None]
    sizes = np.asarray([size], np.int64)
    deadline = [0.0]
    counts = [0] * concurrency
    ready = threading.Barrier(concurrency + 1)

    def worker(index):
        client = grpcclient.InferenceServerClient(url)
        region = f"samtriton_bench_{os.getpid()}_{index}"
        handle = shm.create_shared_memory_region(region, f"/{region}", image.nbytes)
        try:
            shm.set_shared_memory_region(handle, [image])
            client.register_system_shared_memory(region, f"/{region}", image.nbytes, headers=headers)
            image_input = grpcclient.InferInput("image", list(image.shape), "UINT8")
            image_input.set_shared_memory(region, image.nbytes)
            size_input = grpcclient.InferInput("input_size", [1, 2], "INT64")
            size_input.set_data_from_numpy(sizes)
            output = grpcclient.InferRequestedOutput("image_embeddings")
            client.infer(f"{name}_encoder", [image_input, size_input], outputs=[output])  # warm
            ready.wait()
            while True:  # at least one timed request per thread, however slow the device
                client.infer(f"{name}_encoder", [image_input, size_input], outputs=[output])
                counts[index] += 1
                if time.perf_counter() >= deadline[0]:
                    break
            for _ in range(50):  # the server may still hold the region just after a response
                try:
                    client.unregister_system_shared_memory(region, headers=headers)
                    break
                except Exception:  # noqa: BLE001 - "currently in use": retry shortly
                    time.sleep(0.1)
        finally:
            shm.destroy_shared_memory_region(handle)
            client.close()

    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(worker, index) for index in range(concurrency)]
        ready.wait()  # every thread has made its warm-up request
        start = time.perf_counter()
        deadline[0] = start + seconds
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - start
    return round(sum(counts) / elapsed, 2)


def reference_set_image_rate(model_type, reference_sam, images, seconds, device):
    import torch

    Reference, _ = reference_classes(model_type)
    predictor = Reference(reference_sam)
    image = next(iter(images.values()))
    predictor.set_image(image)  # warm
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor.set_image(image)
        if device == "cuda":
            torch.cuda.synchronize()
        count += 1
    return round(count / (time.perf_counter() - start), 2)


def clicks(url, name, images, single, concurrent_seconds, concurrency):
    """One client's click latencies (ms), then clicks/s from ``concurrency`` clients."""
    import numpy as np

    from samtriton import SamPredictor

    image = next(iter(images.values()))
    h, w = image.shape[:2]
    rng = np.random.default_rng(0)
    points = rng.uniform((0, 0), (w, h), size=(max(single, 64), 1, 2))
    with SamPredictor(url, model=name) as predictor:
        predictor.set_image(image)
        for point in points[:5]:  # warm
            predictor.predict(point_coords=point, point_labels=np.array([1]))
        latencies = []
        for point in points[:single]:
            start = time.perf_counter()
            predictor.predict(point_coords=point, point_labels=np.array([1]))
            latencies.append((time.perf_counter() - start) * 1000)
    counts = [0] * concurrency

    def client(index):
        with SamPredictor(url, model=name) as predictor:
            predictor.set_image(image)
            stop = time.perf_counter() + concurrent_seconds
            while time.perf_counter() < stop:
                predictor.predict(point_coords=points[counts[index] % len(points)], point_labels=np.array([1]))
                counts[index] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
        "clicks": single,
        "concurrent_clients": concurrency,
        "clicks_per_s_concurrent": round(sum(counts) / elapsed, 1),
    }


def amg(url, name, model_type, reference_sam, image, settings, device):
    import torch

    from samtriton import SamAutomaticMaskGenerator, SamPredictor

    _, Reference = reference_classes(model_type)
    with SamPredictor(url, model=name) as predictor:
        generator = SamAutomaticMaskGenerator(predictor, **settings)
        generator.generate(image[:256, :256])  # warm
        start = time.perf_counter()
        ours = generator.generate(image)
        ours_s = time.perf_counter() - start
    reference_generator = Reference(reference_sam, **settings)
    reference_generator.generate(image[:256, :256])  # warm
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    reference = reference_generator.generate(image)
    if device == "cuda":
        torch.cuda.synchronize()
    reference_s = time.perf_counter() - start
    matched = [max((mask_iou(r["segmentation"], o["segmentation"]) for o in ours), default=0.0) for r in reference]
    return {
        "image": list(image.shape[:2]),
        "settings": settings,
        "seconds": round(ours_s, 3),
        "reference_seconds": round(reference_s, 3),
        "ratio": round(ours_s / reference_s, 3),
        "masks": len(ours),
        "reference_masks": len(reference),
        "matched_at_0.9": sum(iou >= 0.9 for iou in matched),
        "min_matched_iou": round(min(matched, default=1.0), 4),
    }


def check_model(model_type, args, bundle, work, images) -> dict:
    """Export ``model_type`` with the torch backends, serve it and measure it; raises
    ``ModelCheckFailed`` (with the server's log) when serving or measuring fails."""
    from samtriton.export.exporter import export
    from samtriton.export.repository import RepositoryOptions
    from samtriton.server import EmbeddedTriton

    result = {"model": model_type}
    started = time.perf_counter()
    checkpoint, result["weights"] = build_checkpoint(model_type, bundle, work, args.checkpoint)
    repo = work / f"repo_{model_type}"
    shutil.rmtree(repo, ignore_errors=True)
    options = RepositoryOptions(
        name="sam",
        encoder_backend="torch",
        decoder_backend="torch",
        torch_device=args.device,
        torch_compile=args.compile,
        amg_instances=1,
        encoder_instances=args.encoder_instances,
    )
    export(model_type, repo, checkpoint=checkpoint, options=options, allow_unverified=True, log=lambda *_: None)
    result["precision"] = json.loads((repo / "sam.export.json").read_text())["torch"]["precision"]
    result["export_s"] = round(time.perf_counter() - started, 1)
    memory = GpuMemory(args.device)
    extra = ["--pinned-memory-pool-byte-size=268435456"] if args.device == "cuda" else []
    server = EmbeddedTriton.on_free_ports(repo, extra_args=extra, startup_timeout=args.ready_timeout)
    try:
        measure_served(server, model_type, args, checkpoint, images, result)
    except Exception as exc:
        raise ModelCheckFailed(f"{type(exc).__name__}: {exc}", server.log_lines) from exc
    finally:
        result["gpu_peak_gib"] = memory.stop()
    result["seconds"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(repo, ignore_errors=True)
    return result


class ModelCheckFailed(Exception):
    """A model's check failed; ``log`` holds what its tritonserver (and its stubs) printed."""

    def __init__(self, message: str, log):
        super().__init__(message)
        self.log = list(log)


def measure_served(server, model_type, args, checkpoint, images, result) -> None:
    """Starts ``server`` and fills ``result`` with what is measured through it."""
    import numpy as np
    from PIL import Image

    start = time.perf_counter()
    with server:
        result["cold_start_s"] = round(time.perf_counter() - start, 1)
        reference_sam = reference_model(model_type, checkpoint, args.device)
        result["parity"] = parity(server.grpc_url, "sam", model_type, reference_sam, images, args.quick)
        result["encoder_images_per_s"] = encoder_throughput(
            server.grpc_url, "sam", images, args.seconds, args.concurrency, getattr(server, "admin_headers", {})
        )
        result["encoder_concurrency"] = args.concurrency
        result["reference_set_image_per_s"] = reference_set_image_rate(
            model_type, reference_sam, images, args.seconds, args.device
        )
        result["clicks"] = clicks(
            server.grpc_url, "sam", images, 20 if args.quick else 300, args.seconds, args.click_clients
        )
        if model_type in args.amg_models:
            coffee = images.get("coffee", next(iter(images.values())))
            if args.quick:
                photo, settings = coffee[:200, :300], dict(points_per_side=6)
            else:  # a phone-photo size: 2100 x 1400 (2.9 MP), the reference's defaults
                photo, settings = np.asarray(Image.fromarray(coffee).resize((2100, 1400), Image.BICUBIC)), {}
            result["amg"] = amg(server.grpc_url, "sam", model_type, reference_sam, photo, settings, args.device)


def headline(report) -> str:
    """The report's first line: what was measured, on what, and what failed."""
    ok = [r["model"] for r in report["models"] if "error" not in r]
    failed = [r["model"] for r in report["models"] if "error" in r]
    line = (
        f"GPU serve check on {report['device']} (torch {report['torch']}, Python {report['python']}): "
        f"measured {', '.join(ok) or 'nothing'}"
    )
    return line + (f"; FAILED: {', '.join(failed)}" if failed else "; nothing failed")


def markdown(report) -> str:
    rows = [
        headline(report),
        "",
        "| model | weights | precision | IoU mean / min | encoder img/s (ref set_image/s) | click p50 / p99 ms "
        "| clicks/s x16 | AMG s (ref s, ratio, matched) | cold start s | GPU peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    failures = []
    for r in report["models"]:
        if "error" in r:
            rows.append(f"| {r['model']} | error: {r['error'][:120]} |" + " |" * 8)
            failures += ["", f"### {r['model']}: {r['error']}", "", "server log, last lines:", "```"]
            failures += [*r.get("server_log_tail", []), "```"]
            continue
        amg_cell = "-"
        if "amg" in r:
            a = r["amg"]
            amg_cell = (
                f"{a['seconds']} ({a['reference_seconds']}, {a['ratio']}x, "
                f"{a['matched_at_0.9']}/{a['reference_masks']})"
            )
        rows.append(
            f"| {r['model']} | {r['weights']} | {r['precision']} | {r['parity']['iou_mean']} / {r['parity']['iou_min']}"
            f" | {r['encoder_images_per_s']} ({r['reference_set_image_per_s']}) | {r['clicks']['p50_ms']} / "
            f"{r['clicks']['p99_ms']} | {r['clicks']['clicks_per_s_concurrent']} | {amg_cell} | {r['cold_start_s']} "
            f"| {r['gpu_peak_gib']} |"
        )
    return "\n".join(rows + failures) + "\n"


def failure_record(model_type, exc, log_dir: Path) -> dict:
    """A failed model's entry: the error, and the tail of its server's log (the whole kept log
    goes to ``log_dir``)."""
    record = {
        "model": model_type,
        "error": f"{exc}" if isinstance(exc, ModelCheckFailed) else f"{type(exc).__name__}: {exc}",
    }
    log = getattr(exc, "log", [])
    if log:
        path = log_dir / f"server_{model_type}.log"
        path.write_text("\n".join(log) + "\n")
        record["server_log"] = str(path)
        record["server_log_tail"] = log[-LOG_TAIL:]
    return record


def run(args) -> int:
    """Checks each model; 1 when any failed (the device run must fail loudly), else 0."""
    import torch

    bundle = Path(args.bundle) if args.bundle else None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log_dir = Path(args.json).parent if args.json else work
    log_dir.mkdir(parents=True, exist_ok=True)
    images = photos(bundle)
    report = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "models": [],
    }
    for model_type in args.models:
        try:
            report["models"].append(check_model(model_type, args, bundle, work, images))
        except Exception as exc:  # noqa: BLE001 - one model's failure is recorded; the others still run
            report["models"].append(failure_record(model_type, exc, log_dir))
            if args.strict:
                write_report(report, args)
                raise
        print(json.dumps(report["models"][-1]), flush=True)
        write_report(report, args)
    print(markdown(report))
    failed = any("error" in r for r in report["models"])
    print(headline(report), file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0


def write_report(report, args) -> None:
    report["headline"] = headline(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(report))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    staging = sub.add_parser("stage", help="here: stage the bundle a bare CUDA machine needs")
    staging.add_argument("out", help="bundle directory")
    staging.add_argument("--checkpoint", help="MobileSAM's checkpoint (default: the cached official one)")
    staging.add_argument("--python-version", default="3.12", help="the GPU machine's Python (its stub is kept)")
    staging.add_argument(
        "--libpython", help="a shared libpythonX.Y.so.1.0 to carry (default: that of pythonX.Y here, if any)"
    )
    running = sub.add_parser("run", help="measure (on the GPU, or --device cpu for the smoke run)")
    running.add_argument("--bundle", help="the staged bundle: set up its environment first (on the GPU machine)")
    running.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    running.add_argument("--models", nargs="+", default=["vit_t", "vit_b", "vit_h"])
    running.add_argument("--amg-models", nargs="*", default=["vit_h"], help="models whose AMG is measured")
    running.add_argument(
        "--compile", default="none", help="the encoder's torch.compile mode (export's --torch-compile)"
    )
    running.add_argument("--encoder-instances", type=int, default=1)
    running.add_argument("--concurrency", type=int, default=16, help="encoder throughput client threads")
    running.add_argument("--click-clients", type=int, default=16, help="concurrent clicking clients")
    running.add_argument("--seconds", type=float, default=10.0, help="seconds per throughput measurement")
    running.add_argument(
        "--checkpoint", help="MobileSAM's real checkpoint for vit_t (default: the bundle's fp16 weights, else random)"
    )
    running.add_argument("--ready-timeout", type=float, default=300.0)
    running.add_argument("--quick", action="store_true", help="the CPU smoke run: one photo, few clicks, tiny AMG")
    running.add_argument("--strict", action="store_true", help="stop at the first model that fails (raise)")
    running.add_argument("--work", default="/tmp/samtriton-gpu-check")
    running.add_argument("--json")
    running.add_argument("--markdown")
    args = parser.parse_args(argv)
    if args.command == "stage":
        stage(Path(args.out), args.checkpoint, args.python_version, args.libpython)
        return 0
    if args.bundle and not in_check_venv():
        setup(Path(args.bundle))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PATH"] = os.pathsep.join([str(VENV / "bin"), env.get("PATH", "")])
        return subprocess.run([str(VENV / "bin" / "python"), __file__, *sys.argv[1:]], env=env).returncode
    return run(args)


def in_check_venv() -> bool:
    """Whether this process runs in the set-up venv. Its python is a link to the base one, so
    only sys.prefix tells them apart (comparing the resolved executables skipped the set-up on
    a warm machine's second run)."""
    return Path(sys.prefix).resolve() == VENV.resolve()


if __name__ == "__main__":
    sys.exit(main())
