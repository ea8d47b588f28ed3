"""Hugging Face ``transformers`` SamModel checkpoints -> segment-anything's ``Sam``.

A SamModel directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``) is
read without transformers: the architecture comes from ``config.json`` (so non-standard
sizes and fine-tunes work), the weights are renamed into segment-anything's layout and
loaded into a ``Sam`` built to that architecture. The rest of the export (ONNX graphs,
repository) is then the same as for segment-anything checkpoints, and parity is measured
against transformers' own SamModel.

Weights are read with safetensors or ``torch.load(weights_only=True)``: never pickle.
"""

from __future__ import annotations

import json
import os
import re
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional

from samtriton import contract as C

if TYPE_CHECKING:  # torch is imported where weights are read
    import torch

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# What `--hf-model` fetches from the hub: the config, the weights and the preprocessing.
HUB_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
]
HUB_PATTERNS_BIN = [
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
]


def is_hf_checkpoint(path: os.PathLike) -> bool:
    """A directory with a SamModel ``config.json`` (model_type "sam") and weights."""
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError:
        return False
    return config.get("model_type") == "sam"


def download_hf_model(repo_id: str, revision: Optional[str] = None) -> Path:
    """The local snapshot directory of hub model ``repo_id`` (huggingface_hub's cache)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError("--hf-model needs huggingface_hub: pip install 'samtriton[hf]'") from None
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
        if not any((path / name).exists() for name in WEIGHT_FILES):  # older repositories: .bin only
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS_BIN))
    except OSError as exc:  # offline and not cached, unknown repository, no access
        raise FileNotFoundError(f"--hf-model {repo_id}: {exc}") from None
    return path


def read_config(path: os.PathLike) -> dict:
    """config.json with every field the conversion needs checked; ValueError names the field."""
    config = json.loads((Path(path) / "config.json").read_text())
    if config.get("model_type") != "sam":
        raise ValueError(
            f"{path}/config.json: model_type must be 'sam' (a transformers SamModel), got {config.get('model_type')!r}"
        )
    vision = _with_defaults(config.get("vision_config") or {}, _VISION_DEFAULTS)
    prompt = _with_defaults(config.get("prompt_encoder_config") or {}, _PROMPT_DEFAULTS)
    decoder = _with_defaults(config.get("mask_decoder_config") or {}, _DECODER_DEFAULTS)
    if vision["mlp_dim"] is None:
        vision["mlp_dim"] = int(vision["hidden_size"] * vision["mlp_ratio"])
    # What samtriton's contract fixes: 1024 px input, 64 x 64 x 256 embeddings, 3 + 1 masks.
    _expect(path, "vision_config.image_size", vision["image_size"], C.IMAGE_SIZE)
    _expect(path, "vision_config.patch_size", vision["patch_size"], C.IMAGE_SIZE // C.EMBED_SIZE)
    _expect(path, "vision_config.output_channels", vision["output_channels"], C.EMBED_DIM)
    _expect(path, "vision_config.num_channels", vision["num_channels"], 3)
    _expect(path, "vision_config.num_pos_feats", vision["num_pos_feats"], C.EMBED_DIM // 2)
    _expect(path, "vision_config.hidden_act", vision["hidden_act"], "gelu")
    _expect(path, "prompt_encoder_config.hidden_size", prompt["hidden_size"], C.EMBED_DIM)
    _expect(path, "prompt_encoder_config.image_size", prompt["image_size"], C.IMAGE_SIZE)
    _expect(path, "prompt_encoder_config.patch_size", prompt["patch_size"], C.IMAGE_SIZE // C.EMBED_SIZE)
    _expect(path, "prompt_encoder_config.num_point_embeddings", prompt["num_point_embeddings"], 4)
    _expect(path, "prompt_encoder_config.hidden_act", prompt["hidden_act"], "gelu")
    _expect(path, "mask_decoder_config.hidden_size", decoder["hidden_size"], C.EMBED_DIM)
    _expect(path, "mask_decoder_config.num_multimask_outputs", decoder["num_multimask_outputs"], C.NUM_MASK_OUTPUTS - 1)
    _expect(path, "mask_decoder_config.hidden_act", decoder["hidden_act"], "relu")
    return {"vision": vision, "prompt": prompt, "decoder": decoder}


# transformers' SamConfig defaults (facebook/sam-vit-huge style): fields a config.json omits.
# fmt: off
_VISION_DEFAULTS = dict(
    hidden_size=768, output_channels=256, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
    image_size=1024, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, mlp_ratio=4.0,
    use_abs_pos=True, use_rel_pos=True, window_size=14, global_attn_indexes=[2, 5, 8, 11], num_pos_feats=128,
    mlp_dim=None,
)
_PROMPT_DEFAULTS = dict(
    hidden_size=256, image_size=1024, patch_size=16, mask_input_channels=16, num_point_embeddings=4,
    hidden_act="gelu", layer_norm_eps=1e-6,
)
_DECODER_DEFAULTS = dict(
    hidden_size=256, hidden_act="relu", mlp_dim=2048, num_hidden_layers=2, num_attention_heads=8,
    attention_downsample_rate=2, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
    layer_norm_eps=1e-6,
)
# fmt: on


def _with_defaults(section: dict, defaults: dict) -> dict:
    return {**defaults, **{k: v for k, v in section.items() if k in defaults}}


def _expect(path, field, value, expected) -> None:
    if value != expected:
        raise ValueError(f"{path}/config.json: {field} must be {expected!r} for samtriton's contract, got {value!r}")


def build_sam(config: dict, preprocessor: Optional[dict] = None):
    """segment-anything's ``Sam`` with the architecture of a checked SamModel config."""
    import torch
    from torch import nn

    from .compat import ensure_reference_imports

    ensure_reference_imports()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    vision, prompt, decoder = config["vision"], config["prompt"], config["decoder"]
    hidden = vision["hidden_size"]
    encoder = ImageEncoderViT(
        img_size=vision["image_size"],
        patch_size=vision["patch_size"],
        in_chans=vision["num_channels"],
        embed_dim=hidden,
        depth=vision["num_hidden_layers"],
        num_heads=vision["num_attention_heads"],
        # Block builds int(dim * mlp_ratio): the half keeps float rounding off mlp_dim.
        mlp_ratio=(vision["mlp_dim"] + 0.5) / hidden,
        out_chans=vision["output_channels"],
        qkv_bias=vision["qkv_bias"],
        norm_layer=partial(nn.LayerNorm, eps=vision["layer_norm_eps"]),
        use_abs_pos=vision["use_abs_pos"],
        use_rel_pos=vision["use_rel_pos"],
        window_size=vision["window_size"],
        global_attn_indexes=tuple(vision["global_attn_indexes"]),
    )
    embed_size = prompt["image_size"] // prompt["patch_size"]
    prompt_encoder = PromptEncoder(
        embed_dim=prompt["hidden_size"],
        image_embedding_size=(embed_size, embed_size),
        input_image_size=(prompt["image_size"], prompt["image_size"]),
        mask_in_chans=prompt["mask_input_channels"],
    )
    transformer = TwoWayTransformer(
        depth=decoder["num_hidden_layers"],
        embedding_dim=decoder["hidden_size"],
        num_heads=decoder["num_attention_heads"],
        mlp_dim=decoder["mlp_dim"],
        attention_downsample_rate=decoder["attention_downsample_rate"],
    )
    # transformers' two-way blocks normalize with the config's eps (segment-anything: 1e-5);
    # its final norm keeps PyTorch's default, as segment-anything's does.
    for layer in transformer.layers:
        for norm in (layer.norm1, layer.norm2, layer.norm3, layer.norm4):
            norm.eps = decoder["layer_norm_eps"]
    for module in prompt_encoder.mask_downscaling:
        if hasattr(module, "eps"):
            module.eps = prompt["layer_norm_eps"]
    mask_decoder = MaskDecoder(
        transformer_dim=decoder["hidden_size"],
        transformer=transformer,
        num_multimask_outputs=decoder["num_multimask_outputs"],
        iou_head_depth=decoder["iou_head_depth"],
        iou_head_hidden_dim=decoder["iou_head_hidden_dim"],
    )
    mean, std = _normalization(preprocessor)
    sam = Sam(
        image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder, pixel_mean=mean, pixel_std=std
    )
    return sam.to(torch.float32)


