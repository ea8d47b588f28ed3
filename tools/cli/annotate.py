"""``samtriton annotate``: the click-to-segment web app, also a Label Studio ML backend."""

from __future__ import annotations

import os
import sys

from .options import amg_options, amg_settings, connection_options


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "annotate",
        help="web app: click-to-segment annotation, and a Label Studio ML backend",
        description="Annotate images in the browser on a running samtriton server (session "
        "mode: the embedding stays on the server, a click sends the prompts). "
        "The same URL is a Label Studio ML backend (/health, /setup, /predict).",
        parents=[connection_options(timeout=True), amg_options()],
    )
    parser.add_argument("images", nargs="+", help="image files or folders to serve (only these are read)")
    parser.add_argument(
        "--out",
        required=True,
        help="directory for accepted objects, masks, cut-outs and coco.json (only this is written)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the app binds (loopback: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="the app's HTTP port")
    parser.add_argument(
        "--token-file",
        default=None,
        help="file holding the access token that every request needs when --host is beyond loopback (HTTP "
        "Basic password, e.g. Label Studio's ML backend basic auth, or Bearer); default: "
        "$SAMTRITON_ANNOTATE_TOKEN, else one generated and printed at start",
    )
    parser.add_argument(
        "--label-studio-url",
        default="",
        help="Label Studio's URL, to fetch task images that are not served here (its API token "
        "from $LABEL_STUDIO_API_KEY); default: only served images",
    )
    # A coarser grid than segment's: someone in the browser waits for the automatic masks.
    parser.set_defaults(func=run, points_per_side=16)


def run(args) -> int:
    try:
        from samtriton.tools.annotate.app import serve
    except ImportError as exc:
        print(
            f"samtriton annotate: {exc}; install the app's dependencies: pip install 'samtriton[annotate]'",
            file=sys.stderr,
        )
        return 2
    try:
        return serve(
            args.images,
            args.url,
            args.model,
            args.out,
            host=args.host,
            port=args.port,
            timeout=args.timeout,
            label_studio_url=args.label_studio_url,
            label_studio_token=os.environ.get("LABEL_STUDIO_API_KEY", ""),
            amg_options=amg_settings(args),
            token_file=args.token_file,
        )
    except ValueError as exc:  # no images, two images with one name
        print(f"samtriton annotate: {exc}", file=sys.stderr)
        return 2
