"""The AMG filter in numpy, for a stage beside the python decoder (the CPU): only the windows
of output pixels at the masks' edges are upscaled.

Bilinear upscaling takes convex combinations of the low-res logits, so a window of output
pixels whose inputs all lie above a level (by more than rounding) is above it throughout;
only windows whose input range straddles -offset, 0 or +offset are upscaled, exactly as
``samtriton.transforms.postprocess_masks`` does. Same masks, bit for bit, and stability
scores as the whole-batch port (tests/amg_oracle.py).
"""

from __future__ import annotations

import functools
import math
from typing import Dict, Optional

import numpy as np

from samtriton import contract as C
from samtriton.transforms import upscale_matrix

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
            self.weights[w, :n, :d] = matrix[o0 : o0 + n, i0 : i0 + d]

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
    rows = row_bytes if aligned else np.concatenate([row_bytes, np.zeros((groups * group - height, per_row), np.uint8)])
    for k in range(group):
        start, shift = divmod(k * width, 8)
        part = rows[k::group]
        stop = min(start + per_row, group_bytes)  # a byte past the group holds only padding
        if k == 0:
            target[:, :per_row] = part
            target[:, per_row:] = 0
        else:
            target[:, start:stop] |= part[:, : stop - start] >> shift
            if shift:
                spill = min(start + 1 + per_row, group_bytes) - (start + 1)
                target[:, start + 1 : start + 1 + spill] |= part[:, :spill] << (8 - shift)
    if not aligned:
        out[:] = target.reshape(-1)[:total]
    return out


def _exact_windows(logits, masks, row_windows, rows: _Windows, col_windows, cols: _Windows) -> np.ndarray:
    """Upscaled logits of the given windows, [n, rows.size, cols.size]: rows first, then
    columns, as the dense products (``postprocess_masks``) do, on the few taps in use."""
    taps = logits[masks[:, None, None], rows.taps[row_windows][:, :, None], cols.taps[col_windows][:, None, :]]
    return np.matmul(np.matmul(rows.weights[row_windows], taps), cols.weights[col_windows].transpose(0, 2, 1))


def kept_mask_outputs(
    low_res_masks: np.ndarray,
    iou_predictions: np.ndarray,
    input_size,
    crop_size,
    thresholds,
    work_bytes: int = 256 * 2**20,
    threads: int = 1,
) -> Dict[str, np.ndarray]:
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
    one thread, as its threads only add overhead to these small products (docs/benchmarks.md)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _kept_mask_outputs(
            low_res_masks, iou_predictions, input_size, crop_size, thresholds, work_bytes, threads
        )


def _kept_mask_outputs(low_res_masks, iou_predictions, input_size, crop_size, thresholds, work_bytes, threads):
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
        counts[:, part], above_zero[part], edge_of_zero[part] = _window_counts(
            logits, index[part], rows, cols, offset, work_bytes
        )

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
                _mask_bits(
                    logits[index[i]], above_zero[i], edge_of_zero[i], rows, cols, height, width, work_bytes, packed[out]
                )

        list(pool.map(pack, [np.arange(k, len(kept), threads) for k in range(threads)]))
    index = index[kept]
    return {
        C.KEPT_INDEX.name: index.astype(np.int64),
        C.KEPT_IOU.name: scores[index].astype(np.float32),
        C.KEPT_STABILITY.name: stability[kept],
        C.KEPT_MASKS.name: packed,
    }


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
        selected = logits[index[g0 : g0 + group]].astype(np.float32, copy=False)
        lo, hi = cols.extrema(*rows.extrema(selected, selected, 1), 2)  # [masks, row windows, col windows]
        margin = CERTAIN_MARGIN * np.maximum(1.0, np.maximum(-lo, hi))  # the window's largest |logit|
        above = [lo > t + margin for t in levels]
        straddles = [~a & (hi > t - margin) for a, t in zip(above, levels)]
        unsure = straddles[0] | straddles[1]  # the stability counts' levels; level 0 waits for the bits
        for k in range(2):
            counts[k, g0 : g0 + len(selected)] = (
                (above[k] & ~unsure).reshape(len(selected), -1) @ area.ravel()
            ).astype(np.int64)
        above_zero[g0 : g0 + len(selected)], edge_of_zero[g0 : g0 + len(selected)] = above[2], straddles[2]
        masks, row_w, col_w = np.nonzero(unsure)
        for c0 in range(0, len(masks), chunk):
            m, r, c = masks[c0 : c0 + chunk], row_w[c0 : c0 + chunk], col_w[c0 : c0 + chunk]
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
        r, c = row_w[c0 : c0 + chunk], col_w[c0 : c0 + chunk]
        exact = _exact_windows(single, np.zeros(len(r), np.intp), r, rows, c, cols) > 0.0
        blocks[r, :, c, :] = np.packbits(exact, axis=2)
    image = image[:height, :per_row]
    if tail:  # windows past the crop's right edge filled whole: clear the bits past it
        image[:, -1] &= np.uint8((0xFF << (8 - tail)) & 0xFF)
    flat_bits(image, width, out)