def _normalization(preprocessor: Optional[dict]):
    """SAM's pixel mean / std on the 0-255 scale, from preprocessor_config.json when given
    (transformers rescales by 1/255, then normalizes: the same as SAM's on 0-255 values)."""
    mean, std = list(C.PIXEL_MEAN), list(C.PIXEL_STD)
    if not preprocessor:
        return mean, std
    # samtriton resizes the long side to 1024 and pads to 1024 x 1024 (the contract).
    for field, key in (("size", "longest_edge"), ("pad_size", "height"), ("pad_size", "width")):
        value = (preprocessor.get(field) or {}).get(key, C.IMAGE_SIZE)
        if value != C.IMAGE_SIZE:
            raise ValueError(f"image processor config: {field}.{key} must be {C.IMAGE_SIZE}, got {value!r}")
    if preprocessor.get("do_normalize", True) and "image_mean" in preprocessor:
        scale = (
            1.0 / float(preprocessor.get("rescale_factor", 1 / 255)) if preprocessor.get("do_rescale", True) else 1.0
        )
        mean = [float(m) * scale for m in preprocessor["image_mean"]]
        std = [float(s) * scale for s in preprocessor["image_std"]]
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("preprocessor_config.json: image_mean and image_std must have 3 values each")
    return mean, std


def read_weights(path: os.PathLike) -> Dict[str, "torch.Tensor"]:
    """Every tensor of a SamModel directory: safetensors (single or sharded) or
    pytorch_model.bin loaded with ``weights_only=True``."""
    import torch

    path = Path(path)
    files = _weight_files(path)
    state = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(file), device="cpu"))
        else:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


