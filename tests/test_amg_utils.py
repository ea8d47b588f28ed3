"""samtriton.amg (numpy) against segment-anything's utils/amg.py (torch) on the same data."""

import numpy as np
import pytest
import torch

from samtriton import amg

# `pytest -m unit`: no server is started and nothing is exported here.
pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ref():
    from samtriton.export.compat import ensure_reference_imports

    ensure_reference_imports()
    from segment_anything.utils import amg as reference

    return reference


@pytest.fixture(scope="module")
def masks(images):
    """Real-looking masks: thresholded image channels, plus an empty and a full mask."""
    out = [images["coins_gray"] > t for t in (60, 120, 180)]
    out.append(np.zeros_like(out[0]))
    out.append(np.ones_like(out[0]))
    return np.stack(out)


def test_rle_round_trip_and_area(ref, masks):
    ours = amg.mask_to_rle(masks)
    theirs = ref.mask_to_rle_pytorch(torch.from_numpy(masks))
    assert ours == theirs
    for rle, mask in zip(ours, masks):
        np.testing.assert_array_equal(amg.rle_to_mask(rle), mask)
        assert amg.area_from_rle(rle) == ref.area_from_rle(rle) == mask.sum()


def test_coco_rle_matches_pycocotools(masks):
    from pycocotools import mask as mask_utils

    for rle, mask in zip(amg.mask_to_rle(masks), masks):
        coco = amg.coco_encode_rle(rle)
        expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert coco["counts"] == expected["counts"].decode() and coco["size"] == list(expected["size"])
        np.testing.assert_array_equal(mask_utils.decode(coco).astype(bool), mask)


def test_boxes_stability_and_edges(ref, masks):
    np.testing.assert_array_equal(
        amg.batched_mask_to_box(masks), ref.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    )
    logits = np.random.default_rng(0).normal(0, 2, (6, 64, 80)).astype(np.float32)
    np.testing.assert_allclose(
        amg.calculate_stability_score(logits, 0.0, 1.0),
        ref.calculate_stability_score(torch.from_numpy(logits), 0.0, 1.0).numpy(),
        rtol=1e-6,
    )
    boxes = np.array([[0, 0, 100, 100], [30, 40, 300, 290], [250, 5, 400, 300]])
    for crop in ([0, 0, 384, 303], [100, 0, 384, 200]):
        np.testing.assert_array_equal(
            amg.is_box_near_crop_edge(boxes, crop, [0, 0, 384, 303]),
            ref.is_box_near_crop_edge(torch.from_numpy(boxes), crop, [0, 0, 384, 303]).numpy(),
        )


@pytest.mark.parametrize(
    "size, layers, overlap", [((512, 512), 1, 512 / 1500), ((303, 384), 2, 0.3), ((1411, 1100), 1, 0.2)]
)
def test_crops_grids_uncrop(ref, size, layers, overlap):
    assert amg.generate_crop_boxes(size, layers, overlap) == ref.generate_crop_boxes(size, layers, overlap)
    for ours, theirs in zip(
        amg.build_all_layer_point_grids(32, layers, 2), ref.build_all_layer_point_grids(32, layers, 2)
    ):
        np.testing.assert_array_equal(ours, theirs)
    crop = amg.generate_crop_boxes(size, layers, overlap)[0][-1]
    mask = np.ones((2, crop[3] - crop[1], crop[2] - crop[0]), bool)
    np.testing.assert_array_equal(
        amg.uncrop_masks(mask, crop, *size), ref.uncrop_masks(torch.from_numpy(mask), crop, *size).numpy()
    )


def test_remove_small_regions(ref, images):
    mask = images["coins_gray"] > 110
    for mode in ("holes", "islands"):
        ours, changed = amg.remove_small_regions(mask, 100, mode)
        theirs, ref_changed = ref.remove_small_regions(mask, 100, mode)
        np.testing.assert_array_equal(ours, theirs)
        assert changed == ref_changed


def test_batched_nms_hand_computed():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 9, 10.0]])
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.6])
    categories = np.array([0, 0, 0, 1, 0])
    assert amg.batched_nms(boxes, scores, categories, 0.5).tolist() == [3, 0, 2]
    assert amg.batched_nms(boxes, scores, np.zeros(5), 0.5).tolist() == [3, 2]
