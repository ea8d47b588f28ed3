"""``samtriton drain``: let a running tritonserver finish its requests before it stops
(a Kubernetes preStop hook for NVIDIA's container, whose own SIGTERM does not drain)."""

from __future__ import annotations

import re
import sys

from samtriton.server.drain import DEFAULT_DRAIN_TIMEOUT_S

HOST_PORT = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "drain", help="unload a running server's models so its requests in flight finish and new ones fail over"
    )
    parser.add_argument("--http-url", default="127.0.0.1:8000", help="Triton's HTTP address HOST:PORT")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        help="seconds per phase (callers, then the models they call)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from samtriton.server.drain import drain

    http_url = args.http_url
    if not HOST_PORT.fullmatch(http_url):
        print(f"samtriton drain: --http-url: expected HOST:PORT (no scheme), got {http_url!r}", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print(f"samtriton drain: --timeout must be positive seconds, got {args.timeout}", file=sys.stderr)
        return 2
    if drain(http_url, args.timeout):
        print(f"samtriton drain: {args.http_url} drained: every model unloaded", flush=True)
        return 0
    print(
        f"samtriton drain: {args.http_url} not drained within {args.timeout:g} s per phase, or not answering",
        file=sys.stderr,
    )
    return 1
