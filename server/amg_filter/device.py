"""The AMG filter in PyTorch, on the device where the torch decoder ran (the torch stages):
the reference's own operations (``Sam.postprocess_masks``' bilinear upscaling, the stability
score at +-offset) over chunks of masks that fit a budget; only the kept masks' bits leave
the device."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

from samtriton import contract as C


def kept_masks(
    low_res: torch.Tensor, iou: torch.Tensor, input_size, crop_size, thresholds, budget_bytes: int
) -> Dict[str, np.ndarray]:
    """``contract.AMG``'s outputs for one point batch, computed where the decoder ran.

    SamAutomaticMaskGenerator._process_batch's filtering with the reference's own operations
    (``Sam.postprocess_masks``: bilinear to 1024, crop to the input size, bilinear to the crop
    size; stability score at +-offset): keep the three multimask outputs, drop masks under
    the IoU threshold before upscaling, drop masks under the stability threshold, and return
    the kept masks' bits (np.packbits order), over chunks of masks that fit ``budget_bytes``.
    A threshold <= 0 disables its filter, as in the reference.

    Args:
        low_res: [K, 4, 256, 256] float32 logits on the device.
        iou: [K, 4] float32 IoU predictions on the device.
        input_size: (h, w) of the resized crop inside the 1024 square.
        crop_size: (h, w) the masks are upscaled to.
        thresholds: (pred_iou_thresh, stability_score_thresh, stability_score_offset).
        budget_bytes: working memory for the upscaled masks of one chunk.
    """
    iou_thresh, stability_thresh, offset = (float(t) for t in np.asarray(thresholds).reshape(3))
    in_h, in_w = (int(v) for v in np.asarray(input_size).reshape(2))
    crop_h, crop_w = (int(v) for v in np.asarray(crop_size).reshape(2))
    logits = low_res[:, C.MULTIMASK_SLICE].reshape(-1, 1, C.LOW_RES_SIZE, C.LOW_RES_SIZE)
    scores = iou[:, C.MULTIMASK_SLICE].reshape(-1)
    index = torch.arange(len(scores), device=scores.device)
    if iou_thresh > 0.0:
        index = index[scores > iou_thresh]
    per_mask = 4 * (C.IMAGE_SIZE * C.IMAGE_SIZE + 2 * crop_h * crop_w)
    chunk = max(1, budget_bytes // per_mask)
    kept, stabilities, bits = [], [], []
    for start in range(0, len(index), chunk):
        part = index[start : start + chunk]
        masks = F.interpolate(logits[part], (C.IMAGE_SIZE, C.IMAGE_SIZE), mode="bilinear", align_corners=False)
        masks = F.interpolate(masks[..., :in_h, :in_w], (crop_h, crop_w), mode="bilinear", align_corners=False)[:, 0]
        intersections = (masks > offset).sum(dim=(-1, -2), dtype=torch.int64)
        unions = (masks > -offset).sum(dim=(-1, -2), dtype=torch.int64)
        stability = (intersections.double() / unions.double()).float()  # 0/0 -> NaN, as the reference
        if stability_thresh > 0.0:
            keep = stability >= stability_thresh
            part, masks, stability = part[keep], masks[keep], stability[keep]
        kept.append(part)
        stabilities.append(stability)
        bits.append(pack_bits(masks > 0))
    outputs = {
        C.KEPT_INDEX.name: torch.cat(kept) if kept else index,
        C.KEPT_STABILITY.name: torch.cat(stabilities) if stabilities else scores[:0],
    }
    outputs[C.KEPT_IOU.name] = scores[outputs[C.KEPT_INDEX.name]]
    packed_width = (crop_h * crop_w + 7) // 8
    outputs[C.KEPT_MASKS.name] = torch.cat(bits) if bits else torch.zeros((0, packed_width), dtype=torch.uint8)
    return {spec.name: outputs[spec.name].cpu().numpy().astype(spec.dtype, copy=False) for spec in C.AMG.outputs}


_BIT_WEIGHTS = {}


def pack_bits(masks: torch.Tensor) -> torch.Tensor:
    """np.packbits of each [H, W] boolean mask, flattened row-major, on the masks' device."""
    count = masks.shape[0]
    flat = masks.reshape(count, masks.shape[-2] * masks.shape[-1])
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    weights = _BIT_WEIGHTS.get(flat.device)
    if weights is None:
        weights = _BIT_WEIGHTS[flat.device] = torch.tensor(
            [128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=flat.device
        )
    return (flat.view(count, flat.shape[1] // 8, 8).to(torch.uint8) * weights).sum(dim=-1, dtype=torch.uint8)
