"""The GPU check set up and run the way the GPU machine will run it, before any GPU time is
spent (scripts/gpu_emulate.py): a shared-built Python 3.12 whose base site-packages holds only
the GPU machine's packages, no network but loopback, an empty environment, a copy of what the
device tool carries with the staged bundle at out/gpu_bundle, then

    python3 scripts/gpu_serve_check.py run --bundle out/gpu_bundle --device cpu --quick \\
        --models vit_t --amg-models vit_t

cold, then warm (a second run on the same machine). Each failure this catches (a dependency
not staged, a package left out of the wheel, a stub that dies) would have cost a lent GPU.

Slow (~10 min on 2 cores, and ~5 GB for the machine's packages, installed once into
~/.cache/samtriton): ``pytest -m slow tests/test_gpu_emulation.py``. Needs root (unshare).
"""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_serve_check.py"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_gpu_check_runs_on_an_emulated_gpu_machine_cold_then_warm(checkpoint, tmp_path):
    bundle = tmp_path / "gpu_bundle"
    subprocess.run([sys.executable, str(SCRIPT), "stage", str(bundle), "--checkpoint", str(checkpoint)], check=True)
    emulate = runpy.run_path(str(ROOT / "scripts" / "gpu_emulate.py"))["emulate"]
    # The machine's folder is not under /tmp: the emulated machine gets a /tmp of its own.
    cold, warm = emulate(bundle, ROOT / "out" / "gpu_emulation_test")
    for run in (cold, warm):
        assert run["returncode"] == 0, f"{run['name']}:\n{run['log'][-6000:]}"
        [model] = run["report"]["models"]
        assert "error" not in model, model
        # The same fp16-rounded weights on both sides, fp32 on the CPU: identical masks.
        assert model["parity"]["masks"] == 6 and model["parity"]["iou_min"] >= 0.999
        assert model["encoder_images_per_s"] > 0 and model["clicks"]["p99_ms"] >= model["clicks"]["p50_ms"] > 0
        amg = model["amg"]
        assert amg["reference_masks"] > 0 and amg["matched_at_0.9"] == amg["reference_masks"]
        assert model["cold_start_s"] > 0
        assert run["report"]["headline"].endswith("measured vit_t; nothing failed")
    assert "set-up: /tmp/samtriton-gpu-venv in" in cold["log"]
    assert "already set up from this bundle" in warm["log"]
