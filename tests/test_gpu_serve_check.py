"""scripts/gpu_serve_check.py, the GPU check of the served product, on the CPU device (CI's
smoke run) and its staging for a bare CUDA machine.

The smoke run is the same code as the GPU run: export with the torch backends, the embedded
server, parity against the reference, throughput, clicks and AMG, on the CPU device with the
real MobileSAM checkpoint (measured here: every mask IoU 1.0, scores within 1.2e-7, AMG 6 of
6 reference masks matched at IoU 1.0). It proves the script runs; it measures no GPU.
"""

import json
import lzma
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_serve_check.py"


@pytest.mark.timeout(900)
def test_cpu_smoke_run(checkpoint, tmp_path):
    out = tmp_path / "smoke.json"
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "run",
            "--device",
            "cpu",
            "--quick",
            "--models",
            "vit_t",
            "--amg-models",
            "vit_t",
            "--seconds",
            "1",
            "--concurrency",
            "2",
            "--click-clients",
            "2",
            "--checkpoint",
            str(checkpoint),
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "smoke.md"),
            "--strict",
        ],
        check=True,
        timeout=880,
    )
    report = json.loads(out.read_text())
    [model] = report["models"]
    assert model["model"] == "vit_t" and model["weights"] == "real" and model["precision"] == "fp32"
    # Measured IoU 1.0 and 1.2e-7 (fp32 on both sides); margins: 1e-3 of IoU, ~100x on scores.
    assert model["parity"]["masks"] == 6 and model["parity"]["iou_min"] >= 0.999
    assert model["parity"]["score_diff_max"] <= 1e-5
    amg = model["amg"]
    assert amg["reference_masks"] > 0 and amg["masks"] == amg["reference_masks"]
    assert amg["matched_at_0.9"] == amg["reference_masks"] and amg["min_matched_iou"] >= 0.999
    assert model["encoder_images_per_s"] > 0 and model["clicks"]["clicks"] == 20
    assert model["clicks"]["p99_ms"] >= model["clicks"]["p50_ms"] > 0
    table = (tmp_path / "smoke.md").read_text()
    assert "| vit_t | real | fp32 | 1.0 / 1.0 |" in table


@pytest.mark.timeout(420)
def test_stage_fits_the_device_carry_and_holds_what_a_bare_cuda_machine_lacks(checkpoint, tmp_path):
    bundle = tmp_path / "bundle"
    subprocess.run(
        [sys.executable, str(SCRIPT), "stage", str(bundle), "--checkpoint", str(checkpoint)], check=True, timeout=400
    )
    total = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    tree = sum((ROOT / name).stat().st_size for name in tracked.decode().split("\0") if name and (ROOT / name).exists())
    assert total + tree < 64 * 2**20, f"bundle {total / 2**20:.1f} MiB + tree {tree / 2**20:.1f} MiB"
    wheels = {p.name.split("-")[0] for p in (bundle / "wheels").glob("*.whl")}
    # Derived from the wheels' metadata: samtriton's own dependencies (threadpoolctl, safetensors,
    # tqdm) and those of its extras, never what the GPU machine has (torch, numpy, onnx, ...).
    assert {"samtriton", "tritonclient", "python_rapidjson", "segment_anything", "mobilesam_mirror"} <= wheels
    assert {"threadpoolctl", "safetensors", "tqdm"} <= wheels
    assert not wheels & {"torch", "onnx", "onnxruntime", "grpcio", "pillow", "scikit_image", "nvidia_pytriton"}
    # numpy is the exception: tritonserver's stubs need nvidia-pytriton's numpy<2 (its metadata).
    assert (bundle / "requirements.txt").read_text().split() == ["numpy<2.0.0,>=1.21"]
    [numpy] = (bundle / "wheels").glob("numpy-*.whl")
    assert numpy.name.startswith("numpy-1.") and "cp312" in numpy.name
    with zipfile.ZipFile(bundle / "wheels" / next(p.name for p in (bundle / "wheels").glob("samtriton-*"))) as wheel:
        names = set(wheel.namelist())
    assert {
        "samtriton/server/models/torch_encoder.py",
        "samtriton/server/torch_stage.py",
        "samtriton/server/amg_filter/graph.py",
        "samtriton/export/torch_weights.py",
    } <= names
    with zipfile.ZipFile(bundle / "pytriton_slim.zip") as slim:
        names = slim.namelist()
    assert "pytriton/tritonserver/bin/tritonserver" in names
    assert "pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" in names
    assert not any("/3.13/" in n or "libpython3-" in n for n in names)
    from safetensors.torch import load

    weights = load(lzma.decompress((bundle / "mobile_sam_fp16.safetensors.xz").read_bytes()))
    assert weights["mask_decoder.iou_token.weight"].dtype.itemsize == 2
    # libpython 3.12 for a machine whose Python has none: a shared library with that soname.
    carried = bundle / "libpython3.12.so.1.0.xz"
    assert carried.exists(), "no shared Python 3.12 here to take libpython from"
    library = tmp_path / "libpython3.12.so.1.0"
    library.write_bytes(lzma.decompress(carried.read_bytes()))
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    assert "Library soname: [libpython3.12.so.1.0]" in dynamic


@pytest.mark.timeout(60)
def test_a_failing_model_exits_non_zero_with_the_server_log(checkpoint, tmp_path):
    """A model whose server cannot start: the run goes on to its end, exits 1, and the JSON and
    markdown carry the failure and the server's own last lines (here: a ready timeout of 2 s, shorter than the torch models take to load,
    so what failed is known and the server log is tritonserver's start-up)."""
    out = tmp_path / "run.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--device", "cpu", "--quick", "--models", "vit_t", "--amg-models"]
        + ["--checkpoint", str(checkpoint), "--ready-timeout", "2", "--work", str(tmp_path / "work")]
        + ["--json", str(out), "--markdown", str(tmp_path / "run.md")],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    [model] = json.loads(out.read_text())["models"]
    assert model["error"].startswith("ServerStartError") and model["server_log_tail"]
    assert any("tritonserver" in line.lower() or "triton" in line.lower() for line in model["server_log_tail"])
    table = (tmp_path / "run.md").read_text()
    assert table.splitlines()[0].endswith("measured nothing; FAILED: vit_t")
    assert "server log, last lines:" in table and model["server_log_tail"][-1] in table
