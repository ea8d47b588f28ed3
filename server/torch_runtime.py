"""The PyTorch runtime of the ``torch`` backends: SAM's own modules on CUDA (or the CPU).

Imported by the python-backend models exported with ``--encoder-backend torch`` /
``--decoder-backend torch`` (torch_encoder.py, torch_decoder.py, and the session and AMG
stages beside a torch decoder). The weights come from the model's version directory
(``model.safetensors`` + ``sam.json``, written by ``samtriton.export.torch_weights``); the
modules are segment-anything's / mobile_sam's, wrapped as in the ONNX export
(``EncoderWithPreprocess``, ``PromptDecoder``, ``AmgPromptDecoder``), so the torch and ONNX
backends compute the same thing.

Where it runs: ``device_of(args)`` follows the instance Triton created (KIND_GPU instances
on their GPU, KIND_CPU on the CPU). Tensors stay where they are made: inputs and outputs
cross model boundaries by DLPack (``to_torch`` / ``to_triton``), the session stage keeps
embeddings in device memory (``DeviceEmbeddings``), and automatic mask generation's
upscaling, stability scores and bit packing run on the device (``amg_filter.device``), so only
kept masks' bits leave it.

Precision (model parameter ``torch_precision``): ``fp32`` (TF32 off), ``tf32``,
``fp16-mixed`` (autocast to fp16: norms, softmax and reductions stay fp32) or ``bf16``
(autocast to bf16). The decoder always runs in fp32: it is cheap, and the masks' edges are
its output. The export picks the precision per architecture
(``samtriton.export.torch_weights.DEFAULT_PRECISION``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import time
import types
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from samtriton import contract as C
from samtriton.errors import InvalidInput
from samtriton.server.config import TORCH_COMPILE_MODES as COMPILE_MODES
from samtriton.server.config import TORCH_PRECISIONS as PRECISIONS

WEIGHTS_FILE = "model.safetensors"
ARCHITECTURE_FILE = "sam.json"
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


# --- loading ------------------------------------------------------------------------------


def device_of(args) -> torch.device:
    """The device of the instance Triton created: ``cuda:N`` for KIND_GPU, else the CPU."""
    if args.get("model_instance_kind") == "GPU":
        return torch.device("cuda", int(args.get("model_instance_device_id", 0)))
    return torch.device("cpu")


def read_architecture(directory: str) -> dict:
    with open(os.path.join(directory, ARCHITECTURE_FILE)) as f:
        return json.load(f)


def build_sam(architecture: dict):
    """segment-anything's ``Sam`` (MobileSAM's for vit_t) of ``architecture`` on the CPU,
    its weights not yet loaded (and not randomly initialised: they are overwritten)."""
    from samtriton.export.compat import ensure_reference_imports

    ensure_reference_imports()
    model_type = architecture["model_type"]
    with _no_random_init():
        if model_type == "hf_sam":
            from samtriton.export.hf import build_sam as build_hf

            return build_hf(architecture["hf_config"], architecture.get("preprocessor"))
        if model_type == "vit_t":
            from mobile_sam import sam_model_registry
        else:
            from segment_anything import sam_model_registry
        return sam_model_registry[model_type](checkpoint=None)


@contextlib.contextmanager
def _no_random_init():
    """Random initialisers as no-ops while a model whose every weight is loaded next is
    built: ViT-H's init takes tens of seconds of CPU, all of it overwritten."""
    init = torch.nn.init
    names = ("kaiming_uniform_", "uniform_", "normal_", "trunc_normal_", "xavier_uniform_")
    saved = {name: getattr(init, name) for name in names}
    try:
        for name in names:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def load_sam(directory: str, device: torch.device):
    """The model of a version directory: ``sam.json``'s architecture with the weights of
    ``model.safetensors`` (safetensors: no pickle), in eval mode on ``device``."""
    from safetensors.torch import load_file

    architecture = read_architecture(directory)
    sam = build_sam(architecture)
    state = load_file(os.path.join(directory, WEIGHTS_FILE))
    # A served model holds the weights of the parts it runs (torch_weights.ENCODER_PARTS or
    # DECODER_PARTS); each part is loaded whole or dropped, never half.
    held = {name.split(".", 1)[0] for name in state}
    for part in PARTS:
        if part not in held:
            setattr(sam, part, None)
    missing, unexpected = sam.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{directory}/{WEIGHTS_FILE}: weights do not fit {ARCHITECTURE_FILE}; missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    # Non-persistent buffers (not in the state dict): the model's own pixel statistics.
    sam.pixel_mean.copy_(torch.tensor(architecture["pixel_mean"]).reshape(-1, 1, 1))
    sam.pixel_std.copy_(torch.tensor(architecture["pixel_std"]).reshape(-1, 1, 1))
    return sam.to(device).eval(), architecture


