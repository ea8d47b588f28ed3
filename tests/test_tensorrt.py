"""TensorRT encoder: fails fast where TensorRT is absent; builds and matches ONNX Runtime where
it is present (NVIDIA's containers with a GPU; skipped elsewhere with the reason).

On CPU, build_engine's own logic (FP32 pinning, TF32, timing cache, progress monitor, batch
profile) runs against ``trt_standin``, a labelled stand-in for TensorRT's Python API whose
network is built from the real exported ONNX graphs (MobileSAM, and ViT-B with random weights).
"""

import importlib.util
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from samtriton.transforms import postprocess_masks, preprocess

from helpers import mask_iou, prompts_for


def _tensorrt_and_gpu():
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (it comes from NVIDIA's index / containers)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device"
    except ImportError:
        return "torch is not installed"
    return None


SKIP_REASON = _tensorrt_and_gpu()


@pytest.mark.skipif(SKIP_REASON is None, reason="TensorRT is installed here")
def test_export_tensorrt_fails_fast_and_writes_nothing(checkpoint, tmp_path):
    repo = tmp_path / "repo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "samtriton.tools.cli",
            "export",
            "--model-type",
            "vit_t",
            "--checkpoint",
            str(checkpoint),
            "--repository",
            str(repo),
            "--encoder-backend",
            "tensorrt",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "'tensorrt' Python package" in result.stderr and "nvcr.io/nvidia/tensorrt" in result.stderr
    assert "Nothing was written" in result.stderr
    assert not repo.exists()


@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
@pytest.mark.parametrize("precision, max_diff, min_iou", [("fp32", 1e-2, 0.99), ("fp16", 0.1, 0.98)])
def test_engine_matches_onnxruntime(onnx_files, images, tmp_path, precision, max_diff, min_iou):
    import onnxruntime as ort
    import tensorrt as trt
    import torch

    from samtriton.export.tensorrt_engine import EngineOptions, build_engine

    plan = build_engine(onnx_files[0], tmp_path / "model.plan", EngineOptions(precision=precision, max_batch=2))
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    encoder = ort.InferenceSession(str(onnx_files[0]), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(onnx_files[1]), providers=["CPUExecutionProvider"])
    for name in ("astronaut", "retina_crop"):
        padded, size = preprocess(images[name])
        image = torch.from_numpy(padded[None]).cuda()
        input_size = torch.tensor([size], dtype=torch.int64).cuda()
        output = torch.empty((1, 256, 64, 64), dtype=torch.float32, device="cuda")
        context.set_input_shape("image", tuple(image.shape))
        context.set_input_shape("input_size", tuple(input_size.shape))
        for tensor_name, tensor in (("image", image), ("input_size", input_size), ("image_embeddings", output)):
            context.set_tensor_address(tensor_name, tensor.data_ptr())
        assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        trt_embedding = output.cpu().numpy()
        ort_embedding = encoder.run(None, {"image": padded[None], "input_size": np.array([size], np.int64)})[0]
        diff = np.abs(trt_embedding - ort_embedding).max()
        assert np.isfinite(trt_embedding).all() and diff <= max_diff, f"{name}: max abs diff {diff}"
        box = prompts_for(images[name].shape)["box"]["box"]
        scale = 1024 / max(images[name].shape[:2])
        feeds = {
            "point_coords": (box.reshape(1, 2, 2) * scale).astype(np.float32),
            "point_labels": np.array([[2, 3]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        }
        masks = [
            postprocess_masks(
                decoder.run(None, dict(feeds, image_embeddings=e))[0][:, :1], size, images[name].shape[:2]
            )[0, 0]
            > 0
            for e in (trt_embedding, ort_embedding)
        ]
        assert mask_iou(*masks) >= min_iou


# --- CPU: the batch profile -------------------------------------------------------------


def test_default_opt_batch_is_clamped_into_the_profile():
    from samtriton.export.tensorrt_engine import EngineOptions

    assert EngineOptions().opt_batch == 4
    assert EngineOptions(max_batch=2).opt_batch == 2
    assert EngineOptions(max_batch=1).opt_batch == 1
    assert EngineOptions(min_batch=6, max_batch=8).opt_batch == 6
    assert EngineOptions(opt_batch=3, max_batch=8).opt_batch == 3
    with pytest.raises(ValueError, match="--opt-batch"):
        EngineOptions(opt_batch=4, max_batch=2)  # an explicit value is not changed
    with pytest.raises(ValueError, match="--min-batch"):
        EngineOptions(min_batch=3, max_batch=2)


@pytest.mark.parametrize(
    "flags, profile",
    [
        (["--max-batch", "2"], (1, 2, 2)),
        (["--max-batch-size", "2"], (1, 2, 2)),
        ([], (1, 4, 8)),
        (["--min-batch", "2", "--opt-batch", "3", "--max-batch", "6"], (2, 3, 6)),
    ],
)
def test_cli_batch_profile(flags, profile):
    from samtriton.tools.cli import build_parser, engine_options

    args = build_parser().parse_args(
        ["export", "--model-type", "vit_t", "--repository", "r", "--encoder-backend", "tensorrt", *flags]
    )
    options = engine_options(args)
    assert (options.min_batch, options.opt_batch, options.max_batch) == profile


# --- CPU: build_engine against the TensorRT stand-in ------------------------------------


@pytest.fixture
def standin(monkeypatch):
    import trt_standin

    monkeypatch.setitem(sys.modules, "tensorrt", trt_standin)
    return trt_standin


@pytest.fixture(scope="module")
def vit_b_encoder(tmp_path_factory):
    from export_graphs import random_weight_encoder

    return random_weight_encoder("vit_b", tmp_path_factory)


def _build(onnx_path, tmp_path, **options):
    from samtriton.export.tensorrt_engine import EngineOptions, build_engine

    lines = []
    plan = build_engine(onnx_path, tmp_path / "model.plan", EngineOptions(**options), log=lines.append)
    return json.loads(plan.read_bytes()), json.loads((tmp_path / "model.plan.json").read_text()), lines


def _expected_fp32_nodes(onnx_path):
    """The ONNX nodes that should end up pinned, counted from the graph itself: the op types
    build_engine pins, where every input and output is floating point."""
    import onnx

    from export_graphs import tensor_types

    graph, types = tensor_types(onnx_path)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    pinned_ops = {"Div", "Pow", "Sqrt", "Exp", "Softmax", "LayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax"}
    kinds = Counter()
    for node in graph.node:
        if node.op_type in pinned_ops:
            all_float = all(types[t] in floats for t in list(node.input) + list(node.output) if t)
            kinds[(node.op_type, all_float)] += 1
    return kinds


@pytest.mark.parametrize("model", ["vit_t", "vit_b"])
def test_fp16_pins_only_floating_point_layers(standin, model, onnx_files, vit_b_encoder, tmp_path):
    onnx_path = onnx_files[0] if model == "vit_t" else vit_b_encoder
    plan, record, _ = _build(onnx_path, tmp_path, precision="fp16")
    assert plan["pinned"], "some layers are pinned"
    for layer in plan["pinned"]:
        assert set(layer["dtypes"]) <= {"FLOAT", "HALF", "BF16"}, layer
    expected = _expected_fp32_nodes(onnx_path)
    pinned_divs = sum(1 for layer in plan["pinned"] if layer["op"] == "DIV")
    assert pinned_divs == expected[("Div", True)]
    if model == "vit_b":
        assert expected[("Div", False)] >= 30, "ViT-B does integer shape arithmetic with Div"
    assert record["fp32_pinned_layers"] == len(plan["pinned"]) == sum(n for (_, ok), n in expected.items() if ok)
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(plan["flags"])


def test_fp32_engine_clears_tf32(standin, onnx_files, tmp_path):
    plan, record, _ = _build(onnx_files[0], tmp_path, precision="fp32")
    assert "TF32" not in plan["flags"] and "FP16" not in plan["flags"]
    assert record["tf32"] is False and record["precision"] == "fp32"
    assert not plan["pinned"]


def test_timing_cache_from_another_gpu_is_replaced(standin, onnx_files, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(standin.timing_cache_blob(gpu="Another GPU"))
    _, _, lines = _build(onnx_files[0], tmp_path, timing_cache=str(cache))
    warning = [line for line in lines if line.startswith("WARNING")]
    assert len(warning) == 1 and str(cache) in warning[0] and "fresh" in warning[0]
    fields = json.loads(cache.read_bytes()[len(standin.TIMING_CACHE_MAGIC) :])
    assert fields["gpu"] == standin.GPU, "the cache now belongs to this GPU"
    _, _, lines = _build(onnx_files[0], tmp_path, timing_cache=str(cache))
    assert not [line for line in lines if line.startswith("WARNING")]
    assert any("loaded" in line for line in lines)


def test_damaged_timing_cache_is_replaced(standin, onnx_files, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"not a timing cache")
    _, _, lines = _build(onnx_files[0], tmp_path, timing_cache=str(cache))
    assert any(line.startswith("WARNING") for line in lines)
    assert cache.read_bytes().startswith(standin.TIMING_CACHE_MAGIC)


def test_progress_monitor_follows_tensorrt_signature(standin, onnx_files, tmp_path):
    _, _, lines = _build(onnx_files[0], tmp_path)
    assert "  Building engine (2 steps)" in lines
    assert any(line.startswith("  Tactic selection (") and line.endswith(" in Building engine") for line in lines)
    assert not any("None" in line for line in lines)


def test_profile_covers_the_encoder_inputs(standin, onnx_files, tmp_path):
    plan, _, _ = _build(onnx_files[0], tmp_path, max_batch=2)
    (profile,) = plan["profiles"]
    assert profile["image"] == [[1, 1024, 1024, 3], [2, 1024, 1024, 3], [2, 1024, 1024, 3]]
    assert profile["input_size"] == [[1, 2], [2, 2], [2, 2]]
