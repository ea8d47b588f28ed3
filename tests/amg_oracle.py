"""The tests' oracle for automatic mask generation's filtering: the straightforward port of
SamAutomaticMaskGenerator._process_batch's per-batch steps (every mask upscaled whole), against
which the served filters (samtriton.server.amg_filter) are checked; itself checked against
the reference's functions (tests/test_amg_utils.py, tests/test_amg_filter.py)."""

from typing import Tuple

import numpy as np

from samtriton.amg import calculate_stability_score


def filter_batch(
    low_res_masks: np.ndarray,
    iou_predictions: np.ndarray,
    input_size: Tuple[int, int],
    crop_size: Tuple[int, int],
    pred_iou_thresh: float,
    stability_score_thresh: float,
    stability_score_offset: float,
    mask_threshold: float = 0.0,
):
    """SamAutomaticMaskGenerator._process_batch's filtering for one batch of K point prompts.

    Takes the decoder's [K, 4, 256, 256] logits and [K, 4] IoU predictions, keeps the three
    multimask outputs, drops masks under ``pred_iou_thresh`` (before upscaling: the score does
    not depend on resolution), upscales the rest to ``crop_size`` like Sam.postprocess_masks,
    computes stability scores on those logits and drops masks under the threshold.
    Returns (kept indices into the K x 3 outputs, IoU predictions, stability scores,
    binary masks [M, H, W]).
    """
    from samtriton.contract import MULTIMASK_SLICE
    from samtriton.transforms import postprocess_masks

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
