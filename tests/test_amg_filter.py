"""The AMG stage's filtering on its own: the windowed numpy filter the CPU server runs, and the
ONNX graph a GPU deployment runs beside its decoder, both against the straightforward port
of the reference (``amg_oracle.filter_batch``, tested function by function against
segment-anything), on the real MobileSAM decoder's outputs for a real photograph."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samtriton import contract as C
from samtriton.server.amg_filter.windows import flat_bits, kept_mask_outputs

from amg_oracle import filter_batch

THRESHOLDS = np.array([0.88, 0.95, 1.0], np.float32)  # the reference's defaults
CROPS = {  # crop size (h, w) -> the encoder's input size for it
    "512 x 512": ((512, 512), (1024, 1024)),
    "427 x 640": ((427, 640), (683, 1024)),
    "3 MP": ((1536, 2048), (768, 1024)),
    # Rows that do not start on a byte (453 % 8 = 5: a byte boundary every 8 rows; 301 rows).
    "301 x 453": ((301, 453), (680, 1024)),
}


@pytest.fixture(scope="module")
def decoded(reference_predictor, images):
    """64 grid points on chelsea through the real decoder: [64, 4, 256, 256] logits, [64, 4] IoU
    (mask 0, the single-mask output, is filler: the filters use masks 1..3)."""
    import torch

    image = images["chelsea"]
    reference_predictor.set_image(image)
    h, w = image.shape[:2]
    grid = np.stack(np.meshgrid(np.linspace(0.06, 0.94, 8) * w, np.linspace(0.06, 0.94, 8) * h), -1).reshape(-1, 2)
    coords = reference_predictor.transform.apply_coords(grid, (h, w))
    with torch.no_grad():
        _, iou, low_res = reference_predictor.predict_torch(
            torch.as_tensor(coords[:, None, :], dtype=torch.float32),
            torch.ones(len(grid), 1, dtype=torch.int64),
            multimask_output=True,
            return_logits=True,
        )
    low_res, iou = low_res.numpy(), iou.numpy()
    return (
        np.concatenate([low_res[:, :1], low_res], axis=1).astype(np.float32),
        np.concatenate([iou[:, :1], iou], axis=1).astype(np.float32),
    )


def _reference(low_res, iou, input_size, crop_size, thresholds):
    index, scores, stability, masks = filter_batch(low_res, iou, input_size, crop_size, *map(float, thresholds))
    return index, scores, stability, np.packbits(masks.reshape(len(masks), int(np.prod(crop_size))), axis=1)


def _assert_same(out, expected, max_bit_fraction=0.0, stability_atol=1e-4):
    index, scores, stability, packed = expected
    np.testing.assert_array_equal(out[C.KEPT_INDEX.name], index)
    np.testing.assert_allclose(out[C.KEPT_IOU.name], scores, atol=1e-6)
    np.testing.assert_allclose(out[C.KEPT_STABILITY.name], stability, atol=stability_atol)
    assert out[C.KEPT_MASKS.name].shape == packed.shape and out[C.KEPT_MASKS.name].dtype == np.uint8
    differing = np.count_nonzero(np.unpackbits(out[C.KEPT_MASKS.name], axis=1) != np.unpackbits(packed, axis=1))
    assert differing <= max_bit_fraction * max(packed.size * 8, 1)


@pytest.mark.parametrize("crop", list(CROPS))
@pytest.mark.parametrize("work_bytes, threads", [(256 * 2**20, 1), (2**20, 1), (256 * 2**20, 2)])
def test_windowed_filter_equals_the_reference_port(decoded, crop, work_bytes, threads):
    """Windows off the masks' edges decided by their inputs' range, edge windows upscaled:
    the same masks, bit for bit, and stability scores as upscaling every pixel."""
    crop_size, input_size = CROPS[crop]
    out = kept_mask_outputs(
        *decoded, np.array(input_size), np.array(crop_size), THRESHOLDS, work_bytes=work_bytes, threads=threads
    )
    assert len(out[C.KEPT_INDEX.name]) > 5, "real masks pass the reference's thresholds"
    _assert_same(out, _reference(*decoded, input_size, crop_size, THRESHOLDS))


@pytest.mark.parametrize("thresholds", [[1.01, 0.95, 1.0], [0.5, 1.01, 1.0], [0.0, 0.0, 1.0]])
def test_thresholds_that_keep_nothing_or_everything(decoded, thresholds):
    thresholds = np.array(thresholds, np.float32)
    crop_size, input_size = CROPS["427 x 640"]
    expected = _reference(*decoded, input_size, crop_size, thresholds)
    _assert_same(kept_mask_outputs(*decoded, np.array(input_size), np.array(crop_size), thresholds), expected)


@given(height=st.integers(1, 40), width=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_rows_packed_alone_join_into_the_flat_bit_stream(height, width, seed):
    mask = np.random.default_rng(seed).random((height, width)) > 0.5
    np.testing.assert_array_equal(flat_bits(np.packbits(mask, axis=1), width), np.packbits(mask.reshape(-1)))


def test_filter_memory_does_not_grow_with_prompts_times_pixels(decoded):
    """16 prompts on a 4096 x 4096 crop: 48 masks whose float32 logits would take 3 GiB; the
    filter's peak is the kept bits (3 x 16 x 16.7 M / 8 = 96 MiB) plus cache-sized tiles."""
    low_res, iou = decoded[0][:16], decoded[1][:16]
    tracemalloc.start()
    try:
        out = kept_mask_outputs(
            low_res, iou, np.array([1024, 1024]), np.array([4096, 4096]), np.array([0.0, 0.0, 1.0], np.float32)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    kept_bits = out[C.KEPT_MASKS.name].nbytes
    assert kept_bits == 48 * 4096 * 4096 // 8
    assert peak < kept_bits + 96 * 2**20, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("crop", list(CROPS))
def test_gpu_filter_graph_matches_under_onnxruntime(decoded, crop):
    """The graph NAME_amg_filter serves beside a GPU decoder, run by ONNX Runtime on CPU."""
    import onnxruntime as ort

    from samtriton.server.amg_filter.graph import build_graph

    session = ort.InferenceSession(build_graph().SerializeToString(), providers=["CPUExecutionProvider"])
    crop_size, input_size = CROPS[crop]
    for thresholds in (THRESHOLDS, np.array([1.01, 0.95, 1.0], np.float32)):
        feeds = {
            C.LOW_RES_MASKS.name: decoded[0],
            C.IOU_PREDICTIONS.name: decoded[1],
            C.INPUT_SIZE.name: np.array(input_size, np.int64),
            C.CROP_SIZE.name: np.array(crop_size, np.int64),
            C.AMG_THRESHOLDS.name: thresholds,
        }
        names = [spec.name for spec in C.AMG_FILTER.outputs]
        out = dict(zip(names, session.run(names, feeds)))
        # Resize and the composed matrices round differently by ~1e-7: a pixel sitting on 0 or
        # on +-offset may flip (on 301 x 453 one mask's stability moved by 1.7e-4: a few of its
        # pixels); the masks may not differ otherwise.
        _assert_same(
            out, _reference(*decoded, input_size, crop_size, thresholds), max_bit_fraction=1e-5, stability_atol=1e-3
        )
