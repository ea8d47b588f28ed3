"""TensorRT encoder: fails fast where TensorRT is absent; builds and matches ONNX Runtime where
it is present (NVIDIA's containers with a GPU; skipped elsewhere with the reason)."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from helpers import mask_iou, prompts_for
from samtriton.transforms import postprocess_masks, preprocess


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
    result = subprocess.run([sys.executable, "-m", "samtriton.cli", "export", "--model-type", "vit_t", "--checkpoint",
                             str(checkpoint), "--repository", str(repo), "--encoder-backend", "tensorrt"],
                            capture_output=True, text=True, timeout=120)
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
        feeds = {"point_coords": (box.reshape(1, 2, 2) * scale).astype(np.float32),
                 "point_labels": np.array([[2, 3]], np.float32), "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                 "has_mask_input": np.zeros(1, np.float32)}
        masks = [postprocess_masks(decoder.run(None, dict(feeds, image_embeddings=e))[0][:, :1], size,
                                   images[name].shape[:2])[0, 0] > 0 for e in (trt_embedding, ort_embedding)]
        assert mask_iou(*masks) >= min_iou
