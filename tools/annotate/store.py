"""Accepted objects on disk, under ``--out`` only, written as they are accepted.

Layout (``stem`` is the image's file name without suffix; ``N`` the object's number):

    annotations/<image name>.json   the image's objects (label, bbox, area, score, COCO RLE)
    masks/<stem>_<N>.png            the mask, 0/255
    cutouts/<stem>_<N>.png          the object cut out of the image, RGBA
    coco.json                       written by ``export``: every image's objects, COCO format

Each file is written to a temporary name and renamed, so a crash leaves the previous state.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

from samtriton.tools.visualize import cutout

MAX_LABEL = 200


def coco_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE (what pycocotools' ``decode`` reads) of an HxW bool mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def bbox_xywh(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def check_label(label) -> str:
    if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL:
        raise ValueError(f"label: expected a non-empty string of at most {MAX_LABEL} characters, got {label!r}")
    return label.strip()


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


class Store:
    def __init__(self, out: Path):
        self.out = Path(out).resolve()
        for sub in ("annotations", "masks", "cutouts"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _record_path(self, name: str) -> Path:
        return self.out / "annotations" / f"{name}.json"

    def objects(self, name: str) -> List[dict]:
        path = self._record_path(name)
        if not path.exists():
            return []
        return json.loads(path.read_text())["objects"]

    def mask(self, name: str, obj: dict) -> np.ndarray:
        return np.asarray(Image.open(self.out / obj["mask"])) > 0

    def add(self, name: str, size, label: str, mask: np.ndarray, rgb: np.ndarray, score: float, source: dict) -> dict:
        label = check_label(label)
        stem = Path(name).stem
        with self._lock:
            objects = self.objects(name)
            number = max((o["id"] for o in objects), default=0) + 1
            mask_file = f"masks/{stem}_{number}.png"
            cutout_file = f"cutouts/{stem}_{number}.png"
            _write_atomic(
                self.out / mask_file, lambda p: Image.fromarray(mask.astype(np.uint8) * 255).save(p, format="PNG")
            )
            _write_atomic(self.out / cutout_file, lambda p: cutout(rgb, mask).save(p, format="PNG"))
            obj = {
                "id": number,
                "label": label,
                "bbox": bbox_xywh(mask),
                "area": int(mask.sum()),
                "score": float(score),
                "source": source,
                "mask": mask_file,
                "cutout": cutout_file,
                "segmentation": coco_rle(mask),
            }
            objects.append(obj)
            self._save(name, size, objects)
        return obj

    def delete(self, name: str, number: int, size) -> bool:
        with self._lock:
            objects = self.objects(name)
            kept = [o for o in objects if o["id"] != number]
            if len(kept) == len(objects):
                return False
            self._save(name, size, kept)
            for o in objects:
                if o["id"] == number:
                    for key in ("mask", "cutout"):
                        (self.out / o[key]).unlink(missing_ok=True)
        return True

    def _save(self, name: str, size, objects: List[dict]) -> None:
        record = {"image": name, "height": size[0], "width": size[1], "objects": objects}
        _write_atomic(self._record_path(name), lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))

    def export_coco(self, catalog) -> Path:
        """Every served image's accepted objects as one COCO document, ``coco.json``."""
        images, annotations, categories = [], [], {}
        for image_id, name in enumerate(catalog.names, 1):
            height, width = catalog.size(name)
            images.append({"id": image_id, "file_name": name, "height": height, "width": width})
            for obj in self.objects(name):
                category = categories.setdefault(obj["label"], len(categories) + 1)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "segmentation": obj["segmentation"],
                        "area": obj["area"],
                        "bbox": obj["bbox"],
                        "iscrowd": 0,
                        "score": obj["score"],
                        "mask_file": obj["mask"],
                        "cutout_file": obj["cutout"],
                    }
                )
        document = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in categories.items()],
        }
        path = self.out / "coco.json"
        with self._lock:
            _write_atomic(path, lambda p: p.write_text(json.dumps(document) + "\n"))
        return path


def summary(objects: List[dict]) -> List[Dict]:
    """What the page needs of each object (no RLE string)."""
    return [{k: o[k] for k in ("id", "label", "bbox", "area", "score", "mask", "cutout")} for o in objects]
