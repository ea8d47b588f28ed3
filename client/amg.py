"""Automatic-mask-generation utilities in numpy: segment-anything's ``utils/amg.py`` without
torch or torchvision. Same names, same arguments, same results (tested against it).
"""

from __future__ import annotations

import functools
import math
from itertools import product
from typing import Any, Dict, Generator, List, Optional, Tuple

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
        # As torchvision: the float32 IoU compared with the threshold as a double (compared
        # in float32, the threshold would round first: IoU 0.3 would not exceed 0.3).
        suppressed |= iou[i].astype(np.float64) > iou_threshold
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
# Margin, relative to the largest |logit| a window reads, beyond which the window's input
# range decides a comparison whatever the rounding: float32 sums of <= 8 weighted taps (their
# weights summing to 1 within float32) err by < 1e-6 of it.
CERTAIN_MARGIN = 1e-5


class _Windows:
    """Consecutive outputs of an interpolation matrix [out, 256] in windows of ``size``: per
    window its outputs [out0, out0 + count), the inputs they read [in0, in0 + width), and its
    weights padded to [size, max width] (zeros outside)."""

    def __init__(self, matrix: np.ndarray, size: int):
        nonzero = matrix != 0
        first = nonzero.argmax(axis=1)
        last = matrix.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1)
        self.out0 = np.arange(0, len(matrix), size)
        self.count = np.minimum(self.out0 + size, len(matrix)) - self.out0
        self.in0 = np.minimum.reduceat(first, self.out0)
        self.width = np.maximum.reduceat(last, self.out0) + 1 - self.in0
        self.size, width = size, int(self.width.max())
        self.taps = np.minimum(self.in0[:, None] + np.arange(width), matrix.shape[1] - 1)  # [windows, width]
        self.weights = np.zeros((len(self.out0), size, width), np.float32)
        for w, (o0, n, i0, d) in enumerate(zip(self.out0, self.count, self.in0, self.width)):
            self.weights[w, :n, :d] = matrix[o0:o0 + n, i0:i0 + d]

    def extrema(self, low: np.ndarray, high: np.ndarray, axis: int):
        """Min of ``low`` and max of ``high`` over each window's inputs along ``axis`` (1 or 2):
        one gather per tap, so every reduction runs over contiguous memory."""
        taps = self.taps
        lowest = np.take(low, taps[:, 0], axis=axis)
        highest = lowest.copy() if high is low else np.take(high, taps[:, 0], axis=axis)
        for k in range(1, taps.shape[1]):
            np.minimum(lowest, np.take(low, taps[:, k], axis=axis), out=lowest)
            np.maximum(highest, np.take(high, taps[:, k], axis=axis), out=highest)
        return lowest, highest


@functools.lru_cache(maxsize=16)
def _windows(out: int, resized: int) -> _Windows:
    """The windows of one axis's upscaling (``upscale_matrix``): about two low-res cells each,
    a multiple of 8 outputs in 8..32 (a window's row of bits is whole bytes). Cached: every
    batch of an image asks for the same."""
    from .transforms import upscale_matrix

    return _Windows(upscale_matrix(out, resized), int(np.clip(round(out / resized), 1, 4)) * 8)