def load_instance(args):
    """(model config, device, Sam) of a torch model's instance: its config parsed, the device
    Triton gave it, and the weights of its version directory loaded there."""
    config = json.loads(args["model_config"])
    device = device_of(args)
    sam, _ = load_sam(os.path.join(args["model_repository"], args["model_version"]), device)
    return config, device, sam


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"torch_precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def precision_context(precision: str, device: torch.device):
    """Autocast for the reduced precisions; TF32 matmuls only for ``tf32``."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "fp16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- the encoder: SDPA attention, bucketed batches, optional torch.compile -----------------


def use_fused_attention(sam) -> int:
    """Swap segment-anything's ViT attention for ``scaled_dot_product_attention`` with the
    relative-position bias as its additive mask (what segment-anything-fast does): the same
    function, computed by fused kernels instead of materialising the softmax in fp32 eager.
    The relative-position tables are gathered once here (the input size is fixed). Returns
    the number of attention modules swapped (0 for MobileSAM's TinyViT, left as it is)."""
    from segment_anything.modeling.image_encoder import Attention, get_rel_pos

    swapped = 0
    for module in sam.image_encoder.modules():
        if isinstance(module, Attention):
            if module.use_rel_pos:
                side_h = (module.rel_pos_h.shape[0] + 1) // 2
                side_w = (module.rel_pos_w.shape[0] + 1) // 2
                module._rel_tables = (
                    get_rel_pos(side_h, side_h, module.rel_pos_h.detach()),
                    get_rel_pos(side_w, side_w, module.rel_pos_w.detach()),
                )
            module.forward = types.MethodType(_fused_attention_forward, module)
            swapped += 1
    return swapped


def _fused_attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    batch, height, width, _ = x.shape
    tokens = height * width
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, heads, tokens, head_dim]
    bias = None
    if self.use_rel_pos:
        rel_h_table, rel_w_table = self._rel_tables
        r_q = q.reshape(batch * self.num_heads, height, width, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_h_table.to(r_q.dtype))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_w_table.to(r_q.dtype))
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(batch, self.num_heads, tokens, tokens)
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale: head_dim ** -0.5, as self.scale
    out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return self.proj(out)


