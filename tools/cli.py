"""The ``samtriton`` command: export, serve, segment, bench, annotate.

Subcommands import what they need when they run, so ``samtriton segment`` never loads torch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

from samtriton import contract as C


def _export(args) -> int:
    from samtriton.export.exporter import export
    from samtriton.export.repository import RepositoryOptions
    from samtriton.export.tensorrt_engine import TensorRTUnavailable

    options = RepositoryOptions(
        name=args.name, encoder_backend=args.encoder_backend, decoder_backend=args.decoder_backend,
        max_encoder_batch=args.max_batch_size, encoder_instances=args.encoder_instances,
        decoder_instances=args.decoder_instances, ort_threads=args.ort_threads,
        session_instances=args.session_instances, session_cache_mib=args.session_cache_mib,
        session_cache_dir=os.path.abspath(args.session_cache_dir) if args.session_cache_dir else "",
        torch_device=args.torch_device, torch_precision=args.torch_precision, torch_compile=args.torch_compile,
        device_cache_mib=args.device_cache_mib)
    engine = None
    if args.encoder_backend == "tensorrt":
        try:
            engine = engine_options(args)
        except ValueError as exc:
            print(f"samtriton export: {exc}", file=sys.stderr)
            return 2
    try:
        export(args.model_type, args.repository, checkpoint=args.checkpoint, options=options,
               allow_unverified=args.allow_unverified, engine=engine, hf_model=args.hf_model,
               reference_decoder=args.reference_decoder, return_single_mask=args.return_single_mask)
    except (TensorRTUnavailable, ValueError, FileNotFoundError) as exc:  # bad arguments or files: one line
        print(f"samtriton export: {exc}", file=sys.stderr)
        return 2
    return 0


def engine_options(args):
    """The TensorRT build options of ``samtriton export`` arguments (ValueError when invalid)."""
    from samtriton.export.tensorrt_engine import EngineOptions

    return EngineOptions(precision=args.precision, min_batch=args.min_batch, opt_batch=args.opt_batch,
                         max_batch=args.max_batch or args.max_batch_size, workspace_gib=args.workspace_gib,
                         timing_cache=args.timing_cache)


def _serve(args) -> int:
    from samtriton.server import EmbeddedTriton, ServerStartError

    server = EmbeddedTriton(args.repository, grpc_port=args.grpc_port, http_port=args.http_port,
                            metrics_port=args.metrics_port, host=args.host,
                            startup_timeout=args.startup_timeout, log_verbose=args.log_verbose,
                            tls_cert=args.grpc_tls_cert, tls_key=args.grpc_tls_key,
                            tls_client_ca=args.grpc_tls_client_ca, session_cache_dir=args.session_cache_dir,
                            drain_timeout=args.drain_timeout)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except ServerStartError as exc:
        print(f"samtriton serve: {exc}", file=sys.stderr)
        return 1
    scheme = "grpcs" if server.tls else "grpc"
    print(f"Triton is serving {args.repository} at {scheme}://{server.grpc_url} "
          f"(http {server.host}:{server.http_port}, metrics {server.host}:{server.metrics_port})", flush=True)
    while not stop.wait(0.5):
        if server.process is None or server.process.poll() is not None:
            print("samtriton serve: tritonserver exited unexpectedly:\n" + "\n".join(server.error_lines()),
                  file=sys.stderr)
            server.stop(drain=False)
            return 1
    print(f"samtriton serve: stopping; requests in flight may take up to {args.drain_timeout:g} s", flush=True)
    code = server.stop()
    print(f"tritonserver stopped (exit code {code})", flush=True)
    return 0


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


def _segment(args) -> int:
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
                multimask_output=not boxes and len(points) == 1)
            best = int(np.argmax(scores))
            masks, scores = masks[best:best + 1], scores[best:best + 1]
        stem = Path(path).stem
        overlay_path = out_dir / f"{stem}_overlay.png"
        overlay(image, masks, points=np.array(points) if points else None, labels=np.array(labels),
                boxes=boxes).save(overlay_path)
        record = {"image": str(path), "height": image.shape[0], "width": image.shape[1],
                  "masks": [{"score": float(s), "area": int(m.sum())} for m, s in zip(masks, scores)]}
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
        return SamAutomaticMaskGenerator(
            predictor, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
            crop_n_layers=args.crop_n_layers, min_mask_region_area=args.min_mask_region_area,
            output_mode=output_mode)

    def one(generator, path, image, out_dir, progress):
        records = generator.generate(image)
        stem = Path(path).stem
        masks = [_record_mask(r["segmentation"]) for r in sorted(records, key=lambda r: -r["area"])]
        overlay(image, masks).save(out_dir / f"{stem}_overlay.png")
        document = {"image": {"file_name": str(path), "height": image.shape[0], "width": image.shape[1]},
                    "annotations": records}
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

    paths, missing = _image_paths(args.images, missing_ok=True)
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
        print(f"samtriton segment: {len(failed) + len(missing)} of {len(paths) + len(missing)} inputs failed",
              file=sys.stderr, flush=True)
        return 1
    return 0


def _record_mask(segmentation):
    from samtriton.amg import rle_to_mask

    if isinstance(segmentation.get("counts"), str):
        from pycocotools import mask as mask_utils

        return mask_utils.decode(segmentation).astype(bool)
    return rle_to_mask(segmentation)


def _image_paths(inputs: List[str], missing_ok: bool = False):
    """Image files of ``inputs`` (files, or folders' images). With ``missing_ok``, returns
    (paths, inputs that do not exist) instead of stopping at the first missing one."""
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    paths, missing = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes))
        elif path.exists():
            paths.append(path)
        elif missing_ok:
            missing.append(item)
        else:
            raise SystemExit(f"samtriton: no such image or folder: {item}")
    return (paths, missing) if missing_ok else paths


def _annotate(args) -> int:
    try:
        from samtriton.tools.annotate.app import serve
    except ImportError as exc:
        print(f"samtriton annotate: {exc}; install the app's dependencies: pip install 'samtriton[annotate]'",
              file=sys.stderr)
        return 2
    amg = dict(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
               pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh)
    try:
        return serve(args.images, args.url, args.model, args.out, host=args.host, port=args.port,
                     timeout=args.timeout, label_studio_url=args.label_studio_url,
                     label_studio_token=os.environ.get("LABEL_STUDIO_API_KEY", ""), amg_options=amg)
    except ValueError as exc:  # no images, two images with one name
        print(f"samtriton annotate: {exc}", file=sys.stderr)
        return 2


def _bench_server(args) -> int:
    from samtriton.tools import bench

    image = None
    if args.image:
        from samtriton.transforms import to_rgb_uint8

        image = to_rgb_uint8(args.image)
    rows = bench.run(args.url, args.model, batches=args.batches, prompts=args.prompts, repeats=args.repeats,
                     clients=args.clients, image=image)
    print(bench.format_table(rows))
    return 0


def _bench_compare(args) -> int:
    import contextlib

    from samtriton.tools import bench_compare
    from samtriton.transforms import to_rgb_uint8

    if args.images:
        images = {Path(p).stem: to_rgb_uint8(p) for p in _image_paths(args.images)}
    else:
        try:
            from skimage import data
        except ImportError:
            raise SystemExit("samtriton bench compare: give image paths (scikit-image, for its sample images, "
                             "is not installed)") from None
        images = {name: to_rgb_uint8(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee")}
    with contextlib.ExitStack() as stack:
        url = args.url
        if args.repository:  # serve it here, on the embedded tritonserver
            from samtriton.server import EmbeddedTriton, free_port

            server = stack.enter_context(EmbeddedTriton(args.repository, grpc_port=free_port(),
                                                        http_port=free_port(), metrics_port=free_port()))
            url = server.grpc_url
            print(f"serving {args.repository} at {url}", file=sys.stderr)
        document = bench_compare.run(url, args.model, images, checkpoint=args.checkpoint, model_type=args.model_type,
                                     repeats=args.repeats, clients=args.clients, rounds=args.rounds,
                                     batch_prompts=args.batch_prompts, amg_points_per_side=args.amg_points_per_side)
    paths = bench_compare.write(document, Path(args.out))
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _bench_amg(args) -> int:
    from samtriton.tools import bench
    from samtriton.transforms import to_rgb_uint8

    images = {Path(p).stem: to_rgb_uint8(p) for p in _image_paths(args.images)}
    rows = bench.amg_versus_reference(args.url, args.model, images, checkpoint=args.checkpoint,
                                      model_type=args.model_type, points_per_side=args.points_per_side)
    table = bench.format_amg_table(rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default: appended unless the help text already says it; a flag's is "off"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is None:
            return f"{text} (default: not set)"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        return text + " (default: %(default)s)"


def parsers(parser: argparse.ArgumentParser):
    """``parser`` and all its subcommands' parsers, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases repeat a parser
                yield from parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samtriton", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="checkpoint -> ONNX / TensorRT -> Triton model repository")
    export.add_argument("--model-type", choices=C.MODEL_TYPES,
                        help="architecture of a segment-anything / MobileSAM checkpoint (required for those; "
                             "not for a transformers SamModel directory or --hf-model)")
    export.add_argument("--checkpoint",
                        help="a segment-anything / MobileSAM state dict (.pth / .pt), or a transformers SamModel "
                             "directory (config.json + model.safetensors or pytorch_model.bin); default: download "
                             "the official --model-type checkpoint (sha256-checked)")
    export.add_argument("--hf-model", help="a transformers SamModel on the Hugging Face hub, e.g. "
                                           "facebook/sam-vit-base (downloaded with huggingface_hub; default: none)")
    export.add_argument("--repository", required=True, help="model repository directory to write into")
    export.add_argument("--name", default=C.DEFAULT_MODEL_NAME, help="deployment name (default: %(default)s)")
    export.add_argument("--encoder-backend", default="python", choices=("tensorrt", "onnxruntime", "python", "torch"),
                        help="Triton backend of the image encoder: python (ONNX Runtime in the python backend, "
                             "the embedded server), torch (PyTorch in the python backend, on the GPU: the embedded "
                             "server on a CUDA machine), onnxruntime or tensorrt (NVIDIA's Triton container)")
    export.add_argument("--decoder-backend", default="python", choices=("onnxruntime", "python", "torch"),
                        help="Triton backend of the prompt decoder (torch: the session and AMG stages decode "
                             "and filter on the GPU too)")
    export.add_argument("--max-batch-size", type=int, default=C.MAX_ENCODER_BATCH, help="encoder max batch")
    export.add_argument("--encoder-instances", type=int, default=1, help="encoder model instances")
    export.add_argument("--decoder-instances", type=int, default=1, help="decoder model instances")
    export.add_argument("--ort-threads", type=int, default=0, help="ONNX Runtime threads per python model (0: all)")
    export.add_argument("--session-instances", type=int, default=2, help="session model instances (share one cache)")
    export.add_argument("--session-cache-mib", type=int, default=C.DEFAULT_SESSION_CACHE_MIB,
                        help="embeddings the session model keeps on /dev/shm, in MiB (4 MiB per image)")
    export.add_argument("--session-cache-dir", default="",
                        help="the session cache's directory for every server of this repository on a host "
                             "(default: each server its own under /dev/shm; servers given one directory share it)")
    pt = export.add_argument_group("PyTorch backends (--encoder-backend / --decoder-backend torch)")
    pt.add_argument("--torch-device", default="cuda", choices=("cuda", "cpu"),
                    help="where the torch models run: cuda (KIND_GPU instances) or cpu (default: %(default)s)")
    pt.add_argument("--torch-precision", default=None, choices=("fp32", "tf32", "fp16-mixed", "bf16"),
                    help="the encoder's precision; fp16-mixed and bf16 are autocast (norms, softmax in fp32) "
                         "(default: what keeps the architecture's masks right: fp32 for vit_t, fp16-mixed for "
                         "the ViTs)")
    pt.add_argument("--torch-compile", default="none",
                    choices=("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                    help="torch.compile mode of the encoder, compiled and warmed up at load for each batch "
                         "bucket (1, 2, 4, ... max) (default: %(default)s, eager)")
    pt.add_argument("--device-cache-mib", type=int, default=4096,
                    help="device memory each session instance keeps embeddings in, MiB (default: %(default)s)")
    trt = export.add_argument_group("TensorRT engine (--encoder-backend tensorrt)")
    trt.add_argument("--precision", default="fp16", choices=("fp16", "fp32"),
                     help="fp16 keeps normalization/softmax layers in fp32 (default: %(default)s)")
    trt.add_argument("--min-batch", type=int, default=1, help="smallest batch of the engine's profile")
    trt.add_argument("--opt-batch", type=int, default=None, help="default: 4, clamped into --min-batch..--max-batch")
    trt.add_argument("--max-batch", type=int, default=None, help="default: --max-batch-size")
    trt.add_argument("--workspace-gib", type=float, default=4.0, help="TensorRT builder workspace, GiB")
    trt.add_argument("--timing-cache", help="timing cache file, read if present and updated")
    export.add_argument("--allow-unverified", action="store_true",
                        help="accept a --checkpoint whose sha256 is not the official one (e.g. fine-tuned weights)")
    export.add_argument("--reference-decoder", action="store_true",
                        help="also write REPOSITORY/NAME_reference_decoder.onnx with segment-anything's own ONNX "
                             "decoder interface (its web demo's inputs; masks at orig_im_size) (default: off)")
    export.add_argument("--return-single-mask", action="store_true",
                        help="with --reference-decoder: one mask per call, as segment-anything's "
                             "export script's --return-single-mask (default: all 4 masks)")
    export.set_defaults(func=_export)

    serve = sub.add_parser("serve", help="run the embedded tritonserver on a model repository")
    serve.add_argument("--repository", required=True, help="model repository written by samtriton export")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (the client's)")
    serve.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP port")
    serve.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    serve.add_argument("--startup-timeout", type=float, default=180.0,
                       help="seconds to wait for every model to be ready")
    serve.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    serve.add_argument("--grpc-tls-cert", help="PEM server certificate: serve gRPC over TLS")
    serve.add_argument("--grpc-tls-key", help="PEM private key of --grpc-tls-cert")
    serve.add_argument("--grpc-tls-client-ca", help="PEM CA: require client certificates signed by it (mutual TLS)")
    serve.add_argument("--session-cache-dir", default=None,
                       help="this server's session cache directory, created private (mode 0700); default: the "
                            "repository's setting, else one of the server's own under /dev/shm")
    serve.add_argument("--drain-timeout", type=float, default=30.0,
                       help="on SIGTERM / SIGINT, seconds the requests in flight get to finish (twice: the stages, "
                            "then the models they call) while new ones are refused and go to other replicas "
                            "(default: %(default)s)")
    serve.set_defaults(func=_serve)

    segment = sub.add_parser("segment", help="segment images by points and boxes on a running server")
    segment.add_argument("images", nargs="+", help="image files or folders")
    segment.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address HOST:PORT")
    segment.add_argument("--model", default=C.DEFAULT_MODEL_NAME, help="deployment name on the server")
    segment.add_argument("--point", action="append", help="foreground point x,y (repeatable)")
    segment.add_argument("--negative-point", action="append", help="background point x,y (repeatable)")
    segment.add_argument("--box", action="append", help="box x0,y0,x1,y1 (repeatable)")
    segment.add_argument("--cutout", action="store_true", help="also write RGBA cut-outs")
    segment.add_argument("--auto", action="store_true", help="automatic mask generation (all masks)")
    segment.add_argument("--points-per-side", type=int, default=32, help="--auto: grid points per image side")
    segment.add_argument("--points-per-batch", type=int, default=64, help="--auto: prompts per request")
    segment.add_argument("--pred-iou-thresh", type=float, default=0.88,
                         help="--auto: drop masks whose predicted IoU is lower")
    segment.add_argument("--stability-score-thresh", type=float, default=0.95,
                         help="--auto: drop masks whose stability score is lower")
    segment.add_argument("--crop-n-layers", type=int, default=0, help="--auto: layers of image crops (0: none)")
    segment.add_argument("--min-mask-region-area", type=int, default=0,
                         help="--auto: remove holes and islands smaller than this, in pixels (needs OpenCV)")
    segment.add_argument("--timeout", type=float, default=60.0, help="seconds per server call")
    segment.add_argument("--out", required=True, help="output directory")
    segment.set_defaults(func=_segment)
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    server_bench = bench_sub.add_parser(
        "server", aliases=["gpu"], help="throughput of a running deployment (encoder, decoder, end to end)")
    server_bench.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address HOST:PORT")
    server_bench.add_argument("--model", default=C.DEFAULT_MODEL_NAME, help="deployment name on the server")
    server_bench.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16], help="encoder batch sizes to time")
    server_bench.add_argument("--prompts", type=int, default=64, help="prompts per decoder request")
    server_bench.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    server_bench.add_argument("--clients", type=int, default=4, help="concurrent clients of the end-to-end run")
    server_bench.add_argument("--image", help="image to use (default: a random 1024x768 image)")
    server_bench.set_defaults(func=_bench_server)
    compare = bench_sub.add_parser(
        "compare", help="samtriton vs the in-process reference SamPredictor: latency, bytes, concurrency sweep")
    compare.add_argument("images", nargs="*", help="images or folders (default: 3 scikit-image photographs)")
    where = compare.add_mutually_exclusive_group()
    where.add_argument("--url", default="127.0.0.1:8001", help="a running samtriton server")
    where.add_argument("--repository", help="serve this model repository on the embedded tritonserver instead")
    compare.add_argument("--model", default=C.DEFAULT_MODEL_NAME, help="deployment name on the server")
    compare.add_argument("--model-type", default="vit_t", choices=C.MODEL_TYPES, help="the reference's model type")
    compare.add_argument("--checkpoint", help="reference checkpoint (default: the official one)")
    compare.add_argument("--repeats", type=int, default=5, help="timed calls per operation and image (median)")
    compare.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8],
                         help="concurrent client counts of the sweep")
    compare.add_argument("--rounds", type=int, default=3, help="images (and batched predicts) per client")
    compare.add_argument("--batch-prompts", type=int, default=64, help="prompts of the batched predict")
    compare.add_argument("--amg-points-per-side", type=int, help="also time automatic mask generation")
    compare.add_argument("--out", default="out/bench", help="writes bench.json, bench.md, bench.png here")
    compare.set_defaults(func=_bench_compare)
    amg_bench = bench_sub.add_parser("amg", help="automatic mask generation vs the in-process reference")
    amg_bench.add_argument("images", nargs="+", help="image files or folders")
    amg_bench.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address HOST:PORT")
    amg_bench.add_argument("--model", default=C.DEFAULT_MODEL_NAME, help="deployment name on the server")
    amg_bench.add_argument("--model-type", default="vit_t", choices=C.MODEL_TYPES, help="the reference's model type")
    amg_bench.add_argument("--checkpoint", help="reference checkpoint (default: the official one)")
    amg_bench.add_argument("--points-per-side", type=int, default=32, help="grid points per image side")
    amg_bench.add_argument("--markdown", help="also write the table to this file")
    amg_bench.set_defaults(func=_bench_amg)

    annotate = sub.add_parser("annotate", help="web app: click-to-segment annotation, and a Label Studio ML backend",
                              description="Annotate images in the browser on a running samtriton server (session "
                                          "mode: the embedding stays on the server, a click sends the prompts). "
                                          "The same URL is a Label Studio ML backend (/health, /setup, /predict).")
    annotate.add_argument("images", nargs="+", help="image files or folders to serve (only these are read)")
    annotate.add_argument("--url", default="127.0.0.1:8001", help="the samtriton Triton server's gRPC address")
    annotate.add_argument("--model", default=C.DEFAULT_MODEL_NAME, help="deployment name on the server")
    annotate.add_argument("--out", required=True,
                          help="directory for accepted objects, masks, cut-outs and coco.json (only this is written)")
    annotate.add_argument("--host", default="127.0.0.1", help="address the app binds (loopback: this machine only)")
    annotate.add_argument("--port", type=int, default=8080, help="the app's HTTP port")
    annotate.add_argument("--timeout", type=float, default=60.0, help="seconds per server call")
    annotate.add_argument("--points-per-side", type=int, default=16, help="automatic masks: grid points per side")
    annotate.add_argument("--points-per-batch", type=int, default=64, help="automatic masks: prompts per request")
    annotate.add_argument("--pred-iou-thresh", type=float, default=0.88, help="automatic masks: predicted IoU cut")
    annotate.add_argument("--stability-score-thresh", type=float, default=0.95,
                          help="automatic masks: stability score cut")
    annotate.add_argument("--label-studio-url", default="",
                          help="Label Studio's URL, to fetch task images that are not served here (its API token "
                               "from $LABEL_STUDIO_API_KEY); default: only served images")
    annotate.set_defaults(func=_annotate)
    for each in parsers(parser):
        each.formatter_class = HelpFormatter
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
