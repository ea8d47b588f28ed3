"""One prompt path for every client: ``predict``'s arguments checked (each error names the
field and its expected form), turned into the decoder's request tensors (SAM's ONNX prompt
form, in the 1024 frame), and the decoder's low-resolution logits turned into masks at the
image's size. ``SamPredictor``, ``AsyncSamPredictor`` and ``SamAutomaticMaskGenerator`` all go
through here, so sync and asyncio answer alike. numpy only.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

from . import contract as C
from .calls import ImageSource
from .errors import InvalidInput
from .transforms import ImageLike, ResizeLongestSide, postprocess_masks, preprocess, to_rgb_uint8

Prompt = Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]


def image_source(image: ImageLike, image_format: str, transform: ResizeLongestSide) -> ImageSource:
    """An image as the server's session stage takes it: its ``padded_image`` (the 1024
    square), ``input_size`` (its resized size inside it) and ``original_size`` (h, w).

    Arguments:
      image: an HWC array in ``image_format``, a PIL image or a path (``to_rgb_uint8``).
      image_format: "RGB" or "BGR".
      transform: the resize to the encoder's side (``ResizeLongestSide(contract.IMAGE_SIZE)``).
    """
    rgb = to_rgb_uint8(image, image_format)
    padded, input_size = preprocess(rgb, transform)
    height, width = rgb.shape[:2]
    return ImageSource(padded_image=padded, input_size=input_size, original_size=(height, width))


def masks_from_logits(
    low_res: np.ndarray, iou: np.ndarray, selected: Optional[slice], return_logits: bool, input_size, original_size
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masks, scores, low-res logits) as ``SamPredictor.predict`` returns them.

    Arguments:
      low_res: the decoder's [K, C, 256, 256] logits.
      iou: its [K, C] IoU predictions.
      selected: the mask slice to keep (``contract.SINGLE_MASK_SLICE`` / ``MULTIMASK_SLICE``),
        or None when the server already chose.
      return_logits: float logits at the image size instead of booleans.
      input_size: (h, w) of the resized image inside the 1024 square.
      original_size: (h, w) of the image.
    """
    if selected is not None:
        low_res, iou = low_res[:, selected], iou[:, selected]
    low_res, scores = np.ascontiguousarray(low_res, dtype=np.float32), np.ascontiguousarray(iou)
    masks = postprocess_masks(low_res, input_size, original_size)
    if not return_logits:
        masks = masks > 0.0
    return masks, scores, low_res


def prompt_tensors(
    transform: ResizeLongestSide, points, labels, boxes, masks, original_size, fill_absent_mask: bool = True
) -> Dict[str, np.ndarray]:
    """Original-pixel prompts -> the decoder's tensors (SAM's ONNX prompt form).

    Arguments:
      transform: the resize to the encoder's side.
      points, labels, boxes, masks: K prompts as ``single_prompt`` / ``batch_prompt`` return
        them (any may be None, but points and boxes not both).
      original_size: (h, w) of the image.
      fill_absent_mask: without a mask prompt, add the zero mask and has_mask 0 the decoder
        takes; False leaves both out (the session model fills them in: 256 KiB per prompt
        not sent).
    """
    if points is None and boxes is None:
        raise InvalidInput("point_coords / box: give at least one point or a box")
    coords, label_parts = [], []
    count = len(points) if points is not None else len(boxes)
    if points is not None:
        coords.append(transform.apply_coords(points, original_size))
        label_parts.append(labels.astype(np.float64))
    if boxes is not None:
        coords.append(transform.apply_boxes(boxes, original_size).reshape(-1, 2, 2))
        label_parts.append(np.tile([[C.LABEL_BOX_TOP_LEFT, C.LABEL_BOX_BOTTOM_RIGHT]], (count, 1)))
    else:
        # Without a box SAM appends one padding point (label -1).
        coords.append(np.zeros((count, 1, 2)))
        label_parts.append(np.full((count, 1), C.LABEL_PAD))
    tensors = {
        C.POINT_COORDS.name: np.concatenate(coords, axis=1).astype(np.float32),
        C.POINT_LABELS.name: np.concatenate(label_parts, axis=1).astype(np.float32),
    }
    if masks is not None:
        tensors[C.MASK_INPUT.name], tensors[C.HAS_MASK_INPUT.name] = (
            masks.astype(np.float32),
            np.ones(count, np.float32),
        )
    elif fill_absent_mask:
        tensors[C.MASK_INPUT.name] = np.zeros((count, 1, C.LOW_RES_SIZE, C.LOW_RES_SIZE), np.float32)
        tensors[C.HAS_MASK_INPUT.name] = np.zeros(count, np.float32)
    return tensors


