"""The connection options every samtriton client takes, declared once.

``SamPredictor``, ``TritonSam`` and ``AsyncSamPredictor`` take the same keyword options (the
fields of ``ConnectionOptions``): each works on all of them. A name that is not a field is
refused with a ``TypeError`` naming it and the client, before anything connects.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional

from . import admin_key as keys
from .errors import InvalidInput

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.2
DEFAULT_DOWN_SECONDS = 5.0

# Passed to tritonclient's InferenceServerClient as they are (the same in .grpc and .grpc.aio).
TRITONCLIENT_OPTIONS = (
    "verbose",
    "ssl",
    "root_certificates",
    "private_key",
    "certificate_chain",
    "creds",
    "keepalive_options",
    "channel_args",
)


@dataclass
class ConnectionOptions:
    """How a client reaches its endpoints. How ``retries``, ``backoff`` and ``down_seconds`` act
    together: ``samtriton.transport``'s docstring, the one description of fail-over.

    Arguments:
      timeout: each call's deadline, seconds (retries included).
      headers: gRPC metadata sent with every call (e.g. an auth token).
      retries: how many times a call is retried when every endpoint is unreachable.
      backoff: the first pause between those retries, seconds.
      down_seconds: how long an endpoint that failed is skipped.
      shared_memory: large tensors through system shared memory with servers on this host.
      admin_key: the servers' admin key, sent only to register shared-memory regions
        (default: ``SAMTRITON_ADMIN_KEY_FILE`` / ``SAMTRITON_ADMIN_KEY`` when
        ``shared_memory`` is on; without one the wire is used, with one warning).
      verbose, ssl, root_certificates, private_key, certificate_chain, creds,
        keepalive_options, channel_args: tritonclient's ``InferenceServerClient`` arguments
        (``ssl=True`` and the three PEM paths for TLS).
    """

    timeout: float = DEFAULT_TIMEOUT_S
    headers: Optional[Dict[str, str]] = None
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF_S
    down_seconds: float = DEFAULT_DOWN_SECONDS
    shared_memory: bool = False
    admin_key: Optional[str] = None
    verbose: bool = False
    ssl: bool = False
    root_certificates: Optional[str] = None
    private_key: Optional[str] = None
    certificate_chain: Optional[str] = None
    creds: Any = None
    keepalive_options: Any = None
    channel_args: Any = None

    def __post_init__(self) -> None:
        if not self.timeout or self.timeout <= 0:
            raise InvalidInput(f"timeout: expected a positive number of seconds, got {self.timeout!r}")
        if self.retries < 0:
            raise InvalidInput(f"retries: expected 0 or more, got {self.retries!r}")
        if self.admin_key is not None:
            keys.check(self.admin_key, "admin_key")

    @classmethod
    def from_keywords(cls, owner: str, options: Mapping[str, Any]) -> "ConnectionOptions":
        """The options in ``options``; an unknown name is a ``TypeError`` naming it and ``owner``.

        Arguments:
          owner: the client the options were given to, for the error.
          options: the keyword options.
        """
        check_names(owner, options)
        return cls(**options)

    def client_arguments(self) -> Dict[str, Any]:
        """The arguments for tritonclient's ``InferenceServerClient``."""
        return {name: getattr(self, name) for name in TRITONCLIENT_OPTIONS}

    def shared_memory_key(self) -> Optional[str]:
        """The admin key that region (un)registrations carry, if any."""
        if self.admin_key is not None or not self.shared_memory:
            return self.admin_key
        return keys.from_environment()


OPTION_NAMES = frozenset(f.name for f in fields(ConnectionOptions))


def check_names(owner: str, options: Mapping[str, Any], unsupported: frozenset = frozenset()) -> None:
    """``TypeError`` naming each option in ``options`` that ``owner`` does not take.

    Arguments:
      owner: the client the options were given to, for the error.
      options: the keyword options.
      unsupported: fields of ``ConnectionOptions`` that ``owner`` refuses.
    """
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(
            f"{owner} got unknown option(s) {', '.join(map(repr, unknown))}; it takes {', '.join(sorted(OPTION_NAMES))}"
        )
    refused = sorted(set(options) & unsupported)
    if refused:
        raise TypeError(f"{owner} does not support option(s) {', '.join(map(repr, refused))}")


# The former name (positional order kept: timeout, headers, retries, backoff, down_seconds).
TransportOptions = ConnectionOptions
