"""Image, coordinate and mask transforms, numpy + Pillow only.

Mirrors ``segment_anything.utils.transforms.ResizeLongestSide`` and
``Sam.postprocess_masks``: images are resized with PIL bilinear (what torchvision's resize
does for a PIL image), coordinates scaled into the long-side-1024 frame, and low-resolution
logits upscaled with bilinear interpolation (``align_corners=False``, no antialias) to 1024,
cropped to the unpadded region and resized to the original image size.
"""

from __future__ import annotations

import functools
import io
import os
from copy import deepcopy
from typing import Tuple, Union

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from . import contract as C
from .errors import InvalidInput

ImageLike = Union[np.ndarray, "Image.Image", str, os.PathLike]


class ResizeLongestSide:
    """Resizes images and coordinates so the longest side is ``target_length``."""

    def __init__(self, target_length: int = C.IMAGE_SIZE) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> Tuple[int, int]:
        """(height, width) of an ``oldh`` x ``oldw`` image resized to the long side ``long_side_length``."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        newh, neww = oldh * scale, oldw * scale
        return int(newh + 0.5), int(neww + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HWC uint8 -> HWC uint8 with the long side ``target_length`` (PIL bilinear)."""
        height, width = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        # Pillow sets its legacy filter names (BILINEAR, ...) by setattr, unseen by mypy; the typed
        # Image.Resampling needs Pillow 9.1, and the client supports Pillow>=9.
        return np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))  # type: ignore[attr-defined]

    def apply_coords(self, coords: np.ndarray, original_size: Tuple[int, ...]) -> np.ndarray:
        """[..., 2] (x, y) pixels of an image of ``original_size`` (h, w) -> in its resized frame."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(original_size[0], original_size[1], self.target_length)
        coords = deepcopy(coords).astype(float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: Tuple[int, ...]) -> np.ndarray:
        """[..., 4] XYXY boxes of an image of ``original_size`` (h, w) -> [N, 4] in its resized frame."""
        boxes = self.apply_coords(boxes.reshape(-1, 2, 2), original_size)
        return boxes.reshape(-1, 4)


def to_rgb_uint8(image: ImageLike, image_format: str = "RGB") -> np.ndarray:
    """Any supported image -> HWC uint8 RGB.

    Arguments:
      image: a path or PIL image (decoded and converted to RGB by Pillow; 16-bit files are
        scaled to 8 bits), or a numpy array that is HxW (grayscale, replicated to 3
        channels), HxWx1, HxWx3 or HxWx4 (alpha dropped), of dtype uint8, or uint16 (scaled
        by 255/65535, rounded), or bool.
      image_format: the channel order of a 3- or 4-channel array, "RGB" or "BGR".
    """
    if isinstance(image, (str, os.PathLike)):
        path = image
        try:
            with Image.open(path) as opened:
                image = _pil_to_array(opened)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InvalidInput(f"image: cannot read {os.fspath(path)!r} as an image ({exc})") from exc
    elif isinstance(image, Image.Image):
        image = _pil_to_array(image)
    elif not isinstance(image, np.ndarray):
        raise InvalidInput(f"image: expected an HWC numpy array, a PIL image or a path, got {type(image).__name__}")
    if image_format not in ("RGB", "BGR"):
        raise InvalidInput(f"image_format: expected 'RGB' or 'BGR', got {image_format!r}")

    array = image
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise InvalidInput(f"image: expected dtype uint8 (or uint16 / bool), got {array.dtype.name}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    elif not (array.ndim == 3 and array.shape[2] == 3):
        raise InvalidInput(f"image: expected shape HxW, HxWx1, HxWx3 or HxWx4, got {list(image.shape)}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InvalidInput(f"image: height and width must be at least 1, got {list(image.shape)}")
    if max(array.shape[:2]) > C.MAX_IMAGE_SIDE:
        raise InvalidInput(f"image: sides must be at most {C.MAX_IMAGE_SIDE} pixels, got {list(array.shape[:2])}")
    if image_format == "BGR":
        array = array[..., ::-1]
    return np.ascontiguousarray(array)


def max_decoded_pixels() -> int:
    """The most pixels an ``encoded_image`` may have: Pillow's decompression-bomb threshold
    (``Image.MAX_IMAGE_PIXELS``, ~89 M), where Pillow only warns up to twice that. The server
    decodes untrusted bytes, so above it the file is refused, not decoded."""
    limit = Image.MAX_IMAGE_PIXELS
    return C.MAX_IMAGE_SIDE**2 if limit is None else int(limit)


def _open_encoded(data: bytes) -> "Image.Image":
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise InvalidInput("encoded_image: expected the non-empty bytes of an image file (JPEG, PNG, ...)")
    if len(data) > C.MAX_ENCODED_IMAGE_BYTES:
        raise InvalidInput(f"encoded_image: {len(data)} bytes; the limit is {C.MAX_ENCODED_IMAGE_BYTES}")
    try:
        opened = Image.open(io.BytesIO(bytes(data)))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise InvalidInput(
            f"encoded_image: refused to decode ({exc}); expected at most {max_decoded_pixels()} "
            "pixels: resize the image first, or send it with set_image"
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"encoded_image: not a readable image file ({exc})") from None
    width, height = opened.size
    if max(opened.size) > C.MAX_IMAGE_SIDE:
        raise InvalidInput(f"encoded_image: sides must be at most {C.MAX_IMAGE_SIDE} pixels, got {[height, width]}")
    if width * height > max_decoded_pixels():
        raise InvalidInput(
            f"encoded_image: {height}x{width} is {width * height} pixels; expected at most "
            f"{max_decoded_pixels()} (Pillow's decompression-bomb limit): resize the image first, "
            "or send it with set_image"
        )
    return opened


def encoded_image_size(data: bytes) -> Tuple[int, int]:
    """(height, width) of an image file's bytes, from its header (nothing is decoded)."""
    width, height = _open_encoded(data).size
    return height, width