def read_image_file(path) -> bytes:
    """The bytes of the image file at ``path``; ``InvalidInput`` when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidInput(f"image_file: cannot read {os.fspath(path)!r} ({exc})") from None


# --- input checks: each names the field and its expected form ----------------------------


def single_prompt(point_coords, point_labels, box, mask_input) -> Prompt:
    """``predict``'s arguments checked and given a leading prompt axis of 1."""
    points = labels = boxes = masks = None
    if point_coords is not None or point_labels is not None:
        points = _as_points(point_coords, "point_coords", batched=False)[None]
        labels = _as_labels(point_labels, points.shape[1], "point_labels", batched=False)[None]
    if box is not None:
        boxes = _as_boxes(box, "box", batched=False)[None]
    if mask_input is not None:
        masks = _as_mask_input(mask_input, 1, "mask_input", batched=False)[None]
    return points, labels, boxes, masks


def batch_prompt(point_coords, point_labels, boxes, mask_input) -> Prompt:
    """``predict_batch``'s arguments checked: K prompts (points KxNx2 + labels KxN, boxes Kx4,
    masks Kx1x256x256), any of them None."""
    points = labels = box_array = masks = None
    if point_coords is not None or point_labels is not None:
        points = _as_points(point_coords, "point_coords", batched=True)
        labels = _as_labels(point_labels, points.shape[1], "point_labels", batched=True, count=len(points))
    if boxes is not None:
        box_array = _as_boxes(boxes, "boxes", batched=True)
    count = len(points) if points is not None else (len(box_array) if box_array is not None else 0)
    if points is not None and box_array is not None and len(box_array) != count:
        raise InvalidInput(f"boxes: expected {count} boxes to match point_coords, got {len(box_array)}")
    if mask_input is not None:
        masks = _as_mask_input(mask_input, count, "mask_input", batched=True)
    return points, labels, box_array, masks


def _numeric(value, field: str, expected: str) -> np.ndarray:
    if value is None:
        raise InvalidInput(f"{field}: required, expected {expected}")
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise InvalidInput(f"{field}: expected {expected} ({exc})") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InvalidInput(f"{field}: expected {expected} of numbers, got dtype {array.dtype}")
    if array.dtype == np.bool_ or np.iscomplexobj(array):
        raise InvalidInput(f"{field}: expected {expected} of real numbers, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise InvalidInput(f"{field}: contains NaN or infinite values; expected finite {expected}")
    return array


def _as_points(value, field: str, batched: bool) -> np.ndarray:
    expected = "an array of shape KxNx2 (x, y)" if batched else "an array of shape Nx2 (x, y)"
    array = _numeric(value, field, expected)
    ndim = 3 if batched else 2
    if array.ndim != ndim or array.shape[-1] != 2 or array.shape[-2] < 1 or (batched and array.shape[0] < 1):
        raise InvalidInput(f"{field}: expected {expected}, got shape {list(array.shape)}")
    if array.shape[-2] > C.MAX_POINTS_PER_PROMPT - 2:
        raise InvalidInput(f"{field}: at most {C.MAX_POINTS_PER_PROMPT - 2} points per prompt, got {array.shape[-2]}")
    return array.astype(np.float64)


def _as_labels(value, n_points: int, field: str, batched: bool, count: int = 1) -> np.ndarray:
    expected = f"an array of shape {count}x{n_points}" if batched else f"an array of {n_points} labels"
    if value is None:
        raise InvalidInput(
            f"{field}: point_labels must be supplied with point_coords ({expected}, 1 = foreground, 0 = background)"
        )
    array = _numeric(value, field, expected)
    shape = (count, n_points) if batched else (n_points,)
    if array.shape != shape:
        raise InvalidInput(f"{field}: expected {expected}, got shape {list(array.shape)}")
    if not np.all(np.isin(array, (C.LABEL_BACKGROUND, C.LABEL_FOREGROUND))):
        raise InvalidInput(f"{field}: labels must be 1 (foreground) or 0 (background), got {np.unique(array).tolist()}")
    return array


def _as_boxes(value, field: str, batched: bool) -> np.ndarray:
    expected = "an array of shape Kx4 (x0, y0, x1, y1)" if batched else "4 numbers (x0, y0, x1, y1)"
    array = _numeric(value, field, expected)
    if batched:
        ok = array.ndim == 2 and array.shape[1] == 4 and array.shape[0] >= 1
    else:
        ok = array.shape in ((4,), (1, 4))
        array = array.reshape(-1)[:4] if ok else array
    if not ok:
        raise InvalidInput(f"{field}: expected {expected}, got shape {list(array.shape)}")
    array = array.reshape(-1, 4).astype(np.float64)
    bad = (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
    if bad.any():
        raise InvalidInput(f"{field}: expected x1 >= x0 and y1 >= y0, got {array[bad][0].tolist()}")
    return array if batched else array[0]


def _as_mask_input(value, count: int, field: str, batched: bool) -> np.ndarray:
    size = C.LOW_RES_SIZE
    expected = f"an array of shape {count}x1x{size}x{size}" if batched else f"an array of shape 1x{size}x{size}"
    array = _numeric(value, field, expected)
    shape = (count, 1, size, size) if batched else (1, size, size)
    if array.shape != shape:
        raise InvalidInput(
            f"{field}: expected {expected} (low-res logits from a previous call), got shape {list(array.shape)}"
        )
    return array.astype(np.float32)
