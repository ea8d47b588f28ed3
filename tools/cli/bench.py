"""``samtriton bench``: ``server`` (throughput of a running deployment), ``compare`` (against
the in-process reference) and ``amg`` (automatic mask generation against the reference)."""

from __future__ import annotations

import sys
from pathlib import Path

from samtriton import contract as C

from .options import amg_options, amg_settings, connection_options, image_paths


def add_parser(sub) -> None:
    parser = sub.add_parser("bench", help="benchmarks")
    bench_sub = parser.add_subparsers(dest="bench", required=True)
    add_server(bench_sub)
    add_compare(bench_sub)
    add_amg(bench_sub)


def add_server(sub) -> None:
    parser = sub.add_parser(
        "server",
        aliases=["gpu"],
        parents=[connection_options()],
        help="throughput of a running deployment (encoder, decoder, end to end)",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16], help="encoder batch sizes to time")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per decoder request")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of the end-to-end run")
    parser.add_argument("--image", help="image to use (default: a random 1024x768 image)")
    parser.set_defaults(func=run_server)


def run_server(args) -> int:
    from samtriton.tools import bench

    image = None
    if args.image:
        from samtriton.transforms import to_rgb_uint8

        image = to_rgb_uint8(args.image)
    load = dict(batches=args.batches, prompts=args.prompts, repeats=args.repeats, clients=args.clients)
    rows = bench.run(args.url, args.model, image=image, **load)
    print(bench.format_table(rows))
    return 0


def _reference_options(parser) -> None:
    """The in-process reference's options, of ``compare`` and ``amg``."""
    parser.add_argument("--model-type", default="vit_t", choices=C.MODEL_TYPES, help="the reference's model type")
    parser.add_argument("--checkpoint", help="reference checkpoint (default: the official one)")


def add_compare(sub) -> None:
    parser = sub.add_parser(
        "compare",
        parents=[connection_options(or_repository=True)],
        help="samtriton vs the in-process reference SamPredictor: latency, bytes, concurrency sweep",
    )
    parser.add_argument("images", nargs="*", help="images or folders (default: 3 scikit-image photographs)")
    _reference_options(parser)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per operation and image (median)")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent client counts of the sweep"
    )
    parser.add_argument("--rounds", type=int, default=3, help="images (and batched predicts) per client")
    parser.add_argument("--batch-prompts", type=int, default=64, help="prompts of the batched predict")
    parser.add_argument("--amg-points-per-side", type=int, help="also time automatic mask generation")
    parser.add_argument("--out", default="out/bench", help="writes bench.json, bench.md, bench.png here")
    parser.set_defaults(func=run_compare)


def run_compare(args) -> int:
    import contextlib

    from samtriton.tools import bench_compare
    from samtriton.transforms import to_rgb_uint8

    if args.images:
        images = {Path(p).stem: to_rgb_uint8(p) for p in image_paths(args.images)}
    else:
        try:
            from skimage import data
        except ImportError:
            raise SystemExit(
                "samtriton bench compare: give image paths (scikit-image, for its sample images, is not installed)"
            ) from None
        images = {name: to_rgb_uint8(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee")}
    with contextlib.ExitStack() as stack:
        url, admin_key = args.url, None
        if args.repository:  # serve it here, on the embedded tritonserver
            from samtriton.server import EmbeddedTriton

            server = stack.enter_context(EmbeddedTriton.on_free_ports(args.repository))
            url, admin_key = server.grpc_url, server.admin_key
            print(f"serving {args.repository} at {url}", file=sys.stderr)
        document = bench_compare.run(
            url,
            args.model,
            images,
            checkpoint=args.checkpoint,
            model_type=args.model_type,
            repeats=args.repeats,
            clients=args.clients,
            rounds=args.rounds,
            batch_prompts=args.batch_prompts,
            amg_points_per_side=args.amg_points_per_side,
            admin_key=admin_key,
        )
    paths = bench_compare.write(document, Path(args.out))
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def add_amg(sub) -> None:
    parser = sub.add_parser(
        "amg",
        help="automatic mask generation vs the in-process reference",
        parents=[connection_options(), amg_options("automatic masks (samtriton's and the reference's)")],
    )
    parser.add_argument("images", nargs="+", help="image files or folders")
    _reference_options(parser)
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.set_defaults(func=run_amg)


def run_amg(args) -> int:
    from samtriton.tools import bench_compare
    from samtriton.transforms import to_rgb_uint8

    images = {Path(p).stem: to_rgb_uint8(p) for p in image_paths(args.images)}
    sam, _ = bench_compare.reference_predictor(args.model_type, args.checkpoint)
    rows = bench_compare.amg_versus_reference(args.url, args.model, sam, args.model_type, images, **amg_settings(args))
    table = bench_compare.format_amg_table(rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0
