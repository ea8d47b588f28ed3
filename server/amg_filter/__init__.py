"""Automatic mask generation's filter: one point batch's decoder outputs in, ``contract.AMG``'s
outputs out (the kept masks' index into the K x 3 multimask outputs, their IoU predictions and
stability scores, their bits), in bounded working memory.

SamAutomaticMaskGenerator._process_batch's steps: keep the three multimask outputs, drop
masks under the IoU threshold (before upscaling: the score does not depend on resolution),
upscale the rest as ``Sam.postprocess_masks`` does, score their stability at +-offset, drop
masks under the stability threshold, pack the kept ones 8 pixels a byte (np.packbits' order).
One interface, ``AmgFilter``; three implementations, each where its decoder runs:

- ``windows``: numpy in the stage's stub, beside the python decoder (CPU): only the windows
  at the masks' edges are upscaled (far faster on CPU than upscaling every pixel).
- ``device``: PyTorch on the stage's device, beside the torch decoder (GPU): the reference's
  own operations; only the kept bits leave the device.
- ``graph``: an ONNX graph served as NAME_amg_filter beside an onnxruntime GPU decoder
  (NVIDIA's container), called through BLS over chunks of prompts that fit the budget.

The tests' oracle is the whole-batch port (tests/amg_oracle.py); every implementation is
checked against it or against the reference.
"""

from __future__ import annotations

import numpy as np

from samtriton import contract as C
from samtriton.server.config import StageConfig


class AmgFilter:
    """The filter a stage uses, chosen from its config.

    Args:
        caller: the stage's served name (for BLS errors).
        settings: the stage's ``StageConfig``: ``amg_filter_mib`` (working memory per request),
            ``amg_filter_model`` (the served graph, when there is one), ``threads``.
    """

    def __init__(self, caller: str, settings: StageConfig):
        self.caller = caller
        self.budget = settings.amg_filter_mib * 2**20
        self.model = settings.amg_filter_model or None
        # As many threads as the decoder's ONNX Runtime session: the filter follows it on the same cores.
        self.threads = settings.threads

    def __call__(self, low_res, iou, input_size, crop_size, thresholds):
        """``contract.AMG``'s outputs (numpy) for one batch's decoder outputs: numpy arrays (the
        python or a BLS decoder's) or torch tensors on a device (the torch decoder's)."""
        if not isinstance(low_res, np.ndarray):
            from samtriton.server.amg_filter.device import kept_masks

            return kept_masks(low_res, iou, input_size, crop_size, thresholds, self.budget)
        if self.model is None:
            from samtriton.server.amg_filter.windows import kept_mask_outputs

            return kept_mask_outputs(
                low_res, iou, input_size, crop_size, thresholds, work_bytes=self.budget, threads=self.threads
            )
        return self._served_graph(low_res, iou, input_size, crop_size, thresholds)

    def _served_graph(self, low_res, iou, input_size, crop_size, thresholds):
        from samtriton.server.runtime import call_model

        names = [spec.name for spec in C.AMG_FILTER.outputs]
        parts = []
        for start, stop in prompt_chunks(iou, crop_size, thresholds, self.budget):
            feeds = {
                C.LOW_RES_MASKS.name: np.ascontiguousarray(low_res[start:stop]),
                C.IOU_PREDICTIONS.name: np.ascontiguousarray(iou[start:stop]),
                C.INPUT_SIZE.name: np.asarray(input_size, np.int64).reshape(2),
                C.CROP_SIZE.name: np.asarray(crop_size, np.int64).reshape(2),
                C.AMG_THRESHOLDS.name: np.asarray(thresholds, np.float32).reshape(3),
            }
            out = call_model(self.model, feeds, names, self.caller)
            out[C.KEPT_INDEX.name] = out[C.KEPT_INDEX.name] + 3 * start
            parts.append(out)
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in names}


def prompt_chunks(iou, crop_size, thresholds, budget_bytes):
    """[start, stop) prompt ranges whose masks past the IoU threshold fit ``budget_bytes`` in
    the filter graph (the 1024 x 1024 intermediate, then ~20 bytes a crop pixel); at least
    one prompt each."""
    iou_thresh = float(thresholds[0])
    scores = iou[:, C.MULTIMASK_SLICE]
    passing = (scores > iou_thresh).sum(axis=1) if iou_thresh > 0 else np.full(len(scores), scores.shape[1])
    per_mask = 8 * C.IMAGE_SIZE * C.IMAGE_SIZE + 20 * int(crop_size[0]) * int(crop_size[1])
    ranges, start, used = [], 0, 0
    for k, count in enumerate(passing):
        cost = int(count) * per_mask
        if k > start and used + cost > budget_bytes:
            ranges.append((start, k))
            start, used = k, 0
        used += cost
    ranges.append((start, len(scores)))
    return ranges
