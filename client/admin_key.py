"""The admin key: what a caller shows a samtriton server to use its restricted Triton APIs.

Every server samtriton starts or ships restricts Triton's model-repository, shared-memory,
statistics, trace and logging protocols to callers that send this key
(``samtriton.server.restriction``). Inference, health, metadata and model configs stay open.
The same key goes in a different header per protocol: Triton checks gRPC metadata named
``triton-grpc-protocol-<name>`` and the plain HTTP header ``<name>``.

Where a key comes from, first match wins: an explicit value (an argument, ``--admin-key-file``),
then the file named by ``SAMTRITON_ADMIN_KEY_FILE`` (a mounted Secret), then the value of
``SAMTRITON_ADMIN_KEY``.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Dict, Mapping, Optional

from .errors import InvalidInput

ADMIN_KEY_NAME = "samtriton-admin-key"
ADMIN_KEY_GRPC_HEADER = "triton-grpc-protocol-" + ADMIN_KEY_NAME
ADMIN_KEY_HTTP_HEADER = ADMIN_KEY_NAME
ADMIN_KEY_ENV = "SAMTRITON_ADMIN_KEY"
ADMIN_KEY_FILE_ENV = "SAMTRITON_ADMIN_KEY_FILE"
# Triton parses "<protocols>:<name>=<value>": the value may hold none of ":", "=", ",", nor
# whitespace (a header value). 16 characters at least: a guessable key locks nothing.
_FORM = re.compile(r"[A-Za-z0-9._~+/-]{16,512}")
FORM = "16 to 512 characters from A-Z a-z 0-9 . _ ~ + / -"


def check(key: str, setting: str) -> str:
    """``key`` if it has the admin key's form, else ``InvalidInput`` naming ``setting`` and the form.

    Arguments:
      key: the key.
      setting: where the key came from (an option or variable name), for the error.
    """
    if not isinstance(key, str) or not _FORM.fullmatch(key):
        length = len(key) if isinstance(key, str) else type(key).__name__
        raise InvalidInput(f"{setting}: the admin key must be {FORM} (got {length} characters)")
    return key


def generate() -> str:
    """A fresh random key (256 bits, URL-safe base64)."""
    return secrets.token_urlsafe(32)


def read_file(path: "str | os.PathLike[str]", setting: str) -> str:
    """The key stored in a file (surrounding whitespace, such as a final newline, dropped).

    Arguments:
      path: the file.
      setting: where the path came from, for the error.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidInput(f"{setting}: cannot read the admin key file {path}: {exc.strerror or exc}") from None
    return check(text.strip(), f"{setting} ({path})")


def from_environment(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The key named by ``SAMTRITON_ADMIN_KEY_FILE`` or held in ``SAMTRITON_ADMIN_KEY`` (None
    when neither is set).

    Arguments:
      environ: the environment to read (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    if environ.get(ADMIN_KEY_FILE_ENV):
        return read_file(environ[ADMIN_KEY_FILE_ENV], ADMIN_KEY_FILE_ENV)
    if environ.get(ADMIN_KEY_ENV):
        return check(environ[ADMIN_KEY_ENV], ADMIN_KEY_ENV)
    return None


def given(path: "str | os.PathLike[str] | None", setting: str) -> Optional[str]:
    """The key in the file ``path`` (a command's ``setting``, such as ``--admin-key-file``)
    when one is named, else ``from_environment()``.

    Arguments:
      path: the key file the caller named, or None.
      setting: how the caller names it, for errors.
    """
    return read_file(path, setting) if path else from_environment()


def grpc_headers(key: Optional[str]) -> Dict[str, str]:
    """The gRPC metadata that carries ``key`` (empty for None)."""
    return {} if key is None else {ADMIN_KEY_GRPC_HEADER: key}


def http_headers(key: Optional[str]) -> Dict[str, str]:
    """The HTTP headers that carry ``key`` (empty for None)."""
    return {} if key is None else {ADMIN_KEY_HTTP_HEADER: key}
