"""Automatic-mask-generation utilities in numpy: segment-anything's ``utils/amg.py`` without
torch or torchvision. Same names, same arguments, same results (tested against it).
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any, Dict, Generator, List, Tuple

import numpy as np


def is_box_near_crop_edge(
    boxes: np.ndarray, crop_box: List[int], orig_box: List[int], atol: float = 20.0
) -> np.ndarray:
    """Boxes touching the edge of a crop, but not the edge of the original image."""
    crop = np.asarray(crop_box, dtype=np.float32)[None, :]
    orig = np.asarray(orig_box, dtype=np.float32)[None, :]
    boxes = uncrop_boxes_xyxy(boxes, crop_box).astype(np.float32)
    near_crop_edge = np.isclose(boxes, crop, atol=atol, rtol=0)
    near_image_edge = np.isclose(boxes, orig, atol=atol, rtol=0)
    return np.any(near_crop_edge & ~near_image_edge, axis=1)


def box_xyxy_to_xywh(box_xyxy: np.ndarray) -> np.ndarray:
    """One box (x0, y0, x1, y1) -> (x0, y0, width, height), a copy."""
    box = np.array(box_xyxy, copy=True)
    box[2] = box[2] - box[0]
    box[3] = box[3] - box[1]
    return box


def batch_iterator(batch_size: int, *args) -> Generator[List[Any], None, None]:
    """Slices of ``batch_size`` items of every sequence in ``args`` together (the last may be shorter).

    Arguments:
      batch_size: items per batch.
      args: sequences of one length (``ValueError`` otherwise).
    """
    if not args or any(len(a) != len(args[0]) for a in args):
        raise ValueError("Batched iteration must have inputs of all the same size.")
    n_batches = len(args[0]) // batch_size + int(len(args[0]) % batch_size != 0)
    for b in range(n_batches):
        yield [arg[b * batch_size : (b + 1) * batch_size] for arg in args]


def mask_to_rle(masks: np.ndarray) -> List[Dict[str, Any]]:
    """[B, H, W] bool -> uncompressed RLEs (column-major, as pycocotools expects)."""
    b, h, w = masks.shape
    flat = masks.transpose(0, 2, 1).reshape(b, h * w)
    out = []
    for i in range(b):
        changes = np.flatnonzero(flat[i, 1:] != flat[i, :-1]) + 1
        edges = np.concatenate([[0], changes, [h * w]])
        counts = [] if not flat[i, 0] else [0]
        counts.extend(np.diff(edges).tolist())
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: Dict[str, Any]) -> np.ndarray:
    """An uncompressed RLE (``mask_to_rle``'s) -> its [H, W] bool mask."""
    h, w = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    mask = np.repeat(values, rle["counts"])
    return mask.reshape(w, h).transpose()


def area_from_rle(rle: Dict[str, Any]) -> int:
    """The number of pixels set in an uncompressed RLE's mask."""
    return sum(rle["counts"][1::2])


def calculate_stability_score(masks: np.ndarray, mask_threshold: float, threshold_offset: float) -> np.ndarray:
    """IoU of the masks thresholded at threshold +/- offset (one contains the other)."""
    intersections = (masks > (mask_threshold + threshold_offset)).sum(axis=(-1, -2), dtype=np.int64)
    unions = (masks > (mask_threshold - threshold_offset)).sum(axis=(-1, -2), dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (intersections / unions).astype(np.float32)


def build_point_grid(n_per_side: int) -> np.ndarray:
    """[n_per_side**2, 2] evenly spaced (x, y) points in [0, 1] x [0, 1], cell centres."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> List[np.ndarray]:
    """The point grid of each crop layer (0 .. ``n_layers``).

    Arguments:
      n_per_side: points per side on layer 0 (the whole image).
      n_layers: crop layers after layer 0.
      scale_per_layer: each layer has this many times fewer points per side.
    """
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: Tuple[int, ...], n_layers: int, overlap_ratio: float
) -> Tuple[List[List[int]], List[int]]:
    """The crop boxes (x0, y0, x1, y1) of every layer and each box's layer, as the reference's.

    Arguments:
      im_size: (height, width) of the image.
      n_layers: crop layers after the whole image; layer i has (2**i)**2 crops.
      overlap_ratio: how much neighbouring crops overlap, as a fraction of the short side.
    """
    crop_boxes, layer_idxs = [], []
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes.append([0, 0, im_w, im_h])
    layer_idxs.append(0)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes: np.ndarray, crop_box: List[int]) -> np.ndarray:
    """XYXY boxes in a crop -> in the image ``crop_box`` (x0, y0, x1, y1) was cut from."""
    x0, y0, _, _ = crop_box
    offset = np.array([[x0, y0, x0, y0]])
    if boxes.ndim == 3:
        offset = offset[:, None]
    return boxes + offset


def uncrop_points(points: np.ndarray, crop_box: List[int]) -> np.ndarray:
    """(x, y) points in a crop -> in the image ``crop_box`` (x0, y0, x1, y1) was cut from."""
    x0, y0, _, _ = crop_box
    offset = np.array([[x0, y0]])
    if points.ndim == 3:
        offset = offset[:, None]
    return points + offset


def uncrop_masks(masks: np.ndarray, crop_box: List[int], orig_h: int, orig_w: int) -> np.ndarray:
    """[N, h, w] masks of a crop, zero-padded to the [N, orig_h, orig_w] image it was cut from.

    Arguments:
      masks: the crop's masks.
      crop_box: the crop (x0, y0, x1, y1) in the image.
      orig_h, orig_w: the image's height and width.
    """
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    return np.pad(masks, ((0, 0), (y0, pad_y - y0), (x0, pad_x - x0)))


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> Tuple[np.ndarray, bool]:
    """Removes small disconnected regions ("islands") or holes; OpenCV, as the reference."""
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working_mask = (correct_holes ^ mask).astype(np.uint8)
    # connectivity by name: a positional 8 (as the reference passes it) binds to the ``labels``
    # output, which OpenCV reallocates, leaving connectivity at its default, 8: same results.
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working_mask, connectivity=8)
    sizes = stats[:, -1][1:]
    small_regions = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small_regions:
        return mask, False
    fill_labels = [0] + small_regions
    if not correct_holes:
        fill_labels = [i for i in range(n_labels) if i not in fill_labels]
        if not fill_labels:
            fill_labels = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill_labels), True


def coco_encode_rle(uncompressed_rle: Dict[str, Any]) -> Dict[str, Any]:
    """Compressed COCO RLE, byte-identical to pycocotools (which the ``amg`` extra installs)."""
    from pycocotools import mask as mask_utils

    h, w = uncompressed_rle["size"]
    rle = mask_utils.frPyObjects(uncompressed_rle, h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def batched_mask_to_box(masks: np.ndarray) -> np.ndarray:
    """XYXY boxes around [..., H, W] masks; [0, 0, 0, 0] for an empty mask."""
    if masks.size == 0:
        return np.zeros(masks.shape[:-2] + (4,), dtype=np.int64)
    h, w = masks.shape[-2:]
    flat = masks.reshape((-1, h, w))
    rows = flat.any(axis=2)
    cols = flat.any(axis=1)
    bottom = np.where(rows, np.arange(h), 0).max(axis=1)
    top = np.where(rows, np.arange(h), h).min(axis=1)
    right = np.where(cols, np.arange(w), 0).max(axis=1)
    left = np.where(cols, np.arange(w), w).min(axis=1)
    out = np.stack([left, top, right, bottom], axis=-1)
    out[(right < left) | (bottom < top)] = 0
    return out.reshape(masks.shape[:-2] + (4,)).astype(np.int64)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """The area of each [N, 4] XYXY box."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def batched_nms(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, iou_threshold: float) -> np.ndarray:
    """torchvision's batched_nms in numpy: greedy by score (stable), per category."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = boxes.astype(np.float32)
    offsets = idxs.astype(np.float32) * (boxes.max() + 1)
    boxes = boxes + offsets[:, None]
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]
    area = box_area(boxes)
    top_left = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (area[:, None] + area[None, :] - inter)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        # As torchvision: the float32 IoU compared with the threshold as a double (compared
        # in float32, the threshold would round first: IoU 0.3 would not exceed 0.3).
        suppressed |= iou[i].astype(np.float64) > iou_threshold
    return order[np.asarray(keep, dtype=np.int64)]
