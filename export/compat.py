"""Let ``segment_anything`` and ``mobile_sam`` import where torchvision / timm cannot.

Both reference packages import torchvision at module level (segment_anything's transforms
and automatic mask generator; mobile_sam's TinyViT through timm). On CPU-only machines the
registries offer no working torchvision: it is absent, or a CUDA-only build raises on
import. Export and reference runs only touch a handful of names, so when (and only when)
the real package cannot be imported, this module registers small stand-ins that supply
exactly those names:

- ``torchvision.transforms.functional.resize`` / ``to_pil_image`` for PIL images and HWC
  uint8 arrays (torchvision's PIL path: ``img.resize((w, h), BILINEAR)``);
- ``torchvision.ops.boxes.batched_nms`` / ``nms`` / ``box_area``: torchvision's CPU kernel and
  coordinate trick written again in torch (a stable sort by score, highest first; a box
  whose IoU with a kept box of its category exceeds the threshold is dropped). Deliberately
  not ``samtriton.amg.batched_nms``: the reference's NMS must not be the code it checks
  (both are compared with a brute-force NMS in tests/test_nms.py);
- ``timm.models.layers.DropPath`` / ``to_2tuple`` / ``trunc_normal_`` and
  ``timm.models.registry.register_model``.

The real packages always win: the stand-ins are installed only after importing the real
one failed. Every stand-in module carries ``__samtriton_compat__ = True``.
"""

from __future__ import annotations

import collections.abc
import importlib
import sys
import types
from typing import Dict

_IMPORT_FAILURES = (ImportError, RuntimeError, OSError, AttributeError)


def ensure_reference_imports() -> Dict[str, str]:
    """Make the reference packages importable; returns {package: "real" | "compat"}."""
    return {
        "torchvision": _ensure("torchvision", _install_torchvision_compat),
        "timm": _ensure("timm", _install_timm_compat),
    }


def _ensure(package: str, install) -> str:
    module = sys.modules.get(package)
    if module is not None and getattr(module, "__samtriton_compat__", False):
        return "compat"
    probe = {
        "torchvision": ("torchvision.transforms.functional", "torchvision.ops.boxes"),
        "timm": ("timm.models.layers", "timm.models.registry"),
    }[package]
    try:
        for name in probe:
            importlib.import_module(name)
        return "real"
    except _IMPORT_FAILURES:
        # A broken install leaves half-initialised modules behind; drop them first.
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        install()
        return "compat"


def _register(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__samtriton_compat__ = True
    module.__dict__.update(attrs)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


# --- torchvision ------------------------------------------------------------------------


def to_pil_image(pic, mode=None):
    """HWC uint8 array (or PIL image) -> PIL image, as torchvision does for uint8 input."""
    import numpy as np
    from PIL import Image

    if isinstance(pic, Image.Image):
        return pic
    array = np.asarray(pic)
    if array.dtype != np.uint8:
        raise TypeError(f"compat to_pil_image supports uint8 arrays only, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array, mode=mode)


def resize(img, size, interpolation=None, max_size=None, antialias=True):
    """torchvision's resize for PIL images and an explicit [h, w] size (bilinear)."""
    from PIL import Image

    if not isinstance(img, Image.Image):
        raise TypeError("compat resize supports PIL images only (segment-anything passes one)")
    if isinstance(size, int) or len(size) != 2 or max_size is not None:
        raise ValueError("compat resize needs an explicit [height, width] size")
    if interpolation not in (None, Image.BILINEAR) and getattr(interpolation, "value", None) != "bilinear":
        raise ValueError("compat resize supports bilinear interpolation only")
    height, width = int(size[0]), int(size[1])
    return img.resize((width, height), Image.BILINEAR)


def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes, scores, iou_threshold: float):
    """torchvision's CPU nms kernel: boxes visited by score (stable sort, highest first);
    each one not yet suppressed is kept and suppresses the later ones whose IoU with it,
    computed in the boxes' dtype, exceeds ``iou_threshold`` (compared as a double)."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, stable=True, descending=True).indices.tolist()
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = box_area(boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        width = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        height = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = width * height
        overlap = inter / (areas[i] + areas - inter)
        suppressed |= overlap.double() > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """torchvision's batched_nms (its coordinate trick): each category's boxes shifted past
    every other category's, then one ``nms``."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _install_torchvision_compat() -> None:
    _register("torchvision", __version__="0.0+samtriton.compat")
    _register("torchvision.transforms")
    _register("torchvision.transforms.functional", resize=resize, to_pil_image=to_pil_image)
    _register("torchvision.ops", nms=nms, batched_nms=batched_nms, box_area=box_area)
    _register("torchvision.ops.boxes", nms=nms, batched_nms=batched_nms, box_area=box_area)


# --- timm -------------------------------------------------------------------------------


def to_2tuple(x):
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
        return tuple(x)
    return (x, x)


def register_model(fn):
    return fn


def _install_timm_compat() -> None:
    import torch
    from torch import nn

    class DropPath(nn.Module):
        """Stochastic depth per sample (timm's DropPath); the identity in eval mode."""

        def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
            super().__init__()
            self.drop_prob = drop_prob
            self.scale_by_keep = scale_by_keep

        def forward(self, x):
            if not self.drop_prob or not self.training:
                return x
            keep_prob = 1 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
            if keep_prob > 0.0 and self.scale_by_keep:
                mask.div_(keep_prob)
            return x * mask

    _register("timm", __version__="0.0+samtriton.compat")
    _register("timm.models")
    _register("timm.models.layers", DropPath=DropPath, to_2tuple=to_2tuple, trunc_normal_=torch.nn.init.trunc_normal_)
    _register("timm.models.registry", register_model=register_model)
