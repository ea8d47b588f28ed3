"""``samtriton bench compare``: samtriton through Triton against the in-process reference
``SamPredictor`` (PyTorch), measured in one run on the same real images and prompts.

Measures set_image, one-prompt predict and a 64-prompt batched predict (latency, median of
the repeats), optionally automatic mask generation; the bytes each call puts on the wire
in each client mode; and a concurrency sweep (images/s, prompts/s, p50 / p99 latency).
Writes a JSON document, a Markdown table of samtriton / reference ratios and a PNG plot.
``samtriton bench amg`` runs the automatic-mask part alone (``amg_versus_reference``).

The reference needs the ``export`` extra (torch + segment-anything / mobile_sam); the plot
needs matplotlib. Timings are figures to read, not assertions: nothing here passes or fails.
"""

from __future__ import annotations

import io
import json
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from samtriton.predictor import SamPredictor

# Client modes compared: how set_image / predict reach the server.
MODES = {
    "session": dict(session=True),  # the default: the embedding stays on the server
    "session+shm": dict(session=True, shared_memory=True),  # co-located client
    "embedding": dict(session=False),  # the embedding travels to the client and back
}


def _prompts(image: np.ndarray, count: int, seed: int = 0):
    h, w = image.shape[:2]
    points = np.random.default_rng(seed).uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h], (count, 1, 2))
    return points, np.ones((count, 1))


