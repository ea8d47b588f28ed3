"""segment-anything's own ONNX decoder interface (``SamOnnxModel``), for clients that already
run that file: the segment-anything web demo, annotation tools' in-browser decoders.

Inputs ``image_embeddings`` [1,256,64,64], ``point_coords`` [1,N,2] (1024 frame, with the
(0,0) / -1 padding point when there is no box), ``point_labels`` [1,N], ``mask_input``
[1,1,256,256], ``has_mask_input`` [1], ``orig_im_size`` [2] float (h, w); outputs ``masks``
(logits at the original size), ``iou_predictions``, ``low_res_masks``: the reference's
``scripts/export_onnx_model.py``, with one fix: the crop to the resized image size is read
from ``orig_im_size`` at run time (segment-anything 1.0 bakes the example's crop into the
graph, so other aspect ratios came out wrong).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.nn import functional as F

from .onnx_export import trace_to_onnx

INPUT_NAMES = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
OUTPUT_NAMES = ["masks", "iou_predictions", "low_res_masks"]
DYNAMIC_AXES = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}


def reference_onnx_model(sam, return_single_mask: bool):
    """segment-anything's ``SamOnnxModel`` on ``sam``, its crop made traceable."""
    from .compat import ensure_reference_imports

    ensure_reference_imports()
    from segment_anything.utils.onnx import SamOnnxModel

    class TraceableSamOnnxModel(SamOnnxModel):
        def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
            masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
            # Tensors, not int(): the slice bounds stay inputs of the graph.
            prepadded_size = self.resize_longest_image_size(orig_im_size, self.img_size).to(torch.int64)
            masks = masks[..., : prepadded_size[0], : prepadded_size[1]]
            orig_im_size = orig_im_size.to(torch.int64)
            h, w = orig_im_size[0], orig_im_size[1]
            return F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)

    return TraceableSamOnnxModel(sam, return_single_mask=return_single_mask).eval()


def export_reference_decoder(sam, path: os.PathLike, return_single_mask: bool = False) -> Path:
    """Write the reference-interface decoder (one ONNX file, weights inside) to ``path``."""
    path = Path(path)
    module = reference_onnx_model(sam, return_single_mask)
    embed_dim = sam.prompt_encoder.embed_dim
    embed_size = sam.prompt_encoder.image_embedding_size
    # The reference script's example feeds (a non-square orig_im_size on purpose).
    args = (
        torch.randn(1, embed_dim, *embed_size),
        torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
        torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
        torch.randn(1, 1, 4 * embed_size[0], 4 * embed_size[1], dtype=torch.float),
        torch.tensor([1], dtype=torch.float),
        torch.tensor([1500, 2250], dtype=torch.float),
    )
    trace_to_onnx(module, args, path, INPUT_NAMES, OUTPUT_NAMES, DYNAMIC_AXES)
    return path
