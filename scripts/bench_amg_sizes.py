#!/usr/bin/env python3
"""Automatic mask generation at three photo sizes, samtriton vs the in-process reference in
one run, plus per batch the filtering before/after the windowed filter and its share of the
server's work next to the served AMG decoder:

    .venv/bin/python scripts/bench_amg_sizes.py --checkpoint ~/.cache/samtriton/checkpoints/mobile_sam.pt

Cases: 512 x 512 (astronaut) at the reference's defaults, a 3 MP photo (coffee scaled to
1536 x 2304) at defaults, a 12 MP photo (coffee scaled to 3000 x 4500) at points_per_side 16,
and (``--cases 3``) the 3 MP photo with crop_n_layers 1 at points_per_side 16.
For each: time, masks (count, matched at IoU >= 0.9, mean matched IoU), the serving
processes' peak RSS growth, bytes on the wire. The reference runs with points_per_batch 16 on
12 MP (it holds a batch's upscaled masks at once: 64 prompts would take 9 GB); results do not
depend on the batch size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _photo(name, size):
    from PIL import Image
    from skimage import data

    image = getattr(data, name)()
    return image if size is None else np.asarray(Image.fromarray(image).resize(size[::-1], Image.BICUBIC))


def _server_processes(server):
    pids = [server.process.pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if any(
                line.startswith("PPid:") and int(line.split()[1]) == server.process.pid for line in status.splitlines()
            ):
                pids.append(int(entry.name))
    return pids


def _kib(pid, field):
    text = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith(field + ":")))


def _server_counters(server):
    """Seconds the server spent on AMG (the session stage's compute time less the encoder's,
    which the stage waits on for each crop), and the stage's decode / filter counters."""
    session = server.metric("nv_inference_compute_infer_duration_us", model="sam_session") / 1e6
    encoder = server.metric("nv_inference_compute_infer_duration_us", model="sam_encoder") / 1e6
    return {
        "amg_s": session - encoder,
        "decode_s": server.metric("samtriton_amg_decode_seconds", model="sam_session"),
        "filter_s": server.metric("samtriton_amg_filter_seconds", model="sam_session"),
    }


def _match(ours, reference):
    from helpers import mask_iou  # tests/helpers.py

    ious = []
    for ref in reference:
        ious.append(max((mask_iou(ref["segmentation"], o["segmentation"]) for o in ours), default=0.0))
    ious = np.asarray(ious)
    return int((ious >= 0.9).sum()), float(ious[ious >= 0.9].mean()) if (ious >= 0.9).any() else 0.0


def _timed(fn, repeats=3):
    """(result, median wall s, median CPU s of this process) over ``repeats`` runs after one warm-up."""
    import statistics

    result = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return result, statistics.median(wall), statistics.median(cpu)


