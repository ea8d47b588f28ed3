"""The one reader of a deployed model's config parameters.

Every parameter samtriton writes into a ``config.pbtxt`` is declared here once: its name, its
type, its default and what it means. The repository writer (``samtriton.export.repository``)
writes them with ``write``; the python-backend models read them with ``read``, which returns
``StageConfig``, a frozen dataclass of typed values. A value that does not parse is an error
naming the parameter and the expected form, at model load.

Parameters (Triton's own ``FORCE_CPU_ONLY_INPUT_TENSORS`` is written here too):

- ``ort_intra_op_threads`` (int, 0): ONNX Runtime threads per python-backend instance; 0: one
  per CPU the stub may run on (ONNX Runtime's own default, physical cores, ran the decoder
  slower inside the stub on a 2-core machine: docs/benchmarks.md).
- ``ort_allow_spinning`` (bool, false): ONNX Runtime's spinning worker threads.
- ``decoder_in_process`` ("", "true" or "torch"): a stage runs the decoder in its own stub:
  the ONNX graphs on the CPU ("true", beside the python decoder) or PyTorch on the stage's
  device ("torch", beside the torch decoder); "": it calls NAME_decoder through BLS.
- ``amg_filter_mib`` (int): working memory of the AMG filter per request.
- ``amg_filter_model`` (str, ""): the served AMG filter graph a stage calls (beside an
  onnxruntime GPU decoder); "": the stage filters in its own stub.
- ``session_cache_mib`` (int), ``session_cache_dir`` (str, ""): the session stage's host cache.
- ``device_cache_mib`` (int, 4096): device memory each torch session instance keeps embeddings in.
- ``torch_precision`` (fp32, tf32, fp16-mixed, bf16), ``torch_compile`` (none or a
  torch.compile mode), ``torch_fused_attention`` (bool, true): the torch encoder.
- ``samtriton_contract_version`` (str): the wire contract the model follows (every model;
  clients check it).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict

from samtriton import contract as C

TORCH_PRECISIONS = ("fp32", "tf32", "fp16-mixed", "bf16")
TORCH_COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DECODER_IN_PROCESS = ("", "true", "torch")


def _boolean(text: str) -> bool:
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("expected true or false")
    return text in ("true", "1", "yes")


def _choice(choices):
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {list(choices)}")
        return text

    return parse


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def _absolute_path_or_empty(text: str) -> str:
    if text and not os.path.isabs(text):
        raise ValueError("expected an absolute path (or nothing)")
    return text


@dataclass(frozen=True)
class StageConfig:
    """A model's samtriton parameters, typed (``read``); the field names are the parameters'."""

    ort_intra_op_threads: int = 0
    ort_allow_spinning: bool = False
    decoder_in_process: str = ""
    amg_filter_mib: int = C.DEFAULT_AMG_FILTER_MIB
    amg_filter_model: str = ""
    session_cache_mib: int = C.DEFAULT_SESSION_CACHE_MIB
    session_cache_dir: str = ""
    device_cache_mib: int = 4096
    torch_precision: str = "fp32"
    torch_compile: str = "none"
    torch_fused_attention: bool = True
    samtriton_contract_version: str = ""

    @property
    def threads(self) -> int:
        """ONNX Runtime's (and the filter's) threads: the parameter, or one per CPU this process may use."""
        return self.ort_intra_op_threads or len(os.sched_getaffinity(0))


PARSERS: Dict[str, Callable[[str], Any]] = {
    "ort_intra_op_threads": _non_negative_int,
    "ort_allow_spinning": _boolean,
    "decoder_in_process": _choice(DECODER_IN_PROCESS),
    "amg_filter_mib": _non_negative_int,
    "amg_filter_model": str,
    "session_cache_mib": _non_negative_int,
    "session_cache_dir": _absolute_path_or_empty,
    "device_cache_mib": _non_negative_int,
    "torch_precision": _choice(TORCH_PRECISIONS),
    "torch_compile": _choice(TORCH_COMPILE_MODES),
    "torch_fused_attention": _boolean,
    "samtriton_contract_version": str,
}
assert set(PARSERS) == {field.name for field in dataclasses.fields(StageConfig)}
assert C.CONTRACT_VERSION_PARAMETER in PARSERS  # the client reads it by the contract's name
# Triton's own parameter: the python backend hands inputs over where they are (GPU memory too).
GPU_INPUTS = ("FORCE_CPU_ONLY_INPUT_TENSORS", "no")


def read(config: dict) -> StageConfig:
    """The samtriton parameters of a model config (the JSON Triton gives ``initialize``)."""
    values = {}
    for name, parameter in config.get("parameters", {}).items():
        if name not in PARSERS:
            continue  # Triton's own, or a newer samtriton's: not this reader's
        text = parameter.get("string_value", "")
        try:
            values[name] = PARSERS[name](text)
        except ValueError as exc:
            raise ValueError(f"{config.get('name', 'model')} config parameter {name}: {exc}, got {text!r}") from None
    return StageConfig(**values)


def write(model_config, **values) -> None:
    """Sets samtriton parameters on a ``ModelConfig`` protobuf, by their declared names (each
    checked by its parser, so what is written reads back)."""
    for name, value in values.items():
        if name not in PARSERS:
            raise KeyError(f"not a samtriton model parameter: {name}")
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        PARSERS[name](text)
        model_config.parameters[name].string_value = text
