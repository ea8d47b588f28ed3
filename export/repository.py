"""Write a Triton model repository: NAME_encoder, NAME_decoder, the ensemble NAME, and the
python-backend stages NAME_amg and NAME_session that call them through BLS.

Every ``config.pbtxt`` is built as tritonclient's ``ModelConfig`` protobuf from the contract
and printed in protobuf text format, so names, shapes and dtypes cannot drift from it.

Backends:
- ``python``: python-backend models that run the ONNX graphs with ONNX Runtime; for the
  embedded server (the ``nvidia-pytriton`` wheel ships only the python backend).
- ``onnxruntime``: ``onnxruntime_onnx`` configs for NVIDIA's Triton container (KIND_GPU).
- ``tensorrt``: a ``tensorrt_plan`` encoder config and the engine built by
  ``tensorrt_engine.build_engine`` (KIND_GPU, dynamic batching matching its profile).
- ``torch``: python-backend models running segment-anything's own modules in PyTorch on the
  GPU (``torch_device`` cuda: KIND_GPU) or the CPU, weights as safetensors
  (export/torch_weights.py, server/models/torch_*.py); for the embedded server on a
  GPU machine. Beside a torch decoder, the session and AMG stages decode and filter on
  their own device.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, Optional

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from samtriton import contract as C
from samtriton.export.torch_weights import DECODER_PARTS, ENCODER_PARTS, write_torch_weights
from samtriton.server import config as model_config
from samtriton.server.amg_filter.graph import write_graph as write_amg_filter
from samtriton.server.config import TORCH_COMPILE_MODES, TORCH_PRECISIONS

ENCODER_BACKENDS = ("tensorrt", "onnxruntime", "python", "torch")
DECODER_BACKENDS = ("onnxruntime", "python", "torch")
TORCH_DEVICES = ("cuda", "cpu")
MODEL_VERSION = "1"
ONNX_FILENAME = "model.onnx"
PLAN_FILENAME = "model.plan"


@dataclass(frozen=True)
class RepositoryOptions:
    name: str = C.DEFAULT_MODEL_NAME
    encoder_backend: str = "python"
    decoder_backend: str = "python"
    max_encoder_batch: int = C.MAX_ENCODER_BATCH
    preferred_batch_sizes: tuple = (4, 8)
    max_queue_delay_us: int = 2000
    encoder_instances: int = 1
    decoder_instances: int = 1
    # Two AMG instances let one filter a batch while the other waits on the decoder.
    amg_instances: int = 2
    # ONNX Runtime threads per python-backend instance; 0: one per CPU the stub may use (server/config.py).
    ort_threads: int = 0
    # Two session instances: a click is served while the other instance waits on an encode.
    session_instances: int = 2
    # Embeddings the session model keeps (float32, 4 MiB each: 1024 MiB holds 256 images).
    session_cache_mib: int = C.DEFAULT_SESSION_CACHE_MIB
    # The session cache's directory (absolute). Empty: each server its own, under /dev/shm.
    # A directory set here is shared by every server that serves this repository on a host.
    session_cache_dir: str = ""
    # Working memory of the AMG filter per request (it runs over chunks of masks that fit).
    # None: contract.DEFAULT_AMG_FILTER_MIB on CPU, DEFAULT_AMG_FILTER_MIB_GPU beside a GPU decoder.
    amg_filter_mib: Optional[int] = None
    # The torch backends: the device their instances run on (cuda: KIND_GPU, cpu: KIND_CPU),
    # the encoder's precision (None: torch_runtime.DEFAULT_PRECISION of the architecture),
    # torch.compile's mode for the encoder ("none": eager), and the device memory each
    # session instance keeps embeddings in.
    torch_device: str = "cuda"
    torch_precision: Optional[str] = None
    torch_compile: str = "none"
    device_cache_mib: int = 4096

    def __post_init__(self):
        if self.encoder_backend not in ENCODER_BACKENDS:
            raise ValueError(f"encoder_backend must be one of {ENCODER_BACKENDS}, got {self.encoder_backend!r}")
        if self.decoder_backend not in DECODER_BACKENDS:
            raise ValueError(f"decoder_backend must be one of {DECODER_BACKENDS}, got {self.decoder_backend!r}")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name must be letters, digits, '_' or '-', got {self.name!r}")
        if self.session_instances < 1:
            raise ValueError(f"session_instances must be at least 1, got {self.session_instances}")
        if self.session_cache_mib < 4:
            raise ValueError(f"session_cache_mib must hold at least one embedding (>= 4), got {self.session_cache_mib}")
        if self.session_cache_dir and not os.path.isabs(self.session_cache_dir):
            raise ValueError(f"session_cache_dir must be an absolute path, got {self.session_cache_dir!r}")
        if not 1 <= self.max_encoder_batch <= 64:
            raise ValueError(f"max_encoder_batch must be in 1..64, got {self.max_encoder_batch}")
        if self.torch_device not in TORCH_DEVICES:
            raise ValueError(f"torch_device must be one of {TORCH_DEVICES}, got {self.torch_device!r}")
        if self.torch_precision is not None and self.torch_precision not in TORCH_PRECISIONS:
            raise ValueError(f"torch_precision must be one of {TORCH_PRECISIONS}, got {self.torch_precision!r}")
        if self.torch_compile not in TORCH_COMPILE_MODES:
            raise ValueError(f"torch_compile must be one of {TORCH_COMPILE_MODES}, got {self.torch_compile!r}")
        if self.device_cache_mib < 4:
            raise ValueError(f"device_cache_mib must hold at least one embedding (>= 4), got {self.device_cache_mib}")

    @property
    def gpu_decoder(self) -> bool:
        """Whether the decoder (and the AMG filter beside it) runs on a GPU."""
        return self.decoder_backend == "onnxruntime" or (
            self.decoder_backend == "torch" and self.torch_device == "cuda"
        )


def _tensor(spec: C.TensorSpec, cls):
    return cls(name=spec.name, data_type=mc.DataType.Value(spec.config_dtype), dims=list(spec.dims))


def _input(spec: C.TensorSpec) -> mc.ModelInput:
    tensor = _tensor(spec, mc.ModelInput)
    tensor.optional = spec.optional
    return tensor


def _io(config: mc.ModelConfig, model_spec: C.ModelSpec) -> None:
    config.input.extend(_input(s) for s in model_spec.inputs)
    config.output.extend(_tensor(s, mc.ModelOutput) for s in model_spec.outputs)


def _instances(config: mc.ModelConfig, count: int, gpu: bool) -> None:
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=count, kind=kind)


def _backend(config: mc.ModelConfig, backend: str, options: RepositoryOptions) -> None:
    if backend == "python":
        config.backend = "python"
        model_config.write(config, ort_intra_op_threads=options.ort_threads)
    elif backend == "torch":
        config.backend = "python"
    elif backend == "onnxruntime":
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = ONNX_FILENAME
    elif backend == "tensorrt":
        config.platform = "tensorrt_plan"
        config.default_model_filename = PLAN_FILENAME


def encoder_config(options: RepositoryOptions) -> mc.ModelConfig:
    spec = C.ENCODER
    config = mc.ModelConfig(name=spec.served_name(options.name), max_batch_size=options.max_encoder_batch)
    _backend(config, options.encoder_backend, options)
    _io(config, spec)
    preferred = [b for b in options.preferred_batch_sizes if b <= options.max_encoder_batch]
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    _instances(config, options.encoder_instances, gpu=_on_gpu(options.encoder_backend, options))
    if options.encoder_backend == "tensorrt":
        config.optimization.cuda.graphs = True
    if options.encoder_backend == "torch":
        model_config.write(
            config,
            torch_precision=options.torch_precision or "fp32",
            torch_compile=options.torch_compile,
            torch_fused_attention=True,
        )
    return config


def _on_gpu(backend: str, options: RepositoryOptions) -> bool:
    return backend in ("onnxruntime", "tensorrt") or (backend == "torch" and options.torch_device == "cuda")


def decoder_config(options: RepositoryOptions) -> mc.ModelConfig:
    spec = C.DECODER
    config = mc.ModelConfig(name=spec.served_name(options.name), max_batch_size=0)
    _backend(config, options.decoder_backend, options)
    _io(config, spec)
    _instances(config, options.decoder_instances, gpu=_on_gpu(options.decoder_backend, options))
    if options.decoder_backend == "torch":  # the ensemble's embedding stays in GPU memory
        name, value = model_config.GPU_INPUTS
        config.parameters[name].string_value = value
    return config


def ensemble_config(options: RepositoryOptions) -> mc.ModelConfig:
    config = mc.ModelConfig(name=C.ENSEMBLE.served_name(options.name), platform="ensemble", max_batch_size=0)
    _io(config, C.ENSEMBLE)
    for member, inputs, outputs in C.ENSEMBLE_STEPS:
        step = config.ensemble_scheduling.step.add(model_name=member.served_name(options.name), model_version=-1)
        step.input_map.update(inputs)
        step.output_map.update(outputs)
    return config


def amg_config(options: RepositoryOptions) -> mc.ModelConfig:
    """The AMG stage is python-backend everywhere; it reaches the decoder through BLS."""
    spec = C.AMG
    config = mc.ModelConfig(name=spec.served_name(options.name), max_batch_size=0, backend="python")
    _io(config, spec)
    _instances(config, options.amg_instances, gpu=_on_gpu(_stage_backend(options), options))
    _amg_filter_parameters(config, options)
    _in_process_decoder(config, options)
    return config


def amg_filter_config(options: RepositoryOptions) -> mc.ModelConfig:
    """The AMG filter graph as its own model beside a GPU decoder, so the upscaling and the
    stability scores run on the GPU and only kept masks (bits) come back to the stages."""
    spec = C.AMG_FILTER
    config = mc.ModelConfig(name=spec.served_name(options.name), max_batch_size=0)
    _backend(config, "onnxruntime", options)
    _io(config, spec)
    _instances(config, options.decoder_instances, gpu=True)
    return config


def _amg_filter_parameters(config: mc.ModelConfig, options: RepositoryOptions) -> None:
    """Where the AMG filter runs for a stage: in its stub next to the python decoder, else the
    GPU model NAME_amg_filter; and its working memory per request."""
    mib = options.amg_filter_mib or (C.DEFAULT_AMG_FILTER_MIB_GPU if options.gpu_decoder else C.DEFAULT_AMG_FILTER_MIB)
    model_config.write(config, amg_filter_mib=mib)
    if options.decoder_backend == "onnxruntime":
        model_config.write(config, amg_filter_model=C.AMG_FILTER.served_name(options.name))


def session_config(options: RepositoryOptions) -> mc.ModelConfig:
    """The session model is python-backend everywhere; its instances share one cache."""
    spec = C.SESSION
    config = mc.ModelConfig(name=spec.served_name(options.name), max_batch_size=0, backend="python")
    _io(config, spec)
    _instances(config, options.session_instances, gpu=_on_gpu(_stage_backend(options), options))
    model_config.write(config, session_cache_mib=options.session_cache_mib)
    if options.decoder_backend == "torch":
        model_config.write(config, device_cache_mib=options.device_cache_mib)
    if options.session_cache_dir:
        model_config.write(config, session_cache_dir=options.session_cache_dir)
    _in_process_decoder(config, options)
    _amg_filter_parameters(config, options)
    return config


def _in_process_decoder(config: mc.ModelConfig, options: RepositoryOptions) -> None:
    """CPU (python decoder): a stage runs the decoder's graphs inside its own stub; a BLS hop
    to the decoder's stub costs about as much as a click's decoding."""
    if options.decoder_backend == "python":
        model_config.write(config, decoder_in_process="true", ort_intra_op_threads=options.ort_threads)
    elif options.decoder_backend == "torch":  # the decoder in PyTorch, on the stage's device
        model_config.write(config, decoder_in_process="torch")


def _stage_backend(options: RepositoryOptions) -> str:
    """Where the session and AMG stages run: on the torch decoder's device beside it, else
    on the CPU (they call the decoder through BLS, or run its ONNX graph on the CPU)."""
    return "torch" if options.decoder_backend == "torch" else "python"


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def _python_model_source(kind: str) -> str:
    return resources.files("samtriton.server.models").joinpath(f"{kind}.py").read_text()


def _copy_with_external_data(source: Path, target: Path) -> None:
    """Copy a file; an ONNX graph's external weights (``NAME.data``, as the exporter writes
    them for ViT-H) travel with it under the name the graph refers to."""
    shutil.copy2(source, target)
    external = Path(str(source) + ".data")
    if external.exists():
        shutil.copy2(external, target.parent / external.name)


def _write_model(repo: Path, config: mc.ModelConfig, files: Dict[str, Optional[Path]], sources: Dict[str, str]) -> Path:
    model_dir = repo / config.name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version_dir = model_dir / MODEL_VERSION
    version_dir.mkdir(parents=True)
    model_config.write(config, samtriton_contract_version=C.CONTRACT_VERSION)  # every model: clients check it
    (model_dir / "config.pbtxt").write_text(config_text(config))
    for target, source in files.items():
        if source is not None:
            _copy_with_external_data(source, version_dir / target)
    for target, text in sources.items():
        (version_dir / target).write_text(text)
    return model_dir


def write_repository(
    repo: Path,
    encoder_onnx: Optional[Path],
    decoder_onnx: Optional[Path],
    options: RepositoryOptions,
    metadata: Optional[dict] = None,
    encoder_plan: Optional[Path] = None,
    torch_model: Optional[tuple] = None,
) -> Dict[str, Path]:
    """Write the models under ``repo``; returns {served name: model directory}.

    ``encoder_onnx`` / ``decoder_onnx`` are the graphs of the ONNX-based backends (None for a
    torch one); ``torch_model`` is (Sam, ``torch_weights.architecture_of`` dict) for the
    torch backends, whose weights are written as safetensors beside their model.py."""
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    written = {}
    uses_torch = "torch" in (options.encoder_backend, options.decoder_backend)
    if uses_torch and torch_model is None:
        raise ValueError("write_repository: the torch backends need torch_model=(sam, architecture)")

    encoder_files: Dict[str, Optional[Path]] = {ONNX_FILENAME: encoder_onnx}
    encoder_sources = {}
    if options.encoder_backend == "python":
        encoder_sources["model.py"] = _python_model_source("encoder")
    elif options.encoder_backend == "torch":
        encoder_files, encoder_sources = {}, {"model.py": _python_model_source("torch_encoder")}
    elif options.encoder_backend == "tensorrt":
        # Keep the ONNX beside the engine: a new GPU model or container release needs a rebuild.
        encoder_files = {PLAN_FILENAME: encoder_plan}
        if encoder_plan is not None and Path(str(encoder_plan) + ".json").exists():
            encoder_files[PLAN_FILENAME + ".json"] = Path(str(encoder_plan) + ".json")
    config = encoder_config(options)
    written[config.name] = _write_model(repo, config, encoder_files, encoder_sources)
    if options.encoder_backend == "tensorrt":
        _copy_with_external_data(encoder_onnx, written[config.name] / "encoder.onnx")
    if options.encoder_backend == "torch":
        write_torch_weights(*torch_model, written[config.name] / MODEL_VERSION, parts=ENCODER_PARTS)

    if options.decoder_backend == "torch":
        decoder_files: Dict[str, Optional[Path]] = {}
        decoder_sources = {"model.py": _python_model_source("torch_decoder")}
    else:
        decoder_sources = {"model.py": _python_model_source("decoder")} if options.decoder_backend == "python" else {}
        decoder_files = {ONNX_FILENAME: decoder_onnx}
        amg_decoder = Path(decoder_onnx).parent / C.AMG_DECODER_FILE
        if options.decoder_backend == "python" and amg_decoder.exists():  # run by the session stub on CPU
            decoder_files[C.AMG_DECODER_FILE] = amg_decoder
    config = decoder_config(options)
    written[config.name] = _write_model(repo, config, decoder_files, decoder_sources)
    if options.decoder_backend == "torch":  # read by the decoder and by the stages running it
        write_torch_weights(*torch_model, written[config.name] / MODEL_VERSION, parts=DECODER_PARTS)
    if options.decoder_backend == "onnxruntime":  # the AMG filter where the decoder runs (the GPU)
        config = amg_filter_config(options)
        written[config.name] = _write_model(repo, config, {}, {})
        write_amg_filter(written[config.name] / MODEL_VERSION / ONNX_FILENAME)

    config = ensemble_config(options)
    written[config.name] = _write_model(repo, config, {}, {})

    config = amg_config(options)
    written[config.name] = _write_model(repo, config, {}, {"model.py": _python_model_source("amg")})

    config = session_config(options)
    written[config.name] = _write_model(repo, config, {}, {"model.py": _python_model_source("session")})

    if metadata is not None:
        (repo / f"{options.name}.export.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return written
