"""Encoder ONNX -> serialized TensorRT engine (``model.plan``) with the TensorRT Python API.

An engine is specific to the GPU model and the TensorRT version that built it: build it on
the serving GPU model, inside the Triton container release that will serve it (see
``docker/``). The build records both in ``model.plan.json`` beside the plan.

FP16 is the default, but SAM encoders give NaN or garbage in pure FP16 (segment-anything
#540, #696; NVIDIA/TensorRT #2564; NanoSAM keeps MobileSAM's encoder in FP32): the layers
that overflow in FP16 (normalizations, softmax, the reductions and powers of a decomposed
LayerNorm, exponentials) are pinned to FP32 with precision constraints.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from samtriton import contract as C

CONTAINER_HINT = (
    "build engines inside NVIDIA's TensorRT or Triton container (see docker/Dockerfile.export, "
    "nvcr.io/nvidia/tensorrt) on the GPU model that will serve them"
)


class TensorRTUnavailable(RuntimeError):
    pass


DEFAULT_OPT_BATCH = 4


@dataclass(frozen=True)
class EngineOptions:
    precision: str = "fp16"  # or "fp32"
    min_batch: int = 1
    # None: DEFAULT_OPT_BATCH clamped into [min_batch, max_batch], so a small --max-batch
    # alone gives a valid profile; an explicit value outside that range is an error.
    opt_batch: Optional[int] = None
    max_batch: int = 8
    workspace_gib: float = 4.0
    timing_cache: Optional[str] = None  # reused across builds when given

    def __post_init__(self):
        if self.precision not in ("fp16", "fp32"):
            raise ValueError(f"--precision must be fp16 or fp32, got {self.precision!r}")
        if self.opt_batch is None:
            object.__setattr__(self, "opt_batch", max(self.min_batch, min(DEFAULT_OPT_BATCH, self.max_batch)))
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                "batch profile must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if self.workspace_gib <= 0:
            raise ValueError(f"--workspace-gib must be positive, got {self.workspace_gib}")


def require_tensorrt():
    """Import tensorrt and check for a CUDA GPU, or fail with what to install and where."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a CUDA library that cannot load
        raise TensorRTUnavailable(
            f"--encoder-backend tensorrt needs the 'tensorrt' Python package and a CUDA GPU ({exc}); "
            f"{CONTAINER_HINT}. Nothing was written."
        ) from None
    return trt


# Layer types kept in FP32 under --precision fp16 (looked up by name: they vary by version).
_FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
_FP32_UNARY = ("EXP", "SQRT")
_FP32_ELEMENTWISE = ("POW", "DIV")
_FLOAT_TYPES = ("FLOAT", "HALF", "BF16")


def _is_float(trt, tensor) -> bool:
    return any(tensor.dtype == getattr(trt.DataType, name, None) for name in _FLOAT_TYPES)


def _all_float(trt, layer) -> bool:
    """Only layers on floating-point tensors may be pinned: the same op types also do the
    graph's integer shape arithmetic (ViT-B has ~40 INT64 Div), and TensorRT rejects a
    float output type on those."""
    inputs = [layer.get_input(i) for i in range(layer.num_inputs)]
    outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
    return all(_is_float(trt, t) for t in inputs + outputs if t is not None)


def _keep_in_fp32(trt, layer) -> bool:
    kind = layer.type
    if any(kind == getattr(trt.LayerType, name, None) for name in _FP32_LAYER_TYPES):
        return _all_float(trt, layer)
    if kind == trt.LayerType.UNARY:
        layer.__class__ = trt.IUnaryLayer
        return any(layer.op == getattr(trt.UnaryOperation, n, None) for n in _FP32_UNARY) and _all_float(trt, layer)
    if kind == trt.LayerType.ELEMENTWISE:
        layer.__class__ = trt.IElementWiseLayer
        return any(layer.op == getattr(trt.ElementWiseOperation, n, None) for n in _FP32_ELEMENTWISE) and _all_float(
            trt, layer
        )
    return False


def _pin_fp32_layers(trt, network) -> int:
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if _keep_in_fp32(trt, layer):
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def _use_timing_cache(trt, config, path: Optional[str], log):
    """Load the timing cache at ``path`` into ``config``, or start a fresh one when the file
    is absent or was written by another GPU model or TensorRT version (TensorRT refuses it:
    ``set_timing_cache`` returns False, and ignoring that fails the build minutes later)."""
    if not path:
        return None
    data = Path(path).read_bytes() if Path(path).exists() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
            loaded = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
        except Exception:  # noqa: BLE001 - a damaged file: TensorRT raises instead of returning False
            loaded = False
        if loaded:
            log(f"timing cache {path}: loaded ({len(data)} bytes)")
            return cache
        log(
            f"WARNING: timing cache {path} does not fit this GPU model / TensorRT {trt.__version__} (or is "
            "damaged); building with a fresh cache, which replaces it"
        )
    cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise RuntimeError("TensorRT refused a fresh, empty timing cache")
    return cache


def build_engine(
    onnx_path: os.PathLike, plan_path: os.PathLike, options: EngineOptions = EngineOptions(), log=print
) -> Path:
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {onnx_path}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 1024**3))
    profile = builder.create_optimization_profile()
    for spec in C.ENCODER.inputs:
        shape = lambda batch: (batch,) + spec.dims  # noqa: E731
        profile.set_shape(spec.name, shape(options.min_batch), shape(options.opt_batch), shape(options.max_batch))
    config.add_optimization_profile(profile)

    pinned = 0
    if options.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32_layers(trt, network)
        log(f"fp16 build: {pinned} of {network.num_layers} layers pinned to fp32")
    else:
        # TF32 is on by default: an "fp32" engine would run its matmuls and convolutions in TF32.
        config.clear_flag(trt.BuilderFlag.TF32)

    cache = _use_timing_cache(trt, config, options.timing_cache, log)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt, log)

    log(
        f"building the engine (batch {options.min_batch}/{options.opt_batch}/{options.max_batch}, "
        f"{options.precision}); this takes minutes"
    )
    start = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine; see the TensorRT log above")
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    if cache is not None:
        Path(options.timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    record = {
        "tensorrt_version": trt.__version__,
        "gpu": _gpu_name(),
        "build_seconds": round(time.monotonic() - start, 1),
        "fp32_pinned_layers": pinned,
        "tf32": bool(config.get_flag(trt.BuilderFlag.TF32)),
        **asdict(options),
    }
    Path(str(plan_path) + ".json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"wrote {plan_path} ({plan_path.stat().st_size / 2**20:.0f} MiB) in {record['build_seconds']} s")
    return plan_path


def _progress_monitor(trt, log):
    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        # TensorRT's signature: phase_start(phase_name, parent_phase, num_steps).
        def phase_start(self, phase_name, parent_phase, num_steps):
            log(f"  {phase_name} ({num_steps} steps)" + (f" in {parent_phase}" if parent_phase else ""))

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            pass

    return Progress()


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:
        return "unknown"
