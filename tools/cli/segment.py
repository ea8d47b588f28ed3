"""``samtriton segment``: masks of images by points and boxes, or all their masks (``--auto``),
from a running server; an overlay PNG and a JSON record per image."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

from .options import amg_options, amg_settings, connection_options, image_paths


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "segment",
        help="segment images by points and boxes on a running server",
        parents=[connection_options(timeout=True), amg_options("automatic masks (--auto)", crops=True)],
    )
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--cutout", action="store_true", help="also write RGBA cut-outs")
    prompts = parser.add_argument_group("prompts (points and boxes, or --auto)")
    prompts.add_argument("--point", action="append", help="foreground point x,y (repeatable)")
    prompts.add_argument("--negative-point", action="append", help="background point x,y (repeatable)")
    prompts.add_argument("--box", action="append", help="box x0,y0,x1,y1 (repeatable)")
    prompts.add_argument("--auto", action="store_true", help="automatic mask generation (all masks)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from samtriton.tools.visualize import cutout, overlay

    if args.auto:
        return _segment_auto(args)
    points = _pair_list(args.point, 2, "--point") + _pair_list(args.negative_point, 2, "--negative-point")
    labels = [1] * len(args.point or []) + [0] * len(args.negative_point or [])
    boxes = _pair_list(args.box, 4, "--box")
    if not points and not boxes:
        raise SystemExit("samtriton segment: give --point x,y and/or --box x0,y0,x1,y1, or --auto")
    if len(boxes) > 1 and points:
        raise SystemExit("samtriton segment: several --box cannot be combined with points")

    def one(predictor, path, image, out_dir, progress):
        predictor.set_image(image)
        if len(boxes) > 1:
            masks, scores, _ = predictor.predict_batch(boxes=np.array(boxes), multimask_output=False)
            masks, scores = masks[:, 0], scores[:, 0]
        else:
            masks, scores, _ = predictor.predict(
                point_coords=np.array(points) if points else None,
                point_labels=np.array(labels) if points else None,
                box=np.array(boxes[0]) if boxes else None,
                multimask_output=not boxes and len(points) == 1,
            )
            best = int(np.argmax(scores))
            masks, scores = masks[best : best + 1], scores[best : best + 1]
        stem = Path(path).stem
        overlay_path = out_dir / f"{stem}_overlay.png"
        overlay(image, masks, points=np.array(points) if points else None, labels=np.array(labels), boxes=boxes).save(
            overlay_path
        )
        record = {
            "image": str(path),
            "height": image.shape[0],
            "width": image.shape[1],
            "masks": [{"score": float(s), "area": int(m.sum())} for m, s in zip(masks, scores)],
        }
        if args.cutout:
            for i, mask in enumerate(masks):
                cutout(image, mask).save(out_dir / f"{stem}_cutout{i}.png")
        (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(overlay_path, flush=True)

    return _each_image(args, lambda predictor: predictor, one)


def _segment_auto(args) -> int:
    from samtriton.automatic_mask_generator import SamAutomaticMaskGenerator
    from samtriton.tools.visualize import overlay

    try:
        import pycocotools  # noqa: F401

        output_mode = "coco_rle"
    except ImportError:  # the client's own dependencies only: uncompressed RLE
        output_mode = "uncompressed_rle"

    def generator_for(predictor):
        return SamAutomaticMaskGenerator(predictor, output_mode=output_mode, **amg_settings(args))

    def one(generator, path, image, out_dir, progress):
        records = generator.generate(image)
        stem = Path(path).stem
        masks = [_record_mask(r["segmentation"]) for r in sorted(records, key=lambda r: -r["area"])]
        overlay(image, masks).save(out_dir / f"{stem}_overlay.png")
        document = {
            "image": {"file_name": str(path), "height": image.shape[0], "width": image.shape[1]},
            "annotations": records,
        }
        (out_dir / f"{stem}.json").write_text(json.dumps(document) + "\n")
        print(f"{progress} {path}: {len(records)} masks -> {out_dir / (stem + '.json')}", file=sys.stderr, flush=True)

    return _each_image(args, generator_for, one)


def _each_image(args, make_worker, one) -> int:
    """Run ``one(worker, path, image, out_dir, "[i/n]")`` on every image. A file that cannot be
    read, or that the server refuses, costs one line naming it and the reason, and the rest go
    on; a server that cannot be reached (or lacks the model) stops the run with one line.
    Exit status 1 when anything failed, 0 otherwise."""
    from samtriton.errors import ModelNotReady, SamTritonError, ServerUnavailable
    from samtriton.predictor import SamPredictor
    from samtriton.transforms import to_rgb_uint8

    paths, missing = image_paths(args.images, missing_ok=True)
    for item in missing:
        print(f"samtriton segment: {item}: no such image or folder", file=sys.stderr, flush=True)
    failed = []
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        predictor = SamPredictor(args.url, model=args.model, timeout=args.timeout)
    except SamTritonError as exc:  # a malformed --url or --timeout
        print(f"samtriton segment: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        worker = make_worker(predictor)
        for number, path in enumerate(paths, 1):
            try:
                one(worker, path, to_rgb_uint8(path), out_dir, f"[{number}/{len(paths)}]")
            except (ServerUnavailable, ModelNotReady) as exc:
                print(f"samtriton segment: {exc}", file=sys.stderr, flush=True)
                return 1
            except SamTritonError as exc:  # unreadable, refused or failed: this file only, go on
                print(f"samtriton segment: {path}: {exc}", file=sys.stderr, flush=True)
                failed.append(path)
    finally:
        predictor.close()
    if failed or missing:
        print(
            f"samtriton segment: {len(failed) + len(missing)} of {len(paths) + len(missing)} inputs failed",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


def _record_mask(segmentation):
    from samtriton.amg import rle_to_mask

    if isinstance(segmentation.get("counts"), str):
        from pycocotools import mask as mask_utils

        return mask_utils.decode(segmentation).astype(bool)
    return rle_to_mask(segmentation)


def _pair_list(values: Optional[List[str]], size: int, flag: str):
    parsed = []
    for value in values or []:
        try:
            numbers = [float(v) for v in value.split(",")]
        except ValueError:
            raise SystemExit(f"{flag} {value!r}: expected {size} comma-separated numbers") from None
        if len(numbers) != size:
            raise SystemExit(f"{flag} {value!r}: expected {size} comma-separated numbers")
        parsed.append(numbers)
    return parsed
