"""Label Studio's ML backend API on the annotation app: ``GET /health``, ``POST /setup``,
``POST /predict``.

Label Studio sends the task and, for interactive pre-annotation, the user's prompts in
``params.context.result`` (keypoints and rectangles in percent of the original image); the
answer is one ``brushlabels`` region per prompt set, in Label Studio's own RLE. Clicks on
the same image reuse the embedding the Triton session model keeps.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Optional

import numpy as np

from samtriton import __version__

from .annotator import _Bounded

log = logging.getLogger("samtriton.tools.annotate")
MAX_IMAGE_BYTES = 64 << 20


# --- Label Studio's brush RLE ---------------------------------------------------------------
# The format of label_studio_sdk.converter.brush (and label-studio-converter): a bit stream of
# a 32-bit value count, the word size - 1 (5 bits), four run-length field sizes - 1 (4 bits
# each), then per run: 1 bit "repeat", 2 bits size index, the run length - 1, the 8-bit value;
# the values are the mask's RGBA bytes (4 per pixel, 0 or 255), zero-padded to whole bytes.
RLE_SIZES = (3, 4, 8, 16)


def _bits(value: int, width: int) -> str:
    return format(value, f"0{width}b")


def brush_rle(mask: np.ndarray) -> list:
    """Label Studio's RLE of an HxW bool mask (what ``brush.mask2rle(mask * 255)`` gives)."""
    flat = np.repeat(mask.astype(bool).ravel(), 4)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], changes))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    parts = [_bits(flat.size, 32), _bits(7, 5)] + [_bits(s - 1, 4) for s in RLE_SIZES]
    for start, length in zip(starts.tolist(), lengths.tolist()):
        value = _bits(255 if flat[start] else 0, 8)
        if length == 1:
            parts.append("0" + "00" + "000" + value)
            continue
        while length > 1 << 16:  # longest run a 16-bit length field holds
            parts.append("1" + "11" + _bits((1 << 16) - 1, 16) + value)
            length -= 1 << 16
        for index, size in enumerate(RLE_SIZES):
            if length <= 1 << size:
                parts.append("1" + _bits(index, 2) + _bits(length - 1, size) + value)
                break
    bits = "".join(parts)
    bits += "0" * (8 - len(bits) % 8)  # as Label Studio's encoder: always some padding
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def brush_decode(rle, height: int, width: int) -> np.ndarray:
    """The inverse of ``brush_rle`` (any word size / field sizes): HxW bool."""
    bits = "".join(format(b, "08b") for b in rle)
    pos = 0

    def read(n):
        nonlocal pos
        pos += n
        return int(bits[pos - n : pos], 2)

    num, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out.reshape(height, width, 4)[:, :, 3] > 0


# --- the labeling config ------------------------------------------------------------------
@dataclass
class Config:
    brush: str  # BrushLabels name (from_name of our results)
    image: str  # Image name (to_name)
    value: str  # the task data key of the image ("$image" -> "image")
    label: str  # the first brush label, used when the prompt carries none


def parse_config(label_config: str) -> Config:
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise ValueError(f"label_config: expected Label Studio's XML labeling config ({exc})") from None
    brush = next((el for el in root.iter() if el.tag == "BrushLabels"), None)
    if brush is None:
        raise ValueError("label_config: expected a <BrushLabels> tag (samtriton answers with brush masks)")
    to_name = brush.get("toName", "")
    image = next((el for el in root.iter() if el.tag == "Image" and el.get("name") == to_name), None)
    if image is None or not image.get("value", "").startswith("$"):
        raise ValueError(f'label_config: expected <Image name="{to_name}" value="$key"> for the BrushLabels')
    labels = [el.get("value") for el in brush if el.tag == "Label" and el.get("value")]
    return Config(brush.get("name"), to_name, image.get("value")[1:], labels[0] if labels else "Object")


# --- where task images come from ------------------------------------------------------------
class ImageSource:
    """Task image bytes: a served image when the URL names one (``.../images/NAME``), else a
    download from the Label Studio instance itself (``--label-studio-url``, its API token);
    other hosts are refused, so the backend fetches nothing a task merely points at."""

    def __init__(self, catalog, url: str = "", token: str = ""):
        self.catalog = catalog
        self.url = url.rstrip("/")
        self.token = token
        self._cache = _Bounded(8)

    def key_and_loader(self, image_url: str):
        if not isinstance(image_url, str) or not image_url:
            raise ValueError(f"task.data: expected the image URL, got {image_url!r:.80}")
        parsed = urllib.parse.urlsplit(image_url)
        path = urllib.parse.unquote(parsed.path)
        if path.startswith("/images/") and path[len("/images/") :] in self.catalog.paths:
            name = path[len("/images/") :]
            return f"file:{name}", self.catalog.path(name).read_bytes
        if not self.url:
            raise ValueError(
                f"task image {image_url!r}: not a served image, and no --label-studio-url to fetch it from"
            )
        full = urllib.parse.urljoin(self.url + "/", image_url)
        if urllib.parse.urlsplit(full)[:2] != urllib.parse.urlsplit(self.url)[:2]:
            raise ValueError(f"task image {image_url!r}: expected an image of {self.url} or a served image")
        return f"url:{full}", lambda: self._download(full)

    def _download(self, url: str) -> bytes:
        if url not in self._cache:
            request = urllib.request.Request(
                url, headers={"Authorization": f"Token {self.token}"} if self.token else {}
            )
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - same origin, checked above
                data = response.read(MAX_IMAGE_BYTES + 1)
            if len(data) > MAX_IMAGE_BYTES:
                raise ValueError(f"task image {url}: larger than {MAX_IMAGE_BYTES} bytes")
            self._cache.put(url, data)
        return self._cache[url]