def _encoded(image: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def reference_predictor(model_type: str, checkpoint):
    """The reference model (segment-anything / MobileSAM, in this process) and its SamPredictor."""
    from samtriton.export.checkpoints import load_sam

    sam = load_sam(model_type, checkpoint)  # also makes the reference packages importable
    return sam, reference_class(model_type, "SamPredictor")(sam)


def reference_class(model_type: str, name: str):
    """``name`` (SamPredictor, SamAutomaticMaskGenerator) of the reference package of ``model_type``
    (importable once ``load_sam`` has run)."""
    import importlib

    return getattr(importlib.import_module("mobile_sam" if model_type == "vit_t" else "segment_anything"), name)


def latency_and_bytes(
    url,
    model: str,
    reference,
    images: Dict[str, np.ndarray],
    repeats: int,
    batch_prompts: int,
    admin_key: Optional[str] = None,
) -> Dict[str, dict]:
    """Per operation: reference and samtriton (per client mode) latency, median over images
    and repeats, and samtriton's bytes on the wire per call. Calls alternate (reference,
    then each mode, ``repeats`` times), so a machine whose speed drifts affects all alike.
    ``admin_key``: the server's, for the shared-memory mode (None: from the environment)."""
    import torch

    times: Dict[str, Dict[str, List[float]]] = {}
    wire: Dict[str, Dict[str, Dict[str, float]]] = {}
    fresh = iter(range(1, 2**24))
    predictors = {
        mode: SamPredictor(url, model=model, timeout=600, **kwargs, **({"admin_key": admin_key} if admin_key else {}))
        for mode, kwargs in MODES.items()
    }

    def compare(op: str, calls: Dict[str, Callable[[], object]]) -> None:
        for call in calls.values():
            call()  # warm-up
        for _ in range(repeats):
            for who, call in calls.items():
                client = predictors[who].client if who in predictors else None
                sent, received = (client.bytes_sent, client.bytes_received) if client else (0, 0)
                start = time.perf_counter()
                call()
                times.setdefault(op, {}).setdefault(who, []).append(time.perf_counter() - start)
                if client is not None:
                    total = wire.setdefault(op, {}).setdefault(who, {"sent": 0.0, "received": 0.0, "calls": 0})
                    total["sent"] += client.bytes_sent - sent
                    total["received"] += client.bytes_received - received
                    total["calls"] += 1

    def fresh_set_image(predictor, image):
        def call():  # a session cache hit would skip the encoder: a new image each call
            image[0, 0] = list(next(fresh).to_bytes(3, "big"))  # one pixel differs
            predictor.set_image(image)

        return call

    try:
        for index, original in enumerate(images.values()):
            image = original.copy()  # set_image calls below change a pixel
            one = dict(
                point_coords=np.array([[image.shape[1] * 0.5, image.shape[0] * 0.45]]), point_labels=np.array([1])
            )
            many_points, many_labels = _prompts(image, batch_prompts, seed=index)
            compare(
                "set_image",
                dict(
                    reference=lambda: reference.set_image(image),
                    **{m: fresh_set_image(p, image) for m, p in predictors.items()},
                ),
            )
            compare(
                "predict (1 prompt)",
                dict(
                    reference=lambda: reference.predict(**one),
                    **{m: (lambda p=p: p.predict(**one)) for m, p in predictors.items()},
                ),
            )
            coords = torch.as_tensor(
                reference.transform.apply_coords(many_points, reference.original_size), dtype=torch.float32
            )
            labels = torch.as_tensor(many_labels, dtype=torch.float32)
            compare(
                f"predict ({batch_prompts} prompts)",
                dict(
                    reference=lambda: reference.predict_torch(coords, labels),
                    **{
                        m: (lambda p=p: p.predict_batch(point_coords=many_points, point_labels=many_labels))
                        for m, p in predictors.items()
                    },
                ),
            )
            # The encoded-file path (session mode): the server decodes and preprocesses. Bytes
            # after the JPEG's end marker make each file new (no cache hit); decoders ignore them.
            jpeg = _encoded(original, "JPEG")
            compare(
                "set_image_file (JPEG)",
                dict(session=lambda: predictors["session"].set_image_file(jpeg + next(fresh).to_bytes(4, "big"))),
            )
    finally:
        for predictor in predictors.values():
            predictor.close()
    summary = {}
    for op, by_who in times.items():
        ref = statistics.median(by_who["reference"]) if "reference" in by_who else None
        ours = {who: statistics.median(v) for who, v in by_who.items() if who != "reference"}
        summary[op] = {
            "reference_s": ref,
            "samtriton_s": ours,
            "ratio": {m: (s / ref if ref else None) for m, s in ours.items()},
            "bytes": {
                m: {"sent": b["sent"] / b["calls"], "received": b["received"] / b["calls"]}
                for m, b in wire.get(op, {}).items()
            },
        }
    return summary


def concurrency_sweep(
    url, model: str, image: np.ndarray, clients: Sequence[int], rounds: int, batch_prompts: int
) -> List[dict]:
    """For each client count: every client sets ``rounds`` images (a new image each time) and
    predicts one prompt on each; once all have, each runs ``rounds`` batched predicts of
    ``batch_prompts`` (the two phases do not overlap, so each rate is its own)."""
    rows = []
    for count in clients:
        images_done = threading.Barrier(count)

        def work(worker):
            set_latencies, batch_latencies = [], []
            local = image.copy()
            rng = np.random.default_rng()  # unseeded: images no earlier run or client has set
            points, labels = _prompts(image, batch_prompts, seed=worker)
            with SamPredictor(url, model=model, timeout=600) as predictor:
                for _ in range(rounds):
                    local[:2, :8] = rng.integers(0, 256, local[:2, :8].shape)  # a new image: no cache hits
                    start = time.perf_counter()
                    predictor.set_image(local)
                    predictor.predict(point_coords=points[0], point_labels=labels[0])
                    set_latencies.append(time.perf_counter() - start)
                images_done.wait()
                start_batches = time.perf_counter()
                for _ in range(rounds):
                    start = time.perf_counter()
                    predictor.predict_batch(point_coords=points, point_labels=labels)
                    batch_latencies.append(time.perf_counter() - start)
            return set_latencies, batch_latencies, start_batches

        start = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            results = list(pool.map(work, range(count)))
        image_latencies = [x for r in results for x in r[0]]
        batch_latencies = [x for r in results for x in r[1]]
        image_seconds = min(r[2] for r in results) - start  # until the barrier: the last client's images done
        batch_seconds = time.perf_counter() - min(r[2] for r in results)
        rows.append(
            {
                "clients": count,
                "images_per_s": len(image_latencies) / image_seconds,
                "image_p50_ms": 1000 * float(np.percentile(image_latencies, 50)),
                "image_p99_ms": 1000 * float(np.percentile(image_latencies, 99)),
                "prompts_per_s": len(batch_latencies) * batch_prompts / batch_seconds,
                "batch_p50_ms": 1000 * float(np.percentile(batch_latencies, 50)),
                "batch_p99_ms": 1000 * float(np.percentile(batch_latencies, 99)),
            }
        )
    return rows


def reference_rate(reference, image: np.ndarray, rounds: int, batch_prompts: int) -> dict:
    """The reference's sequential rates, the baseline of the sweep (one process, all cores)."""
    import torch

    points, labels = _prompts(image, batch_prompts)
    start = time.perf_counter()
    for _ in range(rounds):
        reference.set_image(image)
        reference.predict(point_coords=points[0], point_labels=labels[0])
    images_per_s = rounds / (time.perf_counter() - start)
    coords = torch.as_tensor(reference.transform.apply_coords(points, reference.original_size), dtype=torch.float32)
    start = time.perf_counter()
    for _ in range(rounds):
        reference.predict_torch(coords, torch.as_tensor(labels, dtype=torch.float32))
    return {"images_per_s": images_per_s, "prompts_per_s": rounds * batch_prompts / (time.perf_counter() - start)}


def amg_versus_reference(
    url,
    model: str,
    sam,
    model_type: str,
    images: Dict[str, np.ndarray],
    modes: Sequence[str] = ("session",),
    **settings,
) -> List[dict]:
    """Automatic mask generation of each image, timed: samtriton's SamAutomaticMaskGenerator in
    each client mode of ``modes`` (session: the embeddings stay on the server; embedding: each
    point batch carries its crop's embedding), then the reference's on ``sam`` in this process,
    all with the generator keyword arguments ``settings``. One row per image and mode."""
    from samtriton.automatic_mask_generator import SamAutomaticMaskGenerator

    reference = reference_class(model_type, "SamAutomaticMaskGenerator")
    rng = np.random.default_rng()
    rows = []
    for name, original in images.items():
        ours = {}
        for mode in modes:
            image = original.copy()
            image[0, 0] = rng.integers(0, 256, 3)  # no session cache has it: the encode is timed too
            with SamPredictor(url, model=model, timeout=600, **MODES[mode]) as predictor:
                generator = SamAutomaticMaskGenerator(predictor, **settings)
                start = time.perf_counter()
                count = len(generator.generate(image))
                ours[mode] = dict(
                    samtriton_s=time.perf_counter() - start,
                    samtriton_masks=count,
                    sent=generator.bytes_sent,
                    received=generator.bytes_received,
                )
        start = time.perf_counter()
        reference_masks = len(reference(sam, **settings).generate(original))
        reference_s = time.perf_counter() - start
        rows += [
            dict(
                image=name,
                mode=mode,
                reference_s=reference_s,
                reference_masks=reference_masks,
                ratio=row["samtriton_s"] / reference_s,
                **row,
            )
            for mode, row in ours.items()
        ]
    return rows


def amg_summary(rows: List[dict]) -> dict:
    """``amg_versus_reference`` rows as an operation of the compare document: the median time
    over the images (reference, each mode), the ratios of those, the mean bytes per image."""
    reference_s = statistics.median({row["image"]: row["reference_s"] for row in rows}.values())
    by_mode: Dict[str, List[dict]] = {}
    for row in rows:
        by_mode.setdefault(row["mode"], []).append(row)
    ours = {mode: statistics.median(row["samtriton_s"] for row in mode_rows) for mode, mode_rows in by_mode.items()}
    wire = {
        mode: {kind: statistics.mean(row[kind] for row in mode_rows) for kind in ("sent", "received")}
        for mode, mode_rows in by_mode.items()
    }
    return {
        "reference_s": reference_s,
        "samtriton_s": ours,
        "ratio": {mode: seconds / reference_s for mode, seconds in ours.items()},
        "bytes": wire,
    }


def format_amg_table(rows: List[dict]) -> str:
    """``amg_versus_reference`` rows (one mode) as a Markdown table, with a total row."""
    lines = [
        "| image | samtriton s | reference s | ratio | masks (samtriton / reference) | MiB sent / received |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['image']} | {r['samtriton_s']:.1f} | {r['reference_s']:.1f} | {r['ratio']:.2f} | "
            f"{r['samtriton_masks']} / {r['reference_masks']} | "
            f"{r['sent'] / 2**20:.1f} / {r['received'] / 2**20:.1f} |"
        )
    total = sum(r["samtriton_s"] for r in rows) / sum(r["reference_s"] for r in rows)
    lines.append(
        f"| all | {sum(r['samtriton_s'] for r in rows):.1f} | {sum(r['reference_s'] for r in rows):.1f} | "
        f"{total:.2f} | | |"
    )
    return "\n".join(lines)


def run(
    url,
    model: str,
    images: Dict[str, np.ndarray],
    checkpoint=None,
    model_type: str = "vit_t",
    repeats: int = 5,
    clients: Sequence[int] = (1, 2, 4, 8),
    rounds: int = 3,
    batch_prompts: int = 64,
    amg_points_per_side: Optional[int] = None,
    admin_key: Optional[str] = None,
) -> dict:
    sam, reference = reference_predictor(model_type, checkpoint)
    document = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": _cpu_count(),
            "python": platform.python_version(),
        },
        "settings": {
            "url": url,
            "model": model,
            "model_type": model_type,
            "images": list(images),
            "repeats": repeats,
            "clients": list(clients),
            "rounds": rounds,
            "batch_prompts": batch_prompts,
        },
        "operations": latency_and_bytes(url, model, reference, images, repeats, batch_prompts, admin_key),
    }
    first = next(iter(images.values()))
    document["reference_rates"] = reference_rate(reference, first, rounds, batch_prompts)
    document["concurrency"] = concurrency_sweep(url, model, first, clients, rounds, batch_prompts)
    if amg_points_per_side:
        rows = amg_versus_reference(
            url, model, sam, model_type, images, modes=("session", "embedding"), points_per_side=amg_points_per_side
        )
        document["operations"][f"automatic masks (points_per_side {amg_points_per_side})"] = amg_summary(rows)
    return document


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def markdown(document: dict) -> str:
    modes = list(MODES)
    lines = [
        "| operation | reference ms | " + " | ".join(f"{m} ms (ratio)" for m in modes) + " |",
        "|---|---|" + "---|" * len(modes),
    ]
    for op, entry in document["operations"].items():
        ref = entry["reference_s"]
        cells = []
        for mode in modes:
            seconds = entry["samtriton_s"].get(mode)
            cells.append(
                ""
                if seconds is None
                else f"{1000 * seconds:.1f} ({entry['ratio'][mode]:.2f})"
                if ref
                else f"{1000 * seconds:.1f}"
            )
        lines.append(f"| {op} | {'' if ref is None else f'{1000 * ref:.1f}'} | " + " | ".join(cells) + " |")
    lines += ["", "| operation | mode | bytes sent | bytes received |", "|---|---|---|---|"]
    for op, entry in document["operations"].items():
        for mode, b in entry["bytes"].items():
            lines.append(f"| {op} | {mode} | {_size(b['sent'])} | {_size(b['received'])} |")
    rates = document["reference_rates"]
    lines += [
        "",
        f"Concurrency (session mode; reference in-process, sequential: {rates['images_per_s']:.2f} images/s, "
        f"{rates['prompts_per_s']:.0f} prompts/s):",
        "",
        "| clients | images/s | ratio to 1 client | p50 / p99 ms (set_image + predict) | prompts/s | "
        f"p50 / p99 ms ({document['settings']['batch_prompts']}-prompt predict) |",
        "|---|---|---|---|---|---|",
    ]
    base = document["concurrency"][0]["images_per_s"] if document["concurrency"] else None
    for row in document["concurrency"]:
        lines.append(
            f"| {row['clients']} | {row['images_per_s']:.2f} | {row['images_per_s'] / base:.2f} | "
            f"{row['image_p50_ms']:.0f} / {row['image_p99_ms']:.0f} | {row['prompts_per_s']:.0f} | "
            f"{row['batch_p50_ms']:.0f} / {row['batch_p99_ms']:.0f} |"
        )
    return "\n".join(lines)


