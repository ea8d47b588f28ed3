#!/usr/bin/env python3
"""Soak: several samtriton replicas under a mixed load for a long time, watching errors and the
servers' memory.

    .venv/bin/python scripts/soak.py --checkpoint ~/.cache/samtriton/checkpoints/mobile_sam.pt --minutes 20

Three replicas (each its own ports and session cache directory, as separate hosts) of one
MobileSAM export (a 256 MiB session cache each, so it fills and evicts); client threads, each
with its own ``SamPredictor`` over all replicas, pick at random: a new image (a random crop of
a real photograph: an encode), a click on their current image, or automatic mask generation
on a new small image (session AMG, 8 x 8 points). Every failed call is an error. The servers'
memory is the resident set of each tritonserver and its python-backend stubs, sampled every
``--sample-seconds``. An AMG request in flight lifts it by up to a GiB for its duration (ONNX
Runtime's arena for 64 prompts, returned afterwards), so growth compares its floor, the
smallest sample of a window, which a leak lifts and a request in flight does not: the first
window after the warm-up (``--warmup-minutes``: arenas and caches at their working size)
against the last (a sixth of the samples after the warm-up each, at least 3). The windows'
medians are printed too.
Exits 1 when a call failed or a replica's memory grew more than ``--max-growth``.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("new image", "click", "amg")


def server_rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` and of every process in its process group
    (tritonserver and its stubs), in KiB."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                pgid = int(stat.read().rpartition(")")[2].split()[2])
            if pgid != pid:
                continue
            with open(f"/proc/{entry}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        except (OSError, StopIteration, ValueError, IndexError):
            pass
    return total


def new_image(rng: np.random.Generator, photographs: Sequence[np.ndarray], small: bool = False) -> np.ndarray:
    """A random crop (60-100% of each side; ``small``: at most 320 px) of a real photograph,
    maybe mirrored: a new image id almost surely."""
    from samtriton.transforms import to_rgb_uint8

    image = to_rgb_uint8(photographs[rng.integers(len(photographs))])
    h, w = image.shape[:2]
    ch, cw = (int(side * rng.uniform(0.6, 1.0)) for side in (h, w))
    if small:
        ch, cw = min(ch, 320), min(cw, 320)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = image[y : y + ch, x : x + cw]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


class Soak:
    """Client threads over ``urls`` until ``stop_at``; errors and latencies by kind."""

    def __init__(
        self,
        urls: Sequence[str],
        photographs: Sequence[np.ndarray],
        threads: int,
        mix: Sequence[float],
        model: str = "mobilesam",
    ):
        self.urls, self.photographs, self.threads, self.mix, self.model = list(urls), photographs, threads, mix, model
        self.latencies: Dict[str, List[float]] = {k: [] for k in KINDS}
        self.errors: List[tuple] = []
        self.stop_at = float("inf")
        self._lock = threading.Lock()

    def client(self, index: int) -> None:
        from samtriton import SamAutomaticMaskGenerator, SamPredictor

        rng = np.random.default_rng(index)
        with SamPredictor(self.urls, model=self.model, timeout=300) as predictor:
            generator = SamAutomaticMaskGenerator(predictor, points_per_side=8, points_per_batch=64)
            while time.monotonic() < self.stop_at:
                kind = KINDS[rng.choice(len(KINDS), p=self.mix)] if predictor.is_image_set else "new image"
                started = time.perf_counter()
                try:
                    if kind == "new image":
                        predictor.set_image(new_image(rng, self.photographs))
                    elif kind == "click":
                        h, w = predictor.original_size
                        point = np.array([[rng.uniform(0, w), rng.uniform(0, h)]])
                        masks, scores, _ = predictor.predict(point_coords=point, point_labels=np.array([1]))
                        assert masks.shape == (3, h, w) and np.isfinite(scores).all()
                    else:
                        records = generator.generate(new_image(rng, self.photographs, small=True))
                        assert isinstance(records, list)
                except Exception as exc:  # noqa: BLE001 - every failed call is an error of the soak
                    with self._lock:
                        self.errors.append((time.monotonic(), kind, repr(exc)[:300]))
                    continue
                with self._lock:
                    self.latencies[kind].append(time.perf_counter() - started)

    def start(self, seconds: float) -> List[threading.Thread]:
        self.stop_at = time.monotonic() + seconds
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(self.threads)]
        for thread in threads:
            thread.start()
        return threads


def export_repository(checkpoint: Path, work: Path, cache_mib: int) -> Path:
    from samtriton.export.checkpoints import load_sam
    from samtriton.export.onnx_export import export_decoder, export_encoder
    from samtriton.export.repository import RepositoryOptions, write_repository

    sam = load_sam("vit_t", checkpoint)
    encoder = export_encoder(sam, work / "onnx" / "encoder" / "model.onnx")
    decoder = export_decoder(sam, work / "onnx" / "decoder" / "model.onnx")
    repository = work / "repository"
    write_repository(repository, encoder, decoder, RepositoryOptions(name="mobilesam", session_cache_mib=cache_mib))
    return repository


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="MobileSAM checkpoint (mobile_sam.pt), exported here")
    source.add_argument("--repository", type=Path, help="an exported repository (deployment name mobilesam)")
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the soak (default: %(default)s)")
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        default=None,
        help="memory growth is measured from here (default: a tenth of the soak, at least 1)",
    )
    parser.add_argument("--replicas", type=int, default=3, help="replicas (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=4, help="client threads (default: %(default)s)")
    parser.add_argument(
        "--mix",
        type=float,
        nargs=3,
        default=(0.15, 0.78, 0.07),
        metavar=("NEW", "CLICK", "AMG"),
        help="probability of each kind of call (default: %(default)s)",
    )
    parser.add_argument("--cache-mib", type=int, default=256, help="session cache per replica when exporting, MiB")
    parser.add_argument("--sample-seconds", type=float, default=20.0, help="memory sampling (default: %(default)s)")
    parser.add_argument("--max-growth", type=float, default=0.05, help="largest memory growth after the warm-up")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if abs(sum(args.mix) - 1.0) > 1e-6:
        parser.error("--mix: the three probabilities must add up to 1")
    warmup = args.warmup_minutes if args.warmup_minutes is not None else max(1.0, args.minutes / 10)
    if warmup >= args.minutes:
        parser.error("--warmup-minutes must be shorter than --minutes")
    sys.path.insert(0, str(ROOT))
    scaleout = runpy.run_path(str(ROOT / "scripts" / "scaleout.py"))
    photographs = list(scaleout["scaleout_images"]().values())

    with tempfile.TemporaryDirectory(prefix="samtriton-soak-") as work:
        work = Path(work)
        repository = args.repository or export_repository(args.checkpoint, work, args.cache_mib)
        with scaleout["Replicas"](repository, args.replicas, work / "cache") as replicas:
            soak = Soak(replicas.urls, photographs, args.threads, args.mix)
            started = time.monotonic()
            threads = soak.start(args.minutes * 60)
            samples = []  # (seconds since start, [KiB per replica])
            while any(t.is_alive() for t in threads):
                samples.append((time.monotonic() - started, [server_rss_kib(s.process.pid) for s in replicas.servers]))
                for thread in threads:
                    thread.join(timeout=max(0.0, args.sample_seconds - (time.monotonic() - started - samples[-1][0])))
            samples.append((time.monotonic() - started, [server_rss_kib(s.process.pid) for s in replicas.servers]))
            elapsed = time.monotonic() - started
    after_warmup = [kib for t, kib in samples if t >= warmup * 60]
    window = max(3, len(after_warmup) // 6)
    if len(after_warmup) < 2 * window:
        raise SystemExit(f"too few memory samples after the warm-up ({len(after_warmup)}): lower --sample-seconds")
    warm = [float(np.min(column)) for column in zip(*after_warmup[:window])]
    end = [float(np.min(column)) for column in zip(*after_warmup[-window:])]
    growth = [(e - w) / w for w, e in zip(warm, end)]
    warm_median = [float(np.median(column)) for column in zip(*after_warmup[:window])]
    end_median = [float(np.median(column)) for column in zip(*after_warmup[-window:])]
    figures = {
        "minutes": round(elapsed / 60, 1),
        "replicas": args.replicas,
        "threads": args.threads,
        "mix": list(args.mix),
        "calls": {k: len(v) for k, v in soak.latencies.items()},
        "errors": len(soak.errors),
        "latency_ms": {
            k: {
                "p50": round(float(np.percentile(v, 50)) * 1000, 1),
                "p99": round(float(np.percentile(v, 99)) * 1000, 1),
            }
            for k, v in soak.latencies.items()
            if v
        },
        "warmup_minutes": warmup,
        "rss_window_samples": window,
        "rss_mib_after_warmup": [round(w / 1024) for w in warm],
        "rss_mib_end": [round(e / 1024) for e in end],
        "rss_growth": [round(g, 4) for g in growth],
        "rss_median_mib_after_warmup": [round(w / 1024) for w in warm_median],
        "rss_median_mib_end": [round(e / 1024) for e in end_median],
        "rss_mib_samples": [(round(t), [round(k / 1024) for k in kib]) for t, kib in samples],
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "rss_mib_samples"}))
    print(
        f"\n{args.replicas} replicas, {args.threads} client threads, {elapsed / 60:.1f} min, "
        f"{sum(figures['calls'].values())} calls, {len(soak.errors)} errors"
    )
    print("| call | count | p50 (ms) | p99 (ms) |\n|---|---|---|---|")
    for kind in KINDS:
        if soak.latencies[kind]:
            lat = figures["latency_ms"][kind]
            print(f"| {kind} | {figures['calls'][kind]} | {lat['p50']:.0f} | {lat['p99']:.0f} |")
    print(
        "| replica | RSS floor after warm-up (MiB) | RSS floor at end (MiB) | growth | medians (MiB) |"
        "\n|---|---|---|---|---|"
    )
    for i, (w, e, g, wm, em) in enumerate(zip(warm, end, growth, warm_median, end_median)):
        print(f"| {i} | {w / 1024:.0f} | {e / 1024:.0f} | {g:+.1%} | {wm / 1024:.0f} -> {em / 1024:.0f} |")
    print(f"(floor: the smallest of {window} samples, {args.sample_seconds:g} s apart, in each window)")
    for error in soak.errors[:10]:
        print("error:", error)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if not soak.errors and max(growth) <= args.max_growth else 1


if __name__ == "__main__":
    sys.exit(main())
