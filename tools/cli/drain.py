"""``samtriton drain``: let a running tritonserver finish its requests before it stops
(a Kubernetes preStop hook for NVIDIA's container, whose own SIGTERM does not drain).

Draining uses Triton's model-repository API, which samtriton's servers restrict to their
admin key: ``--admin-key-file``, else ``SAMTRITON_ADMIN_KEY_FILE`` / ``SAMTRITON_ADMIN_KEY``
(in a pod, the same Secret the server reads)."""

from __future__ import annotations

import re
import sys

from samtriton import admin_key as keys
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
    parser.add_argument(
        "--admin-key-file",
        default=None,
        help=f"file holding the server's admin key (default: ${keys.ADMIN_KEY_FILE_ENV}, else ${keys.ADMIN_KEY_ENV})",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from samtriton.server.drain import AdminKeyRefused, drain

    http_url = args.http_url
    if not HOST_PORT.fullmatch(http_url):
        print(f"samtriton drain: --http-url: expected HOST:PORT (no scheme), got {http_url!r}", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print(f"samtriton drain: --timeout must be positive seconds, got {args.timeout}", file=sys.stderr)
        return 2
    try:
        key = keys.given(args.admin_key_file, "--admin-key-file")
    except ValueError as exc:
        print(f"samtriton drain: {exc}", file=sys.stderr)
        return 2
    if key is None:
        print(
            f"samtriton drain: no admin key: the server's repository API needs it; pass --admin-key-file or set "
            f"{keys.ADMIN_KEY_FILE_ENV} or {keys.ADMIN_KEY_ENV}",
            file=sys.stderr,
        )
        return 2
    try:
        drained = drain(http_url, args.timeout, key)
    except AdminKeyRefused as exc:
        print(f"samtriton drain: {exc}", file=sys.stderr)
        return 1
    if drained:
        print(f"samtriton drain: {args.http_url} drained: every model unloaded", flush=True)
        return 0
    print(
        f"samtriton drain: {args.http_url} not drained within {args.timeout:g} s per phase, or not answering",
        file=sys.stderr,
    )
    return 1
