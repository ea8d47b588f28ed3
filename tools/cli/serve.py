"""``samtriton serve``: the embedded tritonserver on a model repository, until SIGINT / SIGTERM.

The server's restricted APIs (model repository, shared memory, statistics, trace, logging)
need its admin key: ``--admin-key-file``, else ``SAMTRITON_ADMIN_KEY_FILE`` /
``SAMTRITON_ADMIN_KEY``, else one generated for this start and written to a file only this
user can read (its path is printed; it is removed when the server stops).
"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
from pathlib import Path

from samtriton import admin_key as keys
from samtriton.server.drain import DEFAULT_DRAIN_TIMEOUT_S


def add_parser(sub) -> None:
    parser = sub.add_parser("serve", help="run the embedded tritonserver on a model repository")
    parser.add_argument("--repository", required=True, help="model repository written by samtriton export")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (the client's)")
    parser.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="seconds to wait for every model to be ready"
    )
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose level")
    tls = parser.add_argument_group("gRPC over TLS")
    tls.add_argument("--grpc-tls-cert", help="PEM server certificate: serve gRPC over TLS")
    tls.add_argument("--grpc-tls-key", help="PEM private key of --grpc-tls-cert")
    tls.add_argument("--grpc-tls-client-ca", help="PEM CA: require client certificates signed by it (mutual TLS)")
    parser.add_argument(
        "--session-cache-dir",
        default=None,
        help="this server's session cache directory, created private (mode 0700); default: the "
        "repository's setting, else one of the server's own under /dev/shm",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        help="on SIGTERM / SIGINT, seconds the requests in flight get to finish (twice: the stages, "
        "then the models they call) while new ones are refused and go to other replicas "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--admin-key-file",
        default=None,
        help="file holding the admin key that Triton's model-repository, shared-memory, statistics, trace and "
        f"logging APIs require (default: ${keys.ADMIN_KEY_FILE_ENV}, else ${keys.ADMIN_KEY_ENV}, else a key "
        "generated for this start, written to a private file whose path is printed)",
    )
    parser.set_defaults(func=run)


def _given_admin_key(args):
    """(key, where it came from) from ``--admin-key-file`` or the environment; (None, "")
    when neither gives one. ``ValueError`` naming the setting for a bad one."""
    key = keys.given(args.admin_key_file, "--admin-key-file")
    where = f"from {args.admin_key_file}" if args.admin_key_file else "from the environment"
    return key, where if key else ""


def run(args) -> int:
    try:
        key, origin = _given_admin_key(args)
    except ValueError as exc:
        print(f"samtriton serve: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="samtriton-serve-") as private:  # mode 0700
        if key is None:
            key = keys.generate()
            path = Path(private) / "admin-key"
            path.touch(mode=0o600)
            path.write_text(key + "\n")
            origin = f"generated for this start: {path}"
        return _serve(args, key, origin)


def _serve(args, key: str, origin: str) -> int:
    from samtriton.server import EmbeddedTriton, ServerStartError

    server = EmbeddedTriton(
        args.repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        host=args.host,
        startup_timeout=args.startup_timeout,
        log_verbose=args.log_verbose,
        tls_cert=args.grpc_tls_cert,
        tls_key=args.grpc_tls_key,
        tls_client_ca=args.grpc_tls_client_ca,
        session_cache_dir=args.session_cache_dir,
        drain_timeout=args.drain_timeout,
        admin_key=key,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except ServerStartError as exc:
        print(f"samtriton serve: {exc}", file=sys.stderr)
        return 1
    scheme = "grpcs" if server.tls else "grpc"
    print(
        f"Triton is serving {args.repository} at {scheme}://{server.grpc_url} "
        f"(http {server.host}:{server.http_port}, metrics {server.host}:{server.metrics_port})",
        flush=True,
    )
    print(f"admin key ({keys.ADMIN_KEY_NAME}) {origin}", flush=True)
    while not stop.wait(0.5):
        if server.process is None or server.process.poll() is not None:
            print(
                "samtriton serve: tritonserver exited unexpectedly:\n" + "\n".join(server.error_lines()),
                file=sys.stderr,
            )
            server.stop(drain=False)
            return 1
    print(f"samtriton serve: stopping; requests in flight may take up to {args.drain_timeout:g} s", flush=True)
    code = server.stop()
    print(f"tritonserver stopped (exit code {code})", flush=True)
    return 0