def _size(count: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:.0f} B"


def plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = document["concurrency"]
    clients = [r["clients"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(clients, [r["images_per_s"] for r in rows], "o-", label="samtriton images/s")
    left.axhline(document["reference_rates"]["images_per_s"], color="gray", ls="--", label="reference images/s")
    left.set_xlabel("concurrent clients")
    left.set_ylabel("images/s (set_image + 1 predict)")
    left.set_xticks(clients)
    left.legend()
    right.plot(clients, [r["image_p99_ms"] for r in rows], "o-", label="set_image + predict p99")
    right.plot(
        clients,
        [r["batch_p99_ms"] for r in rows],
        "s-",
        label=f"{document['settings']['batch_prompts']}-prompt predict p99",
    )
    right.set_xlabel("concurrent clients")
    right.set_ylabel("p99 latency (ms)")
    right.set_xticks(clients)
    right.legend()
    figure.suptitle(
        f"samtriton vs in-process reference ({document['settings']['model_type']}, {document['machine']['cpus']} CPUs)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(document: dict, out: Path) -> Dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "plot": out / "bench.png"}
    paths["json"].write_text(json.dumps(document, indent=2) + "\n")
    paths["markdown"].write_text(markdown(document) + "\n")
    plot(document, paths["plot"])
    return paths
