"""Client preprocessing, coordinate transforms and mask postprocessing vs the reference."""

import numpy as np
import pytest
import torch

from samtriton import contract as C
from samtriton.transforms import ResizeLongestSide, postprocess_masks, preprocess, to_rgb_uint8

from helpers import as_reference_rgb


def test_preprocessed_tensor_is_bit_identical(reference_sam, reference_predictor, images):
    """The uint8 the client sends, normalized and padded as the encoder graph does, equals
    the reference's Sam.preprocess output bit for bit."""
    mean = np.array(C.PIXEL_MEAN, np.float32).reshape(3, 1, 1)
    std = np.array(C.PIXEL_STD, np.float32).reshape(3, 1, 1)
    for name, image in images.items():
        rgb = to_rgb_uint8(image)
        padded, (h, w) = preprocess(rgb)
        reference_resized = reference_predictor.transform.apply_image(as_reference_rgb(image))
        np.testing.assert_array_equal(padded[:h, :w], reference_resized, err_msg=name)
        assert not padded[h:].any() and not padded[:, w:].any()
        ours = (padded.transpose(2, 0, 1).astype(np.float32) - mean) / std
        ours[:, h:, :] = 0
        ours[:, :, w:] = 0
        ref = reference_sam.preprocess(torch.as_tensor(reference_resized).permute(2, 0, 1)[None])[0].numpy()
        np.testing.assert_array_equal(ours, ref, err_msg=name)


@pytest.mark.parametrize("size", [(512, 512), (300, 451), (1411, 1100), (7, 2000), (2000, 3), (1024, 1024)])
def test_coords_and_boxes_match_reference(reference_predictor, size):
    ours, ref = ResizeLongestSide(1024), reference_predictor.transform
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, max(size), (5, 3, 2))
    boxes = np.sort(rng.uniform(0, max(size), (6, 2, 2)), axis=1).reshape(-1, 4)
    assert ours.get_preprocess_shape(*size, 1024) == ref.get_preprocess_shape(*size, 1024)
    np.testing.assert_allclose(ours.apply_coords(coords, size), ref.apply_coords(coords, size), atol=1e-5)
    np.testing.assert_allclose(ours.apply_boxes(boxes, size), ref.apply_boxes(boxes, size), atol=1e-5)


@pytest.mark.parametrize("original_size", [(512, 512), (300, 451), (1411, 1100), (2000, 640)])
def test_postprocess_matches_sam_postprocess_masks(reference_sam, original_size):
    rng = np.random.default_rng(1)
    # Smooth logits like the decoder's: a low-frequency field upsampled.
    coarse = rng.normal(0, 4, (2, 3, 16, 16)).astype(np.float32)
    low_res = torch.nn.functional.interpolate(torch.from_numpy(coarse), (256, 256), mode="bilinear").numpy()
    input_size = ResizeLongestSide.get_preprocess_shape(*original_size, 1024)
    ours = postprocess_masks(low_res, input_size, original_size)
    ref = reference_sam.postprocess_masks(torch.from_numpy(low_res), input_size, original_size).numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-3
    assert ((ours > 0) == (ref > 0)).mean() > 0.9999


@pytest.mark.unit
def test_image_conversions():
    rgb = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgb[..., ::-1], "BGR"), rgb)
    rgba = np.dstack([rgb, np.full((20, 30), 7, np.uint8)])
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgb)
    gray = rgb[..., 0]
    np.testing.assert_array_equal(to_rgb_uint8(gray), np.repeat(gray[..., None], 3, axis=2))
    sixteen = rgb.astype(np.uint16) * 257  # exact 8 -> 16 bit scaling maps back exactly
    np.testing.assert_array_equal(to_rgb_uint8(sixteen), rgb)
    assert to_rgb_uint8(np.array([[0, 65535]], np.uint16))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


@pytest.mark.unit
def test_image_from_path_and_pil(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(3).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "x.png"), rgb)
    np.testing.assert_array_equal(to_rgb_uint8(Image.fromarray(rgb)), rgb)
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(to_rgb_uint8(tmp_path / "g16.png"), np.repeat(rgb[..., :1], 3, axis=2))


@pytest.mark.unit
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_invalid_input(tmp_path):
    """Pillow raises DecompressionBombError (not OSError) past 2x its pixel limit and only
    warns past 1x: a file read here and bytes decoded on the server both give InvalidInput."""
    from samtriton import InvalidInput
    from samtriton.transforms import decode_image, encoded_image_size, max_decoded_pixels

    from bad_files import png

    huge, large = png(20000, 20000, complete=False), png(10000, 10000, complete=True)
    assert 10000 * 10000 > max_decoded_pixels() and 20000 * 20000 > 2 * max_decoded_pixels()
    (tmp_path / "huge.png").write_bytes(huge)
    with pytest.raises(InvalidInput, match="image: cannot read"):
        to_rgb_uint8(tmp_path / "huge.png")
    for data in (huge, large):
        for read in (encoded_image_size, decode_image):
            with pytest.raises(InvalidInput, match="encoded_image: .*pixels"):
                read(data)
