"""Which of Triton's APIs need the admin key, and the flags that say so.

Triton's own mechanism (``--grpc-restricted-protocol`` / ``--http-restricted-api``) refuses a
restricted protocol's calls that lack a header with the key: gRPC answers UNAVAILABLE, HTTP
403, and the request never reaches a model. Restricted:

- ``model-repository``: load (with uploaded files: code that runs in the server), unload,
  index. Only the operator changes what a replica serves.
- ``shared-memory``: registering a region maps memory the server can open (another client's,
  the python backend's); same-host clients that hold the key use it, the others the wire.
- ``logging``: can point the server's log at any file it can write.
- ``trace``: can start tracing to a file, and records other clients' requests.
- ``statistics``: other tenants' request counts and timings (Prometheus metrics on their own
  port are the operator's view).

Open: ``inference``, ``health`` (probes), ``metadata``, and ``model-config``, which is read-only
and which clients read for the contract version.

``python -m samtriton.server.restriction ARGS...`` is the containers' entrypoint: it runs
``tritonserver ARGS...`` with these flags added, the key read from ``SAMTRITON_ADMIN_KEY_FILE``
or ``SAMTRITON_ADMIN_KEY``, and refuses to start without one.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import List, Optional, Sequence

from samtriton import admin_key
from samtriton.errors import InvalidInput

RESTRICTED_PROTOCOLS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
OPEN_PROTOCOLS = ("inference", "health", "metadata", "model-config")
RESTRICTION_FLAGS = ("--grpc-restricted-protocol", "--http-restricted-api")
TRITONSERVER = "tritonserver"


def restriction_args(key: str) -> List[str]:
    """tritonserver's flags restricting ``RESTRICTED_PROTOCOLS`` (gRPC and HTTP) to ``key``."""
    admin_key.check(key, "admin key")
    value = f"{','.join(RESTRICTED_PROTOCOLS)}:{admin_key.ADMIN_KEY_NAME}={key}"
    return [f"{flag}={value}" for flag in RESTRICTION_FLAGS]


def entrypoint_command(args: Sequence[str], environ: Optional[dict] = None) -> List[str]:
    """The tritonserver command the container runs for ``args`` (its CMD, or Kubernetes'
    ``args``): the restriction added, the key from the environment. ``InvalidInput`` naming
    the settings when there is no key or it is malformed."""
    environ = os.environ if environ is None else environ
    key = admin_key.from_environment(environ)
    if key is None:
        raise InvalidInput(
            f"no admin key: set {admin_key.ADMIN_KEY_FILE_ENV} (the path of a mounted Secret file) or "
            f"{admin_key.ADMIN_KEY_ENV}; tritonserver is not started without it, since its model-repository "
            f"API would run any caller's code"
        )
    overridden = [a for a in args if a.split("=", 1)[0] in RESTRICTION_FLAGS]
    if overridden:
        raise InvalidInput(f"{overridden[0].split('=', 1)[0]} is set by the entrypoint; leave it out of the arguments")
    binary = shutil.which(TRITONSERVER, path=environ.get("PATH")) or TRITONSERVER
    return [binary, *args, *restriction_args(key)]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Replace this process with the restricted tritonserver (exit 2 and a message without a key)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        command = entrypoint_command(args)
    except InvalidInput as exc:
        print(f"samtriton entrypoint: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # The models' processes inherit tritonserver's environment: the key stays out of it.
    environ = {k: v for k, v in os.environ.items() if k != admin_key.ADMIN_KEY_ENV}
    os.execvpe(command[0], command, environ)


if __name__ == "__main__":
    main()
