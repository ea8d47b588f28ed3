"""scripts/gpu_check.py, apart from CUDA: staged as for a GPU machine, then run on CPU
(--quick) with every package a bare CUDA PyTorch machine lacks made unimportable."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"

# Runs a script with the packages a bare CUDA PyTorch machine lacks made unimportable; the
# reference packages may come only from the stage folder (argv[1]).
BARE_MACHINE = r"""
import importlib.abc, importlib.machinery, runpy, sys
LACKING = {"tritonclient", "grpc", "PIL", "skimage", "tensorrt", "tqdm", "threadpoolctl", "cv2", "pycocotools",
           "torchvision", "timm", "matplotlib", "scipy"}
STAGE = sys.argv.pop(1)

class BareMachine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        if top in LACKING:
            raise ModuleNotFoundError(f"{name}: not on a bare CUDA PyTorch machine")
        if top in ("segment_anything", "mobile_sam"):
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or not str(spec.origin).startswith(STAGE):
                raise ModuleNotFoundError(f"{name}: only the staged copy is carried")
            return spec
        return None

sys.meta_path.insert(0, BareMachine())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_gpu_check_runs_on_cpu_with_a_bare_machines_packages(checkpoint, tmp_path):
    stage = tmp_path / "gpu_stage"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--stage", str(stage), "--checkpoint", str(checkpoint)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    staged = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file())
    assert staged < 64 * 2**20, "one device call carries at most 64 MiB"
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            BARE_MACHINE,
            str(stage),
            str(SCRIPT),
            "--device",
            "cpu",
            "--quick",
            "--stage-dir",
            str(stage),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["settings"]["image_source"] == "staged photographs" and document["environment"]["tf32"] is False
    (model,) = document["models"]
    assert (model["model"], model["weights"]) == ("vit_t", "real")
    bf16 = model["precisions"]["bf16"]
    assert bf16["finite"] and bf16["masks_compared"] == 11 * 4
    assert 0 < bf16["embedding_max_abs_diff"] < 1 and bf16["mask_iou_mean"] > 0.9
    # Throughputs are measured (a float each, not "OOM"), for each precision at batch 1,
    # and the report's rows carry them.
    rates = model["images_per_s"]
    assert {name: set(by_batch) for name, by_batch in rates.items()} == {"fp32": {"1"}, "bf16": {"1"}}
    assert all(isinstance(rate, float) for by_batch in rates.values() for rate in by_batch.values()), rates
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| vit_t | real | bf16 |")]
    assert row.rstrip(" |").split("|")[-1].strip() == f"{rates['bf16']['1']:.4g}", row


def test_gpu_check_refuses_cuda_where_there_is_none(tmp_path):
    """No CUDA device visible (hidden on a machine that has one): one line, exit 1."""
    import os

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1 and "--device cpu" in result.stderr and "Traceback" not in result.stderr