def _weight_files(path: Path):
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / shard for shard in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    raise FileNotFoundError(f"{path}: no weights; expected one of {', '.join(WEIGHT_FILES)}")


# transformers name -> segment-anything name, applied in order (first match wins).
def _numbered(prefix: str, target: str, names) -> list:
    """Renames of ``prefix.NAME.`` to ``target.INDEX.`` for (NAME, INDEX) pairs: transformers
    names the layers of a Sequential that segment-anything indexes."""
    return [(rf"^{prefix}\.{name}\.", f"{target}.{index}.") for name, index in names]


_RENAMES = [
    (r"^vision_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    (r"^vision_encoder\.pos_embed$", "image_encoder.pos_embed"),
    (r"^vision_encoder\.layers\.(\d+)\.layer_norm1\.", r"image_encoder.blocks.\1.norm1."),
    (r"^vision_encoder\.layers\.(\d+)\.layer_norm2\.", r"image_encoder.blocks.\1.norm2."),
    (r"^vision_encoder\.layers\.(\d+)\.", r"image_encoder.blocks.\1."),
    *_numbered(
        r"vision_encoder\.neck",
        "image_encoder.neck",
        [("conv1", 0), ("layer_norm1", 1), ("conv2", 2), ("layer_norm2", 3)],
    ),
    (r"^shared_image_embedding\.positional_embedding$", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^prompt_encoder\.point_embed\.(\d+)\.", r"prompt_encoder.point_embeddings.\1."),
    *_numbered(
        r"prompt_encoder\.mask_embed",
        "prompt_encoder.mask_downscaling",
        [("conv1", 0), ("layer_norm1", 1), ("conv2", 3), ("layer_norm2", 4), ("conv3", 6)],
    ),
    (r"^prompt_encoder\.(no_mask_embed|not_a_point_embed)\.", r"prompt_encoder.\1."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r"mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    *_numbered(
        r"mask_decoder",
        "mask_decoder.output_upscaling",
        [("upscale_conv1", 0), ("upscale_layer_norm", 1), ("upscale_conv2", 3)],
    ),
    (r"^mask_decoder\.", "mask_decoder."),
]
# Copies of a tensor that segment-anything holds once (transformers ties them).
_DUPLICATES = ("prompt_encoder.shared_embedding.positional_embedding",)


def convert_state_dict(state: Dict[str, "torch.Tensor"], config: dict) -> Dict[str, "torch.Tensor"]:
    """A SamModel state dict renamed into segment-anything's layout; unknown keys raise."""
    state = dict(state)
    if "shared_image_embedding.positional_embedding" not in state and _DUPLICATES[0] in state:
        state["shared_image_embedding.positional_embedding"] = state[_DUPLICATES[0]]
    converted, unknown = {}, []
    for key, tensor in state.items():
        if key in _DUPLICATES:
            continue
        key = _feed_forward_name(key, config)
        for pattern, replacement in _RENAMES:
            if re.search(pattern, key):
                converted[re.sub(pattern, replacement, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"weights not in a transformers SamModel: {', '.join(sorted(unknown)[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}"
        )
    return converted


def _feed_forward_name(key: str, config: dict) -> str:
    """transformers' SamFeedForward (proj_in, layers.*, proj_out) -> segment-anything's MLP
    (layers.0 .. layers.depth-1), for the hypernetwork MLPs and the IoU head."""
    match = re.match(
        r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\."
        r"(proj_in|proj_out|layers\.(\d+))\.(weight|bias)$",
        key,
    )
    if not match:
        return key
    prefix, part, hidden_index, kind = match.groups()
    depth = 3 if "hypernetworks" in prefix else config["decoder"]["iou_head_depth"]
    index = 0 if part == "proj_in" else depth - 1 if part == "proj_out" else int(hidden_index) + 1
    return f"{prefix}.layers.{index}.{kind}"


def read_preprocessor(path: Path) -> Optional[dict]:
    """The image processor's settings: preprocessor_config.json, or the "image_processor"
    part of processor_config.json (what newer transformers write); None when neither exists."""
    if (path / "preprocessor_config.json").is_file():
        return json.loads((path / "preprocessor_config.json").read_text())
    if (path / "processor_config.json").is_file():
        return json.loads((path / "processor_config.json").read_text()).get("image_processor")
    return None


def load_hf_sam(path: os.PathLike):
    """segment-anything ``Sam`` (eval mode) holding the weights of a SamModel directory."""
    path = Path(path)
    config = read_config(path)
    sam = build_sam(config, read_preprocessor(path))
    state = convert_state_dict(read_weights(path), config)
    try:
        missing, unexpected = sam.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a size mismatch
        raise ValueError(f"{path}: weights do not fit config.json's architecture: {exc}") from None
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit config.json's architecture; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return sam.eval()