def batch_buckets(max_batch: int):
    """Batch sizes the encoder runs at when compiled (powers of two up to ``max_batch``):
    CUDA graphs and compiled kernels are specialised per shape, so a few shapes bound the
    compile time and every batch pads up to the next one."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


class TorchEncoder:
    """``Sam.preprocess`` + ``image_encoder`` on uint8 NHWC images, on one device.

    Args:
        sam: the model (its image encoder is used, on ``device``).
        device: where it runs.
        precision: one of ``PRECISIONS``.
        compile_mode: one of ``COMPILE_MODES``; compiled models are warmed up here, at load,
            over ``batch_buckets(max_batch)`` (the compile cost is paid once and bounded by
            the number of buckets).
        max_batch: the largest batch the model receives (the model config's max_batch_size).
        fused_attention: use ``scaled_dot_product_attention`` for the ViT attention.
    """

    def __init__(
        self,
        sam,
        device: torch.device,
        precision: str,
        compile_mode: str = "none",
        max_batch: int = 1,
        fused_attention: bool = True,
    ):
        from samtriton.export.onnx_export import EncoderWithPreprocess

        self.device, self.precision = device, check_precision(precision)
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"torch_compile must be one of {list(COMPILE_MODES)}, got {compile_mode!r}")
        if fused_attention:
            use_fused_attention(sam)
        self.module = EncoderWithPreprocess(sam).to(device).eval()
        self.forward = self.module
        self.buckets = None
        self.compile_seconds = 0.0
        if compile_mode != "none":
            self.forward = torch.compile(self.module, mode=compile_mode, dynamic=False)
            self.buckets = batch_buckets(max_batch)
            start = time.perf_counter()
            for size in self.buckets:  # pay the compile (and CUDA-graph capture) at load
                for _ in range(2):
                    self(
                        torch.zeros((size,) + C.IMAGE.dims, dtype=torch.uint8, device=device),
                        torch.full((size, 2), C.IMAGE_SIZE, dtype=torch.int64, device=device),
                    )
            self.compile_seconds = time.perf_counter() - start

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, input_sizes: torch.Tensor) -> torch.Tensor:
        """[B, 1024, 1024, 3] uint8 + [B, 2] int64 -> [B, 256, 64, 64] float32 embeddings."""
        images = images.to(self.device, non_blocking=True)
        input_sizes = input_sizes.to(self.device, non_blocking=True)
        count = images.shape[0]
        if self.buckets is not None:
            size = next((b for b in self.buckets if b >= count), None)
            if size is None:
                raise InvalidInput(f"image: batch of {count} exceeds the model's max_batch_size {self.buckets[-1]}")
            if size > count:  # padding rows: a full-size image of zeros
                images = torch.cat([images, images.new_zeros((size - count,) + images.shape[1:])])
                input_sizes = torch.cat([input_sizes, input_sizes.new_full((size - count, 2), C.IMAGE_SIZE)])
        with precision_context(self.precision, self.device):
            embeddings = self.forward(images, input_sizes)
        return embeddings[:count].float()


# --- the decoder ----------------------------------------------------------------------------


class TorchDecoder:
    """Prompt encoder + mask decoder for one embedding and K prompts, in fp32 on one device;
    point batches without a mask input (automatic mask generation) take the reordered AMG
    decoder (``samtriton.export.amg_decoder``)."""

    def __init__(self, sam, device: torch.device):
        from samtriton.export.amg_decoder import AmgPromptDecoder
        from samtriton.export.onnx_export import PromptDecoder

        self.device = device
        self.prompt_decoder = PromptDecoder(sam).to(device).eval()
        self.amg_decoder = AmgPromptDecoder(self.prompt_decoder).to(device).eval()
        if device.type == "cuda":  # fp32 means fp32: TF32 changes the masks' edges
            torch.backends.cuda.matmul.allow_tf32 = False

    @torch.inference_mode()
    def __call__(self, embedding, coords, labels, mask_input=None, has_mask_input=None):
        """(low_res_masks [K, 4, 256, 256], iou_predictions [K, 4]) on the device. Without
        ``mask_input`` no mask is given (SAM's no-mask embedding)."""
        embedding = as_device_tensor(embedding, self.device)
        coords, labels = as_device_tensor(coords, self.device), as_device_tensor(labels, self.device)
        if mask_input is None:
            return self.amg_decoder(embedding, coords, labels)
        return self.prompt_decoder(
            embedding,
            coords,
            labels,
            as_device_tensor(mask_input, self.device),
            as_device_tensor(has_mask_input, self.device),
        )


def as_device_tensor(value, device: torch.device) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    return value.to(device, non_blocking=True)


def check_embedding(embedding: torch.Tensor) -> None:
    """The decoder's ``image_embeddings`` checks, on the device (one sync for the finiteness)."""
    if embedding.dtype != torch.float32:
        raise InvalidInput(
            f"image_embeddings: expected dtype float32, got {str(embedding.dtype).replace('torch.', '')}"
        )
    if tuple(embedding.shape) != C.DECODER_IMAGE_EMBEDDINGS.dims:
        raise InvalidInput(
            f"image_embeddings: expected shape {list(C.DECODER_IMAGE_EMBEDDINGS.dims)} "
            f"(one image), got {list(embedding.shape)}"
        )
    if not bool(torch.isfinite(embedding).all()):
        raise InvalidInput("image_embeddings: values must be finite (no NaN or inf)")


# --- embeddings kept on the device -------------------------------------------------------------


class DeviceEmbeddings:
    """The session stage's embeddings in device memory: an LRU bounded in bytes
    (model parameter ``device_cache_mib``), in front of the host cache the instances share.
    A click on an image held here runs the decoder with no host round trip."""

    def __init__(self, capacity_bytes: int):
        self.capacity = capacity_bytes
        self.entries: "collections.OrderedDict[str, Tuple[torch.Tensor, np.ndarray, np.ndarray]]" = (
            collections.OrderedDict()
        )
        self.bytes = 0

    def get(self, image_id: str):
        entry = self.entries.get(image_id)
        if entry is not None:
            self.entries.move_to_end(image_id)
        return entry

    def put(self, image_id: str, embedding: torch.Tensor, input_size: np.ndarray, original_size: np.ndarray):
        size = embedding.numel() * embedding.element_size()
        if size > self.capacity:
            return (embedding, input_size, original_size)
        old = self.entries.pop(image_id, None)
        if old is not None:
            self.bytes -= old[0].numel() * old[0].element_size()
        while self.entries and self.bytes + size > self.capacity:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= evicted[0].numel() * evicted[0].element_size()
        entry = (embedding, input_size, original_size)
        self.entries[image_id] = entry
        self.bytes += size
        return entry


# --- crossing model boundaries by DLPack ----------------------------------------------------------


def to_torch(tensor) -> torch.Tensor:
    """A Triton tensor (CPU or GPU memory) as a torch tensor on the same memory, no copy."""
    return torch.from_dlpack(tensor.to_dlpack())


def to_triton(pb_utils, name: str, value: torch.Tensor):
    """A torch tensor as a Triton output tensor on the same memory, no copy."""
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(value.contiguous()))


def preferred_memory(pb_utils, device: torch.device):
    """Where a BLS call's outputs should come back: this instance's device."""
    if device.type == "cuda":
        return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, device.index or 0)
    return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device) -> Optional[str]:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None
