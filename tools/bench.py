"""Throughput of a running samtriton deployment: encoder images/s at several batch sizes,
decoder prompts/s, end-to-end (set_image + predict) over gRPC. numpy only.

``samtriton bench server --url HOST:PORT`` prints a table; it is meant for GPU deployments
(the NVIDIA container) but runs against any samtriton server, the embedded one included.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Sequence

import numpy as np

from samtriton import contract as C
from samtriton.predictor import SamPredictor, TritonSam


def prompt_cases(shape: Sequence[int]) -> Dict[str, dict]:
    """The prompt kinds ``SamPredictor.predict`` takes (a point, points with a background one,
    a box, a box and a point), placed relative to an image of ``shape`` (H, W, ...): the same
    prompts for every image size, as ``predict`` keyword arguments by case name."""
    h, w = shape[:2]
    return {
        "point": dict(point_coords=np.array([[0.5 * w, 0.45 * h]]), point_labels=np.array([1])),
        "points_with_background": dict(
            point_coords=np.array([[0.45 * w, 0.4 * h], [0.55 * w, 0.55 * h], [0.1 * w, 0.1 * h]]),
            point_labels=np.array([1, 1, 0]),
        ),
        "box": dict(box=np.array([0.25 * w, 0.2 * h, 0.75 * w, 0.8 * h])),
        "box_and_point": dict(
            box=np.array([0.2 * w, 0.15 * h, 0.8 * w, 0.85 * h]),
            point_coords=np.array([[0.5 * w, 0.5 * h]]),
            point_labels=np.array([1]),
        ),
    }


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def _max_batch(backend: TritonSam) -> int:
    config = backend.admin().get_model_config(C.ENCODER.served_name(backend.model), as_json=True)
    return max(1, int(config["config"].get("max_batch_size", 1)))


def encoder_throughput(backend: TritonSam, batch: int, repeats: int) -> float:
    """Images/s when ``batch`` images are in flight: requests of up to the model's
    max_batch_size, sent concurrently so Triton's dynamic batcher can merge them."""
    per_request = min(batch, _max_batch(backend))
    requests = -(-batch // per_request)
    image = np.random.default_rng(0).integers(0, 256, (per_request,) + C.IMAGE.dims, dtype=np.uint8)
    sizes = np.full((per_request, 2), C.IMAGE_SIZE, dtype=np.int64)
    with ThreadPoolExecutor(requests) as pool:
        list(pool.map(lambda _: backend.encode(image, sizes), range(requests)))  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            list(pool.map(lambda _: backend.encode(image, sizes), range(requests)))
        elapsed = time.perf_counter() - start
    return _rate(repeats * requests * per_request, elapsed)


def decoder_throughput(predictor: SamPredictor, prompts: int, repeats: int) -> float:
    """Prompts/s for ``prompts`` point prompts in one request against one embedding."""
    h, w = predictor.original_size
    rng = np.random.default_rng(1)
    points = rng.uniform(0, [w, h], (prompts, 1, 2))
    labels = np.ones((prompts, 1))
    predictor.predict_batch(point_coords=points, point_labels=labels)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        predictor.predict_batch(point_coords=points, point_labels=labels)
    return _rate(repeats * prompts, time.perf_counter() - start)


def end_to_end(url, model: str, image: np.ndarray, clients: int, rounds: int) -> Dict[str, float]:
    """``clients`` threads each doing set_image + one point predict ``rounds`` times, on a new
    image each time (one the server's session cache cannot have seen)."""
    h, w = image.shape[:2]

    def work(_):
        latencies = []
        local, rng = image.copy(), np.random.default_rng()
        with SamPredictor(url, model=model, timeout=600) as predictor:
            for _ in range(rounds):
                local[:2, :8] = rng.integers(0, 256, local[:2, :8].shape)
                start = time.perf_counter()
                predictor.set_image(local)
                predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
                latencies.append(time.perf_counter() - start)
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [x for result in pool.map(work, range(clients)) for x in result]
    elapsed = time.perf_counter() - start
    return {
        "images_per_s": _rate(len(latencies), elapsed),
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
    }


def run(
    url,
    model: str = C.DEFAULT_MODEL_NAME,
    batches: Sequence[int] = (1, 8, 16),
    prompts: int = 64,
    repeats: int = 3,
    clients: int = 4,
    image: np.ndarray = None,
) -> List[List[str]]:
    """Runs every measurement; returns table rows (name, setting, value)."""
    if image is None:
        image = np.random.default_rng(2).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    rows = []
    with SamPredictor(url, model=model, timeout=600) as predictor:
        for batch in batches:
            rows.append(
                ["encoder", f"batch {batch}", f"{encoder_throughput(predictor.client, batch, repeats):.2f} images/s"]
            )
        predictor.set_image(image)
        rows.append(
            [
                "decoder",
                f"{prompts} prompts/request",
                f"{decoder_throughput(predictor, prompts, repeats):.1f} prompts/s",
            ]
        )
    e2e = end_to_end(url, model, image, clients, repeats)
    rows.append(
        [
            "end to end",
            f"{clients} clients",
            f"{e2e['images_per_s']:.2f} images/s (p50 {e2e['p50_ms']:.0f} ms, p99 {e2e['p99_ms']:.0f} ms)",
        ]
    )
    return rows


def format_table(rows: List[List[str]]) -> str:
    header = ["stage", "setting", "throughput"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    return "\n".join(lines + [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows])
