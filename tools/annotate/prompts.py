"""Validation of the page's JSON requests: every error names the field and the expected form."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field}: expected a finite number, got {value!r}")
    return float(value)


def _inside(value: float, limit: int, field: str) -> float:
    if not 0 <= value <= limit:
        raise ValueError(
            f"{field}: expected 0 <= {field.rsplit('.', 1)[-1]} <= {limit} (inside the image), got {value}"
        )
    return value


def require_object(body, field: str = "body") -> dict:
    if not isinstance(body, dict):
        raise ValueError(f"{field}: expected a JSON object, got {type(body).__name__}")
    return body


def parse_points(value, size: Tuple[int, int]) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """``[{"x": .., "y": .., "label": 1|0}, ...]`` in original-image pixels -> (coords Nx2, labels N)."""
    height, width = size
    if value is None or value == []:
        return None, None
    if not isinstance(value, list) or len(value) > 64:
        raise ValueError(f"points: expected a list of at most 64 {{x, y, label}} objects, got {value!r:.80}")
    coords, labels = [], []
    for i, point in enumerate(value):
        require_object(point, f"points[{i}]")
        x = _inside(_number(point.get("x"), f"points[{i}].x"), width, f"points[{i}].x")
        y = _inside(_number(point.get("y"), f"points[{i}].y"), height, f"points[{i}].y")
        label = point.get("label")
        if label not in (0, 1) or isinstance(label, bool):
            raise ValueError(f"points[{i}].label: expected 1 (foreground) or 0 (background), got {label!r}")
        coords.append([x, y])
        labels.append(label)
    return np.array(coords, dtype=np.float64), np.array(labels, dtype=np.int64)


def parse_box(value, size: Tuple[int, int]) -> Optional[np.ndarray]:
    """``[x0, y0, x1, y1]`` in original-image pixels, x0 < x1, y0 < y1."""
    height, width = size
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 4:
        raise ValueError(f"box: expected [x0, y0, x1, y1] or null, got {value!r:.80}")
    x0, y0, x1, y1 = (_number(v, f"box[{i}]") for i, v in enumerate(value))
    for v, limit, name in (
        (x0, width, "box.x0"),
        (x1, width, "box.x1"),
        (y0, height, "box.y0"),
        (y1, height, "box.y1"),
    ):
        _inside(v, limit, name)
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"box: expected x0 < x1 and y0 < y1, got {value}")
    return np.array([x0, y0, x1, y1], dtype=np.float64)


def parse_choice(value, field: str) -> Optional[Tuple[str, int]]:
    """``{"id": "...", "index": k}``: one mask of an earlier prediction or automatic run."""
    if value is None:
        return None
    require_object(value, field)
    ident, index = value.get("id"), value.get("index")
    if not isinstance(ident, str) or isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f'{field}: expected {{"id": string, "index": integer >= 0}}, got {value!r:.80}')
    return ident, index