# --- prompts ------------------------------------------------------------------------------
def _percent(value, field):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"{field}: expected a percentage 0..100, got {value!r}")
    return float(value)


def prompts_of(context: dict):
    """(points Nx2, labels N, box, label, (width, height)) of ``context.result`` (pixels)."""
    results = context.get("result") if isinstance(context, dict) else None
    if not isinstance(results, list) or not results:
        raise ValueError("params.context.result: expected a list of keypoint / rectangle results")
    points, labels, box, label, size = [], [], None, None, None
    for i, item in enumerate(results):
        field = f"context.result[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise ValueError(f"{field}: expected {{type, value, original_width, original_height}}")
        width, height = item.get("original_width"), item.get("original_height")
        if not all(isinstance(v, int) and v > 0 for v in (width, height)):
            raise ValueError(f"{field}.original_width/height: expected positive integers, got {width!r}, {height!r}")
        size = (width, height)
        value, kind = item["value"], item.get("type")
        if kind == "keypointlabels":
            x, y = _percent(value.get("x"), f"{field}.value.x"), _percent(value.get("y"), f"{field}.value.y")
            points.append([x * width / 100, y * height / 100])
            labels.append(0 if item.get("is_positive") is False else 1)
            label = label or (value.get("keypointlabels") or [None])[0]
        elif kind == "rectanglelabels":
            x, y = _percent(value.get("x"), f"{field}.value.x"), _percent(value.get("y"), f"{field}.value.y")
            w, h = (
                _percent(value.get("width"), f"{field}.value.width"),
                _percent(value.get("height"), f"{field}.value.height"),
            )
            box = np.array([x * width / 100, y * height / 100, (x + w) * width / 100, (y + h) * height / 100])
            label = label or (value.get("rectanglelabels") or [None])[0]
        else:
            raise ValueError(f"{field}.type: expected keypointlabels or rectanglelabels, got {kind!r}")
    coords = np.array(points) if points else None
    return coords, (np.array(labels) if points else None), box, label, size


def predict(body: dict, annotator, source: ImageSource) -> dict:
    started = time.perf_counter()
    config = parse_config(body.get("label_config", ""))
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ValueError("tasks: expected a list of Label Studio tasks")
    params = body.get("params") or {}
    context = params.get("context") if isinstance(params, dict) else None
    if not context:  # no prompt: nothing to segment (Label Studio asks this on task open)
        return {"results": [{"result": [], "model_version": f"samtriton-{__version__}"} for _ in tasks]}
    points, labels, box, label, (width, height) = prompts_of(context)
    data = tasks[0].get("data") if isinstance(tasks[0], dict) else None
    if not isinstance(data, dict) or config.value not in data:
        raise ValueError(f"tasks[0].data.{config.value}: expected the image URL")
    key, load = source.key_and_loader(data[config.value])
    result = annotator.predict(key, load, points, labels, box, multimask=False)
    mask = annotator.masks(result["id"])[0]
    if mask.shape != (height, width):
        raise ValueError(
            f"context.result: original size {width}x{height} is not the image's {mask.shape[1]}x{mask.shape[0]}"
        )
    region = {
        "from_name": config.brush,
        "to_name": config.image,
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "readonly": False,
        "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [label or config.label]},
    }
    log.info(
        "label-studio predict image=%s points=%d box=%s set_image_ms=%.1f predict_ms=%.1f total_ms=%.1f",
        key,
        0 if points is None else len(points),
        box is not None,
        result["set_image_ms"],
        result["predict_ms"],
        (time.perf_counter() - started) * 1000,
    )
    return {
        "results": [{"result": [region], "score": result["scores"][0], "model_version": f"samtriton-{__version__}"}]
    }


def routes(annotator, catalog, source: Optional[ImageSource], read_json):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    source = source or ImageSource(catalog)

    async def health(request):
        return JSONResponse({"status": "UP", "model_class": "samtriton"})

    async def setup(request):
        await read_json(request)
        return JSONResponse({"model_version": f"samtriton-{__version__}"})

    async def predict_route(request):
        body = await read_json(request)
        return JSONResponse(await run_in_threadpool(predict, body, annotator, source))

    async def webhook(request):
        return JSONResponse({"status": "ok"})

    return [
        ("/health", health, ["GET"]),
        ("/setup", setup, ["POST"]),
        ("/predict", predict_route, ["POST"]),
        ("/webhook", webhook, ["POST"]),
    ]
