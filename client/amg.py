"""Automatic-mask-generation utilities in numpy: segment-anything's ``utils/amg.py`` without
torch or torchvision. Same names, same arguments, same results (tested against it).
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any, Dict, Generator, List, Tuple

import numpy as np


def is_box_near_crop_edge(boxes: np.ndarray, crop_box: List[int], orig_box: List[int],
                          atol: float = 20.0) -> np.ndarray:
    """Boxes touching the edge of a crop, but not the edge of the original image."""
    crop = np.asarray(crop_box, dtype=np.float32)[None, :]
    orig = np.asarray(orig_box, dtype=np.float32)[None, :]
    boxes = uncrop_boxes_xyxy(boxes, crop_box).astype(np.float32)
    near_crop_edge = np.isclose(boxes, crop, atol=atol, rtol=0)
    near_image_edge = np.isclose(boxes, orig, atol=atol, rtol=0)
    return np.any(near_crop_edge & ~near_image_edge, axis=1)


def box_xyxy_to_xywh(box_xyxy: np.ndarray) -> np.ndarray:
    box = np.array(box_xyxy, copy=True)
    box[2] = box[2] - box[0]
    box[3] = box[3] - box[1]
    return box


def batch_iterator(batch_size: int, *args) -> Generator[List[Any], None, None]:
    if not args or any(len(a) != len(args[0]) for a in args):
        raise ValueError("Batched iteration must have inputs of all the same size.")
    n_batches = len(args[0]) // batch_size + int(len(args[0]) % batch_size != 0)
    for b in range(n_batches):
        yield [arg[b * batch_size: (b + 1) * batch_size] for arg in args]


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
    h, w = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    mask = np.repeat(values, rle["counts"])
    return mask.reshape(w, h).transpose()


def area_from_rle(rle: Dict[str, Any]) -> int:
    return sum(rle["counts"][1::2])


def calculate_stability_score(masks: np.ndarray, mask_threshold: float, threshold_offset: float) -> np.ndarray:
    """IoU of the masks thresholded at threshold +/- offset (one contains the other)."""
    intersections = (masks > (mask_threshold + threshold_offset)).sum(axis=(-1, -2), dtype=np.int64)
    unions = (masks > (mask_threshold - threshold_offset)).sum(axis=(-1, -2), dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (intersections / unions).astype(np.float32)


def build_point_grid(n_per_side: int) -> np.ndarray:
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> List[np.ndarray]:
    return [build_point_grid(int(n_per_side / (scale_per_layer ** i))) for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: Tuple[int, ...], n_layers: int,
                        overlap_ratio: float) -> Tuple[List[List[int]], List[int]]:
    crop_boxes, layer_idxs = [], []
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes.append([0, 0, im_w, im_h])
    layer_idxs.append(0)

    def crop_len(orig_len, n_crops, overlap):
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
    x0, y0, _, _ = crop_box
    offset = np.array([[x0, y0, x0, y0]])
    if boxes.ndim == 3:
        offset = offset[:, None]
    return boxes + offset


def uncrop_points(points: np.ndarray, crop_box: List[int]) -> np.ndarray:
    x0, y0, _, _ = crop_box
    offset = np.array([[x0, y0]])
    if points.ndim == 3:
        offset = offset[:, None]
    return points + offset


def uncrop_masks(masks: np.ndarray, crop_box: List[int], orig_h: int, orig_w: int) -> np.ndarray:
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
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working_mask, 8)
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
        suppressed |= iou[i] > iou_threshold
    return order[np.asarray(keep, dtype=np.int64)]


def filter_batch(low_res_masks: np.ndarray, iou_predictions: np.ndarray, input_size: Tuple[int, int],
                 crop_size: Tuple[int, int], pred_iou_thresh: float, stability_score_thresh: float,
                 stability_score_offset: float, mask_threshold: float = 0.0):
    """SamAutomaticMaskGenerator._process_batch's filtering for one batch of K point prompts.

    Takes the decoder's [K, 4, 256, 256] logits and [K, 4] IoU predictions, keeps the three
    multimask outputs, drops masks under ``pred_iou_thresh`` (before upscaling: the score does
    not depend on resolution), upscales the rest to ``crop_size`` like Sam.postprocess_masks,
    computes stability scores on those logits and drops masks under the threshold.
    Returns (kept indices into the K x 3 outputs, IoU predictions, stability scores,
    binary masks [M, H, W]).
    """
    from .contract import MULTIMASK_SLICE
    from .transforms import postprocess_masks

    logits = low_res_masks[:, MULTIMASK_SLICE].reshape(-1, *low_res_masks.shape[-2:])
    scores = iou_predictions[:, MULTIMASK_SLICE].reshape(-1)
    index = np.arange(len(scores))
    if pred_iou_thresh > 0.0:
        index = index[scores > pred_iou_thresh]
    masks = postprocess_masks(logits[index], input_size, crop_size)
    stability = calculate_stability_score(masks, mask_threshold, stability_score_offset)
    if stability_score_thresh > 0.0:
        keep = stability >= stability_score_thresh
        index, masks, stability = index[keep], masks[keep], stability[keep]
    return index, scores[index], stability, masks > mask_threshold


TILE_BYTES = 16 * 2**20


def kept_mask_outputs(low_res_masks: np.ndarray, iou_predictions: np.ndarray, input_size, crop_size,
                      thresholds, work_bytes: int = 256 * 2**20) -> Dict[str, np.ndarray]:
    """The AMG stage's response for one batch (what NAME_amg and the session model both send):
    ``filter_batch``'s result with ``thresholds`` = (pred_iou_thresh, stability_score_thresh,
    stability_score_offset), the kept masks packed as bits, by ``contract.AMG`` output name.

    The upscaled logits are made a tile of rows at a time for a group of masks, at most
    ``work_bytes`` of float32 at once, so memory does not grow with prompts x crop pixels:
    per tile the stability counts accumulate and the bits are packed (tiles of a multiple of
    8 rows keep the packed rows aligned), and only the bits wait for the stability verdict."""
    from . import contract as C
    from .transforms import upscale_matrix

    (h, w), (height, width) = (int(v) for v in input_size), (int(v) for v in crop_size)
    iou_thresh, stability_thresh, offset = (float(v) for v in thresholds)
    logits = low_res_masks[:, C.MULTIMASK_SLICE].reshape(-1, *low_res_masks.shape[-2:])
    scores = iou_predictions[:, C.MULTIMASK_SLICE].reshape(-1)
    index = np.arange(len(scores))
    if iou_thresh > 0.0:
        index = index[scores > iou_thresh]
    rows, cols_t = upscale_matrix(height, h), np.ascontiguousarray(upscale_matrix(width, w).T)
    column_blocks = _bands(cols_t.T, 128)
    packed_len = (height * width + 7) // 8
    packed = np.zeros((len(index), packed_len), np.uint8)
    over_hi = np.zeros(len(index), np.int64)
    over_lo = np.zeros(len(index), np.int64)
    # Tiles small enough to stay in cache while compared three times (measured on 2 cores, 3 MP:
    # 0.8 s a batch with 16-32 MiB tiles, 1.3 s with 256 MiB), never more than work_bytes.
    work_bytes = min(work_bytes, TILE_BYTES)
    group = max(1, min(len(index), work_bytes // (8 * width * 4 * 3)))  # masks sharing a tile of >= 8 rows
    for g0 in range(0, len(index), group):
        selected = logits[index[g0:g0 + group]].astype(np.float32, copy=False)
        n = len(selected)
        tile = max(8, (work_bytes // (n * width * 4 * 3)) // 8 * 8)  # the tile + two comparisons' worth
        for r0 in range(0, height, tile):
            upscaled = _banded_upscale(rows[r0:r0 + tile], selected, cols_t, column_blocks)  # [n, t, W]
            over_hi[g0:g0 + n] += np.count_nonzero((upscaled > offset).reshape(n, -1), axis=1)
            over_lo[g0:g0 + n] += np.count_nonzero((upscaled > -offset).reshape(n, -1), axis=1)
            bits = np.packbits((upscaled > 0.0).reshape(n, -1), axis=1)
            start = r0 * width // 8
            packed[g0:g0 + n, start:start + bits.shape[1]] = bits
    with np.errstate(invalid="ignore", divide="ignore"):
        stability = (over_hi / over_lo).astype(np.float32)
    keep = np.ones(len(index), bool) if stability_thresh <= 0.0 else stability >= stability_thresh
    if not keep.all():  # (when everything is kept, no second copy of the bits)
        index, stability, packed = index[keep], stability[keep], packed[keep]
    return {C.KEPT_INDEX.name: index.astype(np.int64), C.KEPT_IOU.name: scores[index].astype(np.float32),
            C.KEPT_STABILITY.name: stability, C.KEPT_MASKS.name: packed}


def _bands(matrix: np.ndarray, block: int) -> List[Tuple[int, int, int, int]]:
    """(out0, out1, in0, in1) per block of ``block`` output rows of an interpolation matrix
    [out, in]: the input range those rows use. Bilinear rows have 2-4 nonzero taps, so a
    block needs a narrow band of the 256 inputs instead of all of them."""
    nonzero = matrix != 0
    first = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0)
    last = np.where(nonzero.any(axis=1), matrix.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1), 0)
    return [(o, min(o + block, len(matrix)), int(first[o:o + block].min()), int(last[o:o + block].max()) + 1)
            for o in range(0, len(matrix), block)]


def _banded_upscale(rows: np.ndarray, logits: np.ndarray, cols_t: np.ndarray,
                    column_blocks: List[Tuple[int, int, int, int]]) -> np.ndarray:
    """rows [t, 256] @ logits [n, 256, 256] @ cols_t [256, W], touching only the inputs each
    block of outputs uses (the same sums as the dense products, ~10x fewer multiplications)."""
    (_, _, r_in0, r_in1), = _bands(rows, len(rows))
    scaled = np.matmul(rows[:, r_in0:r_in1], logits[:, r_in0:r_in1, :])  # [n, t, 256]
    out = np.empty(scaled.shape[:2] + (cols_t.shape[1],), np.float32)
    for o0, o1, i0, i1 in column_blocks:
        np.matmul(scaled[:, :, i0:i1], cols_t[i0:i1, o0:o1], out=out[:, :, o0:o1])
    return out


def prompt_chunks(iou, crop_size, thresholds, budget_bytes):
    """[start, stop) prompt ranges whose masks past the IoU threshold fit ``budget_bytes`` in
    the filter graph (the 1024 x 1024 intermediate, then ~20 bytes a crop pixel); at least
    one prompt each."""
    from . import contract as C

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