def filter_times(sam, image, amg_decoder, batch=64, before=True):
    """One batch of ``batch`` grid points: the reference decoder; the served AMG decoder graph
    (ONNX Runtime, the stub's settings); the server's filtering of the batch before (the
    whole-batch port, ``filter_batch``) and after (``kept_mask_outputs``, as the stub calls it);
    and the filtering's share of the two, in wall and in CPU time."""
    import os

    import onnxruntime as ort
    import torch
    from mobile_sam import SamPredictor

    from samtriton import contract as C
    from samtriton.server.amg_filter.windows import kept_mask_outputs

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from samtriton.transforms import ResizeLongestSide

    from amg_oracle import filter_batch  # the straightforward port: the "before"

    predictor = SamPredictor(sam)
    predictor.set_image(image)
    h, w = image.shape[:2]
    side = int(np.sqrt(batch))
    grid = np.stack(np.meshgrid(np.linspace(0.05, 0.95, side) * w, np.linspace(0.05, 0.95, side) * h), -1)
    coords = predictor.transform.apply_coords(grid.reshape(-1, 2), (h, w))
    start = time.perf_counter()
    with torch.no_grad():
        predictor.predict_torch(
            torch.as_tensor(coords[:, None, :], dtype=torch.float32),
            torch.ones(len(coords), 1, dtype=torch.int64),
            multimask_output=True,
            return_logits=True,
        )
    reference_decoder_s = time.perf_counter() - start
    threads = len(os.sched_getaffinity(0))
    options = ort.SessionOptions()  # as runtime.onnx_session sets them in the stub
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(amg_decoder), sess_options=options, providers=["CPUExecutionProvider"])
    feeds = {
        C.DECODER_IMAGE_EMBEDDINGS.name: predictor.features.numpy(),
        C.POINT_COORDS.name: np.concatenate([coords[:, None, :], np.zeros((len(coords), 1, 2))], 1).astype(np.float32),
        C.POINT_LABELS.name: np.tile(np.array([[C.LABEL_FOREGROUND, C.LABEL_PAD]], np.float32), (len(coords), 1)),
    }
    (low_res, iou), decoder_s, decoder_cpu = _timed(lambda: session.run(None, feeds))
    input_size = ResizeLongestSide(1024).get_preprocess_shape(h, w, 1024)
    if before:  # the whole-batch port holds every passing mask in float32: 8.5 GB at 12 MP
        start = time.perf_counter()
        filter_batch(low_res, iou, input_size, (h, w), 0.88, 0.95, 1.0)
        before = time.perf_counter() - start
    else:
        before = float("nan")
    _, after, after_cpu = _timed(
        lambda: kept_mask_outputs(
            low_res,
            iou,
            np.array(input_size),
            np.array((h, w)),
            np.array([0.88, 0.95, 1.0], np.float32),
            threads=threads,
        )
    )
    passing = int((iou[:, 1:] > 0.88).sum())
    return dict(
        before_s=before,
        after_s=after,
        after_cpu_s=after_cpu,
        passing=passing,
        masks=3 * len(coords),
        reference_decoder_s=reference_decoder_s,
        decoder_s=decoder_s,
        decoder_cpu_s=decoder_cpu,
        share_wall=after / (after + decoder_s),
        share_cpu=after_cpu / (after_cpu + decoder_cpu),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="MobileSAM checkpoint (mobile_sam.pt)")
    parser.add_argument(
        "--cases",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="which cases (0: 512, 1: 3 MP, 2: 12 MP, 3: 3 MP with a layer of crops)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from samtriton import SamAutomaticMaskGenerator, SamPredictor
    from samtriton import contract as C
    from samtriton.export.checkpoints import load_sam
    from samtriton.export.onnx_export import export_decoder, export_encoder
    from samtriton.export.repository import RepositoryOptions, write_repository
    from samtriton.server import EmbeddedTriton

    cases = [
        ("512 x 512, defaults", _photo("astronaut", None), {}, {}),
        ("3 MP (1536 x 2304), defaults", _photo("coffee", (1536, 2304)), {}, {}),
        (
            "12 MP (3000 x 4500), points_per_side 16",
            _photo("coffee", (3000, 4500)),
            dict(points_per_side=16),
            dict(points_per_batch=16),
        ),
        (
            "3 MP (1536 x 2304), crop_n_layers 1, points_per_side 16",
            _photo("coffee", (1536, 2304)),
            dict(crop_n_layers=1, points_per_side=16),
            {},
        ),
    ]
    sam = load_sam("vit_t", args.checkpoint)  # also makes the reference packages importable
    from mobile_sam import SamAutomaticMaskGenerator as Reference

    rows, filters = [], []
    with tempfile.TemporaryDirectory(prefix="samtriton-amg-bench-") as work:
        work = Path(work)
        encoder = export_encoder(sam, work / "onnx" / "encoder" / "model.onnx")
        decoder = export_decoder(sam, work / "onnx" / "decoder" / "model.onnx")
        write_repository(work / "repository", encoder, decoder, RepositoryOptions(name="sam"))
        with (
            EmbeddedTriton.on_free_ports(work / "repository") as server,
            SamPredictor(server.grpc_url, model="sam", timeout=1200) as predictor,
        ):
            for label, image, settings, reference_extra in [cases[i] for i in args.cases]:
                pids = _server_processes(server)
                for pid in pids:
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
                rss = {pid: _kib(pid, "VmRSS") for pid in pids}
                generator = SamAutomaticMaskGenerator(predictor, **settings)
                counters = _server_counters(server)
                start = time.perf_counter()
                ours = generator.generate(image)
                ours_s = time.perf_counter() - start
                counters = {key: value - counters[key] for key, value in _server_counters(server).items()}
                growth = sum(_kib(pid, "VmHWM") - rss[pid] for pid in pids) / 1024
                start = time.perf_counter()
                reference = Reference(sam, **settings, **reference_extra).generate(image)
                reference_s = time.perf_counter() - start
                matched, mean_iou = _match(ours, reference)
                rows.append(
                    (
                        label,
                        ours_s,
                        reference_s,
                        len(ours),
                        len(reference),
                        matched,
                        mean_iou,
                        growth,
                        generator.bytes_sent / 2**20,
                        generator.bytes_received / 2**20,
                    )
                )
                filters.append(
                    (
                        label,
                        dict(
                            filter_times(
                                sam, image, decoder.parent / C.AMG_DECODER_FILE, before=image.size < 20_000_000
                            ),
                            **counters,
                        ),
                    )
                )
                print(rows[-1], filters[-1], flush=True)
    print(
        "\n| case | samtriton s | reference s | ratio | masks (samtriton / reference / matched >= 0.9) "
        "| mean matched IoU | server peak RSS growth MiB | MiB sent / received |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, ours_s, ref_s, n_ours, n_ref, matched, mean_iou, growth, sent, received in rows:
        print(
            f"| {label} | {ours_s:.1f} | {ref_s:.1f} | {ours_s / ref_s:.2f} | {n_ours} / {n_ref} / {matched} | "
            f"{mean_iou:.3f} | {growth:.0f} | {sent:.1f} / {received:.1f} |"
        )
    print(
        "\n| case | masks past pred_iou_thresh (of 192) | filtering before s | after s | AMG decoder s "
        "| filtering's share, wall / CPU | reference decoder s |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, f in filters:
        print(
            f"| {label} | {f['passing']} | {f['before_s']:.2f} | {f['after_s']:.2f} | {f['decoder_s']:.2f} | "
            f"{f['share_wall']:.0%} / {f['share_cpu']:.0%} | {f['reference_decoder_s']:.2f} |"
        )
    print(
        "\nIn the server, over the case's samtriton run (Triton metrics: the session stage's "
        "compute time less the encoder's, and the stage's own decode / filter counters):\n"
    )
    print("| case | server AMG s | decoding s | filtering s | filtering's share |")
    print("|---|---|---|---|---|")
    for label, f in filters:
        print(
            f"| {label} | {f['amg_s']:.1f} | {f['decode_s']:.1f} | {f['filter_s']:.1f} | "
            f"{f['filter_s'] / f['amg_s']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
