"""The app's SAM state: one session-mode ``SamPredictor``, the image it holds, and the
recent predictions (their masks and low-resolution logits stay here: the page refers to
them by id, so refinement and acceptance send no mask data)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from typing import Callable, Optional

import numpy as np

from samtriton.transforms import to_rgb_uint8

log = logging.getLogger("samtriton.tools.annotate")
KEEP_PREDICTIONS = 64


class UnknownPrediction(LookupError):
    pass


def runs(mask: np.ndarray) -> list:
    """Row-major run lengths of a bool mask, starting with a run of 0s (the page paints them)."""
    flat = mask.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], changes, [flat.size])))
    return ([0] if flat.size and flat[0] else []) + counts.tolist()


class _Bounded(OrderedDict):
    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class Annotator:
    def __init__(self, predictor, amg_options: Optional[dict] = None):
        self.predictor = predictor
        self.amg_options = amg_options or {}
        self._lock = threading.Lock()  # one image on the predictor at a time
        self._current = None
        self.predictions = _Bounded(KEEP_PREDICTIONS)
        self._rgb = _Bounded(4)

    def _use(self, key: str, load: Callable[[], bytes]) -> float:
        """Put image ``key`` on the predictor (the server keeps its embedding); seconds spent."""
        if self._current == key:
            return 0.0
        start = time.perf_counter()
        self._current = None
        self.predictor.set_image_file(load())
        self._current = key
        return time.perf_counter() - start

    def prepare(self, key: str, load: Callable[[], bytes]) -> float:
        with self._lock:
            return self._use(key, load)

    def rgb(self, key: str, path) -> np.ndarray:
        if key not in self._rgb:
            self._rgb.put(key, to_rgb_uint8(str(path)))
        return self._rgb[key]

    def predict(
        self, key: str, load: Callable[[], bytes], points, labels, box, refine=None, multimask: Optional[bool] = None
    ) -> dict:
        """SAM on one prompt set. ``refine``: (prediction id, candidate) whose low-resolution
        logits go in as ``mask_input``, as segment-anything's iterative refinement does."""
        mask_input = None
        if refine is not None:
            earlier = self.get(*refine)
            if earlier["image"] != key:
                raise ValueError(f"refine: prediction {refine[0]!r} is of another image")
            if earlier["logits"] is None:
                raise ValueError(f"refine: prediction {refine[0]!r} is an automatic mask, which has no logits")
            mask_input = earlier["logits"][refine[1]][None]
        if multimask is None:  # SAM's advice: three candidates for one ambiguous click only
            multimask = points is not None and len(points) == 1 and box is None and mask_input is None
        with self._lock:
            set_s = self._use(key, load)
            start = time.perf_counter()
            masks, scores, logits = self.predictor.predict(
                point_coords=points, point_labels=labels, box=box, mask_input=mask_input, multimask_output=multimask
            )
            predict_s = time.perf_counter() - start
        ident = uuid.uuid4().hex[:12]
        self.predictions.put(
            ident, {"image": key, "masks": masks, "scores": scores, "logits": logits.astype(np.float32)}
        )
        return {
            "id": ident,
            "scores": [float(s) for s in scores],
            "best": int(np.argmax(scores)),
            "set_image_ms": round(set_s * 1000, 2),
            "predict_ms": round(predict_s * 1000, 2),
        }

    def get(self, ident: str, index: int) -> dict:
        found = self.predictions.get(ident)
        if found is None:
            raise UnknownPrediction(f"id: no recent prediction {ident!r} (the app keeps the last {KEEP_PREDICTIONS})")
        if not 0 <= index < len(found["masks"]):
            raise ValueError(f"index: expected 0..{len(found['masks']) - 1} for prediction {ident!r}, got {index}")
        return {
            "image": found["image"],
            "mask": found["masks"][index],
            "score": float(found["scores"][index]),
            "logits": found["logits"],
        }

    def masks(self, ident: str) -> np.ndarray:
        found = self.predictions.get(ident)
        if found is None:
            raise UnknownPrediction(f"id: no recent prediction {ident!r} (the app keeps the last {KEEP_PREDICTIONS})")
        return found["masks"]

    def automatic(self, key: str, load: Callable[[], bytes], image: np.ndarray) -> dict:
        """Automatic mask generation on the image; its masks are kept like a prediction's."""
        from samtriton.automatic_mask_generator import SamAutomaticMaskGenerator

        with self._lock:
            self._use(key, load)
            start = time.perf_counter()
            try:
                records = SamAutomaticMaskGenerator(self.predictor, **self.amg_options).generate(image)
            finally:  # the generator sets its own images (crops) on the predictor, even when it fails
                self._current = None
            elapsed = time.perf_counter() - start
        records.sort(key=lambda r: -r["area"])
        masks = np.array([r["segmentation"] for r in records], dtype=bool).reshape(-1, *image.shape[:2])
        ident = uuid.uuid4().hex[:12]
        scores = np.array([r["predicted_iou"] for r in records], dtype=np.float32)
        self.predictions.put(ident, {"image": key, "masks": masks, "scores": scores, "logits": None})
        log.info("automatic masks image=%s masks=%d seconds=%.2f", key, len(records), elapsed)
        return {"id": ident, "scores": [float(s) for s in scores], "seconds": round(elapsed, 2)}