def flat_bits(row_bytes: np.ndarray, width: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``np.packbits(mask.reshape(-1))`` from ``np.packbits(mask, axis=1)`` ([H, ceil(W/8)],
    rows padded with zero bits) for a mask ``width`` wide, shifting bytes, not pixels: rows
    start on a byte every 8 / gcd(W % 8, 8) rows; within such a group row k starts k*W bits
    in. Written into ``out`` (ceil(H*W/8) bytes) when given."""
    height, per_row = row_bytes.shape
    total = (height * width + 7) // 8
    out = np.empty(total, np.uint8) if out is None else out
    group = 8 // math.gcd(width % 8, 8)
    if group == 1:
        out.reshape(height, per_row)[:] = row_bytes
        return out
    groups, group_bytes = -(-height // group), group * width // 8
    aligned = height % group == 0
    target = out.reshape(groups, group_bytes) if aligned else np.empty((groups, group_bytes), np.uint8)
    rows = row_bytes if aligned else np.concatenate(
        [row_bytes, np.zeros((groups * group - height, per_row), np.uint8)])
    for k in range(group):
        start, shift = divmod(k * width, 8)
        part = rows[k::group]
        stop = min(start + per_row, group_bytes)  # a byte past the group holds only padding
        if k == 0:
            target[:, :per_row] = part
            target[:, per_row:] = 0
        else:
            target[:, start:stop] |= part[:, :stop - start] >> shift
            if shift:
                spill = min(start + 1 + per_row, group_bytes) - (start + 1)
                target[:, start + 1:start + 1 + spill] |= part[:, :spill] << (8 - shift)
    if not aligned:
        out[:] = target.reshape(-1)[:total]
    return out


def _exact_windows(logits, masks, row_windows, rows: _Windows, col_windows, cols: _Windows) -> np.ndarray:
    """Upscaled logits of the given windows, [n, rows.size, cols.size]: rows first, then
    columns, as the dense products (``postprocess_masks``) do, on the few taps in use."""
    taps = logits[masks[:, None, None], rows.taps[row_windows][:, :, None], cols.taps[col_windows][:, None, :]]
    return np.matmul(np.matmul(rows.weights[row_windows], taps), cols.weights[col_windows].transpose(0, 2, 1))


def kept_mask_outputs(low_res_masks: np.ndarray, iou_predictions: np.ndarray, input_size, crop_size,
                      thresholds, work_bytes: int = 256 * 2**20, threads: int = 1) -> Dict[str, np.ndarray]:
    """The AMG stage's response for one batch (what NAME_amg and the session model both send):
    ``filter_batch``'s result with ``thresholds`` = (pred_iou_thresh, stability_score_thresh,
    stability_score_offset), the kept masks packed as bits, by ``contract.AMG`` output name.

    Bilinear upscaling takes convex combinations of the low-res logits, so a window of output
    pixels whose inputs all lie above a threshold (by more than rounding) is above it
    throughout. Only windows whose input range straddles -offset, 0 or +offset (the mask's
    edges) are upscaled, exactly as ``postprocess_masks`` does; the rest are counted and
    filled by the window. Working memory stays within ``work_bytes`` (at most 16 MiB at a
    time per thread), whatever the prompts x crop pixels: one kept mask's pixels at a time
    for its bits. ``threads`` share the masks out (numpy runs without the GIL); BLAS stays on
    one thread, as its threads only add overhead to these small products (measured: 1.04 s of
    CPU for 0.58 s of work at 12 MP)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _kept_mask_outputs(low_res_masks, iou_predictions, input_size, crop_size, thresholds, work_bytes,
                                  threads)


