"""Overlay masks, points and boxes on an image and save a PNG (Pillow only)."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw


def palette(count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct, saturated RGB colours."""
    hues = (np.arange(count) * 0.618033988749895 + seed * 0.1) % 1.0
    return (
        np.stack([_hsv_to_rgb(h, 0.75, 0.95) for h in hues]).astype(np.uint8) if count else np.zeros((0, 3), np.uint8)
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255


def overlay(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    alpha: float = 0.5,
    points: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
    boxes: Optional[Iterable[Sequence[float]]] = None,
) -> Image.Image:
    """Blend each HxW boolean mask in its own colour over the HxWx3 uint8 image."""
    canvas = image.astype(np.float32).copy()
    for mask, colour in zip(masks, palette(len(masks))):
        canvas[mask] = canvas[mask] * (1 - alpha) + colour * alpha
    result = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(result)
    radius = max(3, min(image.shape[:2]) // 100)
    if points is not None:
        for (x, y), label in zip(np.asarray(points), np.asarray(labels if labels is not None else [1] * len(points))):
            fill = (40, 220, 40) if label == 1 else (230, 40, 40)
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    for box in boxes or ():
        draw.rectangle([float(v) for v in box], outline=(255, 255, 0), width=max(2, radius // 2))
    return result


def cutout(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """RGBA image that is transparent outside ``mask``."""
    rgba = np.dstack([image, (mask.astype(np.uint8) * 255)])
    return Image.fromarray(rgba, mode="RGBA")
