"""Checks on the contract's decoder and encoder tensors, shared by client and server.

The client runs them on the tensors it is about to send (so a bad request never leaves the
process); the python-backend models run them on what they receive (so a raw tritonclient
request gets the same clear error). numpy only.
"""

from __future__ import annotations

import numpy as np

from . import contract as C
from .errors import InvalidInput


def check_array(name: str, value: np.ndarray, dtype, ndim: int) -> None:
    """``InvalidInput`` naming ``name`` unless ``value`` is a numpy array of ``dtype`` with ``ndim`` dimensions.

    Arguments:
      name: the tensor's name, for the error.
      value: the tensor.
      dtype: the dtype it must have.
      ndim: the number of dimensions it must have.
    """
    if not isinstance(value, np.ndarray):
        raise InvalidInput(f"{name}: expected a numpy array, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype):
        raise InvalidInput(f"{name}: expected dtype {np.dtype(dtype).name}, got {value.dtype.name}")
    if value.ndim != ndim:
        raise InvalidInput(f"{name}: expected {ndim} dimensions, got shape {list(value.shape)}")


def check_finite(name: str, value: np.ndarray) -> None:
    """``InvalidInput`` naming ``name`` when ``value`` holds a NaN or an infinity."""
    if not np.all(np.isfinite(value)):
        raise InvalidInput(f"{name}: contains NaN or infinite values; expected finite numbers")


def check_decoder_inputs(image_embeddings, point_coords, point_labels, mask_input, has_mask_input) -> int:
    """Validate one decoder request; returns the prompt count K."""
    k = check_point_prompts(image_embeddings, point_coords, point_labels)
    check_mask_prompts(mask_input, has_mask_input, k)
    return k


def check_mask_prompts(mask_input, has_mask_input, k: int) -> None:
    """Validate the mask inputs of K prompts."""
    check_array(C.MASK_INPUT.name, mask_input, np.float32, 4)
    if mask_input.shape != (k, 1, C.LOW_RES_SIZE, C.LOW_RES_SIZE):
        raise InvalidInput(
            f"mask_input: expected shape [{k}, 1, {C.LOW_RES_SIZE}, {C.LOW_RES_SIZE}], got {list(mask_input.shape)}"
        )
    check_finite("mask_input", mask_input)
    check_array(C.HAS_MASK_INPUT.name, has_mask_input, np.float32, 1)
    if has_mask_input.shape != (k,):
        raise InvalidInput(f"has_mask_input: expected shape [{k}], got {list(has_mask_input.shape)}")
    if not np.all(np.isin(has_mask_input, (0.0, 1.0))):
        raise InvalidInput("has_mask_input: values must be 0 or 1")


def check_point_prompts(image_embeddings, point_coords, point_labels) -> int:
    """Validate one embedding + K point prompts; returns K."""
    check_array(C.DECODER_IMAGE_EMBEDDINGS.name, image_embeddings, np.float32, 4)
    if tuple(image_embeddings.shape) != C.DECODER_IMAGE_EMBEDDINGS.dims:
        raise InvalidInput(
            f"image_embeddings: expected shape {list(C.DECODER_IMAGE_EMBEDDINGS.dims)} "
            f"(one image), got {list(image_embeddings.shape)}"
        )
    # A NaN or inf in the embedding would come back as NaN logits, not as an error.
    check_finite(C.DECODER_IMAGE_EMBEDDINGS.name, image_embeddings)
    return check_points(point_coords, point_labels)


def check_points(point_coords, point_labels) -> int:
    """Validate K point prompts (coordinates and labels, without an embedding); returns K."""
    check_array(C.POINT_COORDS.name, point_coords, np.float32, 3)
    k, n, xy = point_coords.shape
    if xy != 2 or k < 1 or n < 1:
        raise InvalidInput(f"point_coords: expected shape [K, N, 2] with K, N >= 1, got {list(point_coords.shape)}")
    if k > C.MAX_PROMPTS_PER_REQUEST:
        raise InvalidInput(f"point_coords: {k} prompts in one request; the limit is {C.MAX_PROMPTS_PER_REQUEST}")
    if n > C.MAX_POINTS_PER_PROMPT:
        raise InvalidInput(f"point_coords: {n} points per prompt; the limit is {C.MAX_POINTS_PER_PROMPT}")
    check_finite("point_coords", point_coords)
    check_array(C.POINT_LABELS.name, point_labels, np.float32, 2)
    if point_labels.shape != (k, n):
        raise InvalidInput(
            f"point_labels: expected shape [{k}, {n}] to match point_coords, got {list(point_labels.shape)}"
        )
    if not np.all(np.isin(point_labels, C.VALID_LABELS)):
        bad = np.unique(point_labels[~np.isin(point_labels, C.VALID_LABELS)])[:5]
        raise InvalidInput(f"point_labels: values must be in {list(C.VALID_LABELS)}, got {bad.tolist()}")
    return k


def check_encoder_inputs(image: np.ndarray, input_size: np.ndarray) -> None:
    """Validate a batch of encoder inputs ([B, 1024, 1024, 3] uint8, [B, 2] int64)."""
    check_array(C.IMAGE.name, image, np.uint8, 4)
    if image.shape[1:] != C.IMAGE.dims:
        raise InvalidInput(
            f"image: expected shape [B, {', '.join(map(str, C.IMAGE.dims))}] (NHWC, RGB), got {list(image.shape)}"
        )
    check_array(C.INPUT_SIZE.name, input_size, np.int64, 2)
    if input_size.shape != (image.shape[0], 2):
        raise InvalidInput(f"input_size: expected shape [{image.shape[0]}, 2], got {list(input_size.shape)}")
    if np.any(input_size < 1) or np.any(input_size > C.IMAGE_SIZE) or np.all(input_size < C.IMAGE_SIZE, axis=1).any():
        raise InvalidInput(
            f"input_size: each (height, width) must lie in 1..{C.IMAGE_SIZE} with the long side "
            f"equal to {C.IMAGE_SIZE}, got {input_size.tolist()}"
        )


def check_amg_inputs(input_size, crop_size, thresholds, prompts=None):
    """Validate the inputs of one automatic-mask-generation request (besides its prompts).

    Arguments:
      input_size: [2] int64 (height, width) of the resized crop, the long side 1024.
      crop_size: [2] int64 (height, width) of the crop.
      thresholds: [3] float32 ``contract.AMG_THRESHOLDS``.
      prompts: the request's prompt count, or None: then the work cap is not checked.
    """
    check_array(C.INPUT_SIZE.name, input_size, np.int64, 1)
    check_array(C.CROP_SIZE.name, crop_size, np.int64, 1)
    check_array(C.AMG_THRESHOLDS.name, thresholds, np.float32, 1)
    if input_size.shape != (2,) or not (1 <= input_size.min() and input_size.max() == C.IMAGE_SIZE):
        raise InvalidInput(
            f"input_size: expected (height, width) with the long side {C.IMAGE_SIZE}, got {input_size.tolist()}"
        )
    if crop_size.shape != (2,) or crop_size.min() < 1 or crop_size.max() > C.MAX_IMAGE_SIDE:
        raise InvalidInput(f"crop_size: expected (height, width) in 1..{C.MAX_IMAGE_SIDE}, got {crop_size.tolist()}")
    if thresholds.shape != (3,) or not np.all(np.isfinite(thresholds)):
        raise InvalidInput(f"amg_thresholds: expected 3 finite numbers, got {thresholds.tolist()}")
    if prompts is not None:
        check_amg_work(int(prompts), crop_size)


def check_amg_work(prompts: int, crop_size: np.ndarray) -> None:
    """Prompts x crop pixels of one automatic-mask-generation request within the contract's cap."""
    work = int(prompts) * int(crop_size[0]) * int(crop_size[1])
    if work > C.MAX_AMG_PROMPT_PIXELS:
        raise InvalidInput(
            f"point_coords / crop_size: {prompts} prompts x {int(crop_size[0])}x{int(crop_size[1])} "
            f"crop pixels = {work}; at most {C.MAX_AMG_PROMPT_PIXELS} per request (send at most "
            f"{max(1, C.MAX_AMG_PROMPT_PIXELS // (int(crop_size[0]) * int(crop_size[1])))} prompts "
            "for this crop)"
        )