def decode_image(data: bytes) -> np.ndarray:
    """An image file's bytes -> HWC uint8 RGB, exactly as ``to_rgb_uint8`` reads a path."""
    opened = _open_encoded(data)
    try:
        return to_rgb_uint8(_pil_to_array(opened))
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: whatever a Pillow decoder raises (truncated
        # data raises OSError, but plugins also raise EOFError, SyntaxError, struct.error, zlib.error ...)
        raise InvalidInput(
            f"encoded_image: cannot decode ({type(exc).__name__}: {exc}); expected a complete image file"
        ) from None


def _pil_to_array(image: "Image.Image") -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image)
        if array.dtype != np.uint16:
            array = np.clip(array, 0, 65535).astype(np.uint16)
        return array
    return np.asarray(image.convert("RGB"))


def preprocess(image: np.ndarray, transform: ResizeLongestSide = ResizeLongestSide()):
    """HWC uint8 RGB -> (padded [1024, 1024, 3] uint8, (h, w) of the resized image)."""
    resized = transform.apply_image(image)
    height, width = resized.shape[:2]
    padded = np.zeros(C.IMAGE.dims, dtype=np.uint8)
    padded[:height, :width] = resized
    return padded, (height, width)


def _bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out, in] weights of 1-D bilinear resampling, align_corners=False, no antialias."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, high), frac)
    return weights


SMALL_POSTPROCESS_MASKS = 16


@functools.lru_cache(maxsize=64)
def _upscale_matrix(original: int, resized: int) -> np.ndarray:
    """256 -> 1024, crop to ``resized``, -> ``original``, composed into one [original, 256] map.
    Cached: an interactive session asks for the same sizes on every click."""
    to_padded = _bilinear_matrix(C.IMAGE_SIZE, C.LOW_RES_SIZE)[:resized]
    matrix = (_bilinear_matrix(original, resized) @ to_padded).astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def upscale_matrix(original: int, resized: int) -> np.ndarray:
    """The [original, 256] float32 matrix that upscales low-res logits along one axis as
    Sam.postprocess_masks does (256 -> 1024, crop to ``resized``, -> ``original``)."""
    return _upscale_matrix(original, resized)


def postprocess_masks(
    low_res_masks: np.ndarray, input_size: Tuple[int, int], original_size: Tuple[int, int]
) -> np.ndarray:
    """Low-res logits [..., 256, 256] -> logits [..., H, W] at the original image size."""
    rows = _upscale_matrix(original_size[0], input_size[0])
    cols = _upscale_matrix(original_size[1], input_size[1])
    # One BLAS thread for a click's few masks: these products take milliseconds, and idle
    # OpenBLAS threads keep spinning afterwards, taking the cores a co-located server needs
    # (docs/benchmarks.md, "Measurements behind choices in the code"). Batches use them all.
    small = int(np.prod(low_res_masks.shape[:-2])) <= SMALL_POSTPROCESS_MASKS
    with threadpool_limits(1 if small else None, user_api="blas"):
        return np.matmul(np.matmul(rows, low_res_masks.astype(np.float32, copy=False)), cols.T)