def _kept_mask_outputs(low_res_masks, iou_predictions, input_size, crop_size, thresholds, work_bytes, threads):
    from . import contract as C

    (h, w), (height, width) = (int(v) for v in input_size), (int(v) for v in crop_size)
    iou_thresh, stability_thresh, offset = (float(v) for v in thresholds)
    logits = low_res_masks[:, C.MULTIMASK_SLICE].reshape(-1, *low_res_masks.shape[-2:])
    scores = iou_predictions[:, C.MULTIMASK_SLICE].reshape(-1)
    index = np.arange(len(scores))
    if iou_thresh > 0.0:
        index = index[scores > iou_thresh]
    threads = max(1, min(int(threads), len(index)))
    work_bytes = max(2**20, min(work_bytes // threads, TILE_BYTES))
    rows, cols = _windows(height, h), _windows(width, w)
    parts = [np.arange(k, len(index), threads) for k in range(threads)]  # interleaved: even work per thread
    counts = np.zeros((2, len(index)), np.int64)  # pixels over +offset, over -offset
    above_zero = np.zeros((len(index), len(rows.out0), len(cols.out0)), bool)
    edge_of_zero = np.zeros_like(above_zero)

    def count(part):
        counts[:, part], above_zero[part], edge_of_zero[part] = _window_counts(logits, index[part], rows, cols, offset,
                                                                               work_bytes)

    with _pool(threads) as pool:
        list(pool.map(count, parts))
        with np.errstate(invalid="ignore", divide="ignore"):
            stability = (counts[0] / counts[1]).astype(np.float32)
        keep = np.ones(len(index), bool) if stability_thresh <= 0.0 else stability >= stability_thresh
        kept = np.flatnonzero(keep)
        packed = np.empty((len(kept), (height * width + 7) // 8), np.uint8)

        def pack(outputs):
            for out in outputs:
                i = kept[out]
                _mask_bits(logits[index[i]], above_zero[i], edge_of_zero[i], rows, cols, height, width, work_bytes,
                           packed[out])

        list(pool.map(pack, [np.arange(k, len(kept), threads) for k in range(threads)]))
    index = index[kept]
    return {C.KEPT_INDEX.name: index.astype(np.int64), C.KEPT_IOU.name: scores[index].astype(np.float32),
            C.KEPT_STABILITY.name: stability[kept], C.KEPT_MASKS.name: packed}


class _Inline:
    """``map`` in the calling thread (one thread: no pool)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(threads) if threads > 1 else _Inline()


def _window_counts(logits, index, rows: _Windows, cols: _Windows, offset: float, work_bytes: int):
    """For the masks ``logits[index]``: pixels over +offset and over -offset ([2, n]), and per
    window whether it lies over 0 throughout and whether it straddles 0 ([n, windows, windows])."""
    area = np.outer(rows.count, cols.count).astype(np.float64)
    levels = (offset, -offset, 0.0)
    n = len(index)
    counts = np.zeros((2, n), np.int64)
    above_zero = np.zeros((n, len(rows.out0), len(cols.out0)), bool)
    edge_of_zero = np.zeros_like(above_zero)
    group = max(1, work_bytes // (8 * len(rows.out0) * logits.shape[-1]))
    chunk = max(1, work_bytes // (16 * rows.size * cols.size))
    for g0 in range(0, n, group):
        selected = logits[index[g0:g0 + group]].astype(np.float32, copy=False)
        lo, hi = cols.extrema(*rows.extrema(selected, selected, 1), 2)  # [masks, row windows, col windows]
        margin = CERTAIN_MARGIN * np.maximum(1.0, np.maximum(-lo, hi))  # the window's largest |logit|
        above = [lo > t + margin for t in levels]
        straddles = [~a & (hi > t - margin) for a, t in zip(above, levels)]
        unsure = straddles[0] | straddles[1]  # the stability counts' levels; level 0 waits for the bits
        for k in range(2):
            counts[k, g0:g0 + len(selected)] = ((above[k] & ~unsure).reshape(len(selected), -1) @ area.ravel()).astype(
                np.int64)
        above_zero[g0:g0 + len(selected)], edge_of_zero[g0:g0 + len(selected)] = above[2], straddles[2]
        masks, row_w, col_w = np.nonzero(unsure)
        for c0 in range(0, len(masks), chunk):
            m, r, c = masks[c0:c0 + chunk], row_w[c0:c0 + chunk], col_w[c0:c0 + chunk]
            values = _exact_windows(selected, m, r, rows, c, cols)
            # Padding outside the crop has weight 0, so value 0: over a level below 0 it counts.
            padding = np.bincount(m, rows.size * cols.size - rows.count[r] * cols.count[c], minlength=len(selected))
            present, starts = np.unique(m, return_index=True)  # m is sorted: one run of windows per mask
            ends = np.append(starts[1:], len(m)) * values[0].size
            starts = starts * values[0].size
            for k in range(2):
                over = (values > levels[k]).reshape(-1)
                inside = np.array([np.count_nonzero(over[a:b]) for a, b in zip(starts, ends)], np.int64)
                counts[k, g0 + present] += inside - (padding[present].astype(np.int64) if levels[k] < 0.0 else 0)
    return counts, above_zero, edge_of_zero


def _mask_bits(logits, above_zero, edge_of_zero, rows: _Windows, cols: _Windows, height, width, work_bytes, out):
    """One mask's bits (``np.packbits`` of its flattened crop), built in bytes: each row packed
    on its own (window blocks [row windows, rows.size, col windows, cols.size / 8] read in C
    order), windows off the edge filled whole, edge windows from their exact values; then the
    rows joined into one stream."""
    per_row, tail = (width + 7) // 8, width % 8
    image = np.repeat(np.repeat(above_zero.view(np.uint8) * np.uint8(255), cols.size // 8, axis=1), rows.size, axis=0)
    blocks = image.reshape(len(rows.out0), rows.size, len(cols.out0), cols.size // 8)
    row_w, col_w = np.nonzero(edge_of_zero)
    single = logits[None].astype(np.float32, copy=False)
    chunk = max(1, work_bytes // (16 * rows.size * cols.size))
    for c0 in range(0, len(row_w), chunk):
        r, c = row_w[c0:c0 + chunk], col_w[c0:c0 + chunk]
        exact = _exact_windows(single, np.zeros(len(r), np.intp), r, rows, c, cols) > 0.0
        blocks[r, :, c, :] = np.packbits(exact, axis=2)
    image = image[:height, :per_row]
    if tail:  # windows past the crop's right edge filled whole: clear the bits past it
        image[:, -1] &= np.uint8((0xFF << (8 - tail)) & 0xFF)
    flat_bits(image, width, out)


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
