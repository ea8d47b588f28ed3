"""Who may use the annotation app: anyone on this machine when it listens on loopback only;
beyond loopback, only callers that show its access token.

The token goes in HTTP Basic auth (any user name, the token as password: what a browser asks
for by itself, and what Label Studio's ML backend settings send) or as ``Authorization:
Bearer <token>``. Everything else gets 401 before any route runs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import os
import secrets
from typing import Optional

TOKEN_ENV = "SAMTRITON_ANNOTATE_TOKEN"
REALM = "samtriton annotate"


def is_loopback(host: str) -> bool:
    """True when binding ``host`` reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: it may resolve to any interface
        return False


def access_token(host: str, token_file: Optional[str] = None) -> "tuple[Optional[str], str]":
    """(token, where it came from) for an app bound to ``host``: ``token_file``, else
    ``$SAMTRITON_ANNOTATE_TOKEN``, else a new one when ``host`` is beyond loopback; (None,
    "") on loopback without one. ``ValueError`` naming the setting for an unusable token."""
    if token_file:
        try:
            token = open(token_file).read().strip()
        except OSError as exc:
            raise ValueError(f"--token-file: cannot read {token_file}: {exc.strerror or exc}") from None
        origin = f"--token-file {token_file}"
    elif os.environ.get(TOKEN_ENV):
        token, origin = os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    elif is_loopback(host):
        return None, ""
    else:
        return secrets.token_urlsafe(24), "generated for this start"
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ValueError(f"{origin}: the access token must be at least 16 characters without spaces")
    return token, origin


def _presented(authorization: str) -> Optional[str]:
    """The token an ``Authorization`` header carries (Basic password or Bearer), or None."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


class TokenGate:
    """ASGI middleware: HTTP requests without ``token`` get 401 (with a Basic challenge, so a
    browser asks for it)."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        presented = _presented(headers.get(b"authorization", b"").decode("latin-1"))
        if presented is not None and hmac.compare_digest(presented.encode(), self.token):
            return await self.app(scope, receive, send)
        body = json.dumps(
            {"error": "authorization: this app needs its access token (HTTP Basic password, or Bearer)"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", f'Basic realm="{REALM}"'.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
