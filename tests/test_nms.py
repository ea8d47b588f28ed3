"""Non-maximum suppression checked against a brute-force NMS written here, on random boxes,
scores and categories (hypothesis): samtriton.amg.batched_nms (the client's AMG) and the
torch stand-in export/compat.py gives the reference where torchvision cannot be imported.

The brute force spells out torchvision.ops.batched_nms (its CPU kernel and the coordinate
trick of its Python wrapper): within each category, boxes are visited by score, highest first,
equal scores in input order (a stable sort); a box is kept unless its IoU with a box already
kept in its category exceeds the threshold; the kept indices come back in visiting order.
IoU is computed as the kernel computes it for float32 boxes: a float32 quotient, compared
with the threshold as a double (0/0 gives NaN, which suppresses nothing).

Boxes have integer corners, as AMG's boxes (from masks and crop offsets) always do: then
areas and intersections are exact in float32 and only the quotient rounds, so the brute
force needs no coordinate trick to agree bit for bit.
"""

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from samtriton import amg
from samtriton.export import compat

# `pytest -m unit`: no server is started and nothing is exported here.
pytestmark = pytest.mark.unit


def iou_float32(a, b):
    """IoU of two integer-corner boxes as torchvision's CPU kernel gets it for float32."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float32(inter) / np.float32(union))


def brute_force_nms(boxes, scores, categories, threshold):
    order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    kept = []
    for i in order:
        suppressed = any(categories[j] == categories[i] and iou_float32(boxes[i], boxes[j]) > threshold for j in kept)
        if not suppressed:
            kept.append(i)
    return kept


@st.composite
def nms_inputs(draw):
    """Up to 40 boxes on a small grid (so that they overlap often), zero-area boxes
    included; scores drawn often from three values (so that ties are common); up to 4
    categories; thresholds at round values (where float32 rounding matters) or anywhere."""
    n = draw(st.integers(0, 40))
    corners = draw(
        st.lists(
            st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 20), st.integers(0, 20)),
            min_size=n,
            max_size=n,
        )
    )
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in corners], np.float32).reshape(n, 4)
    score = st.one_of(st.sampled_from([0.25, 0.5, 0.875]), st.floats(0, 1, width=32))
    scores = np.array(draw(st.lists(score, min_size=n, max_size=n)), np.float32)
    categories = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.int64)
    threshold = draw(st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.6, 0.7, 1.0]), st.floats(0, 1)))
    return boxes, scores, categories, threshold


# Pinned examples: every score tied; no box at all; a pair whose IoU is exactly 3/10 at
# threshold 0.3 (float32(0.3) > 0.3: torchvision suppresses it).
TIES = (
    np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [30, 30, 40, 40]], np.float32),
    np.full(4, 0.5, np.float32),
    np.zeros(4, np.int64),
    0.5,
)
EMPTY = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.7)
ROUNDING = (
    np.array([[0, 0, 10, 1], [0, 0, 3, 1]], np.float32),
    np.array([0.9, 0.8], np.float32),
    np.zeros(2, np.int64),
    0.3,
)


@settings(max_examples=300, deadline=None)
@given(case=nms_inputs())
@example(case=TIES)
@example(case=EMPTY)
@example(case=ROUNDING)
def test_samtriton_batched_nms_is_brute_force_nms(case):
    boxes, scores, categories, threshold = case
    keep = amg.batched_nms(boxes, scores, categories, threshold)
    assert keep.dtype == np.int64
    assert keep.tolist() == brute_force_nms(boxes, scores, categories, threshold)


@settings(max_examples=150, deadline=None)
@given(case=nms_inputs())
@example(case=TIES)
@example(case=EMPTY)
@example(case=ROUNDING)
def test_reference_stand_in_batched_nms_is_brute_force_nms(case):
    """The reference's NMS where torchvision is absent: torch code of its own, not samtriton's."""
    boxes, scores, categories, threshold = case
    keep = compat.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(categories), threshold
    )
    assert keep.dtype == torch.int64
    assert keep.tolist() == brute_force_nms(boxes, scores, categories, threshold)


def test_ties_keep_input_order():
    """Equal scores: the earlier box is visited first and suppresses the later duplicate."""
    boxes, scores, categories, threshold = TIES
    assert brute_force_nms(*TIES) == [0, 3]
    assert amg.batched_nms(boxes, scores, categories, threshold).tolist() == [0, 3]
    boxes, scores = boxes[::-1].copy(), scores[::-1].copy()
    assert amg.batched_nms(boxes, scores, categories, threshold).tolist() == [0, 1]


@pytest.mark.parametrize("nms", ["samtriton", "stand-in"])
def test_empty_input(nms):
    boxes, scores, categories, threshold = EMPTY
    if nms == "samtriton":
        keep = amg.batched_nms(boxes, scores, categories, threshold)
    else:
        keep = compat.batched_nms(*map(torch.from_numpy, (boxes, scores, categories)), threshold).numpy()
    assert keep.shape == (0,) and keep.dtype == np.int64
