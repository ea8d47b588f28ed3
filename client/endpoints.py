"""Endpoints: the URLs a client is given (or a name resolves to), their ranking for each
request, and what the client knows of their health.

A request that names an image id goes to the endpoint that ranks first for that id under
rendezvous (highest random weight) hashing over the endpoints that are up, so a session's
clicks land where its embedding is; adding or removing one of N endpoints moves only the
images that ranked it first. Other requests rotate over the endpoints that are up.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from typing import List, Optional, Sequence, Union

from .errors import InvalidInput, ServerUnavailable
from .options import DEFAULT_DOWN_SECONDS

logger = logging.getLogger("samtriton")


def parse_urls(url: Union[str, Sequence[str]]) -> List[str]:
    """The endpoints in ``url`` ("host:port", comma-separated, or a list), each once."""
    urls = [u.strip() for u in (url.split(",") if isinstance(url, str) else url) if u and u.strip()]
    if not urls:
        raise InvalidInput(f"url: expected 'host:port' or a list of them, got {url!r}")
    if len(set(urls)) != len(urls):
        raise InvalidInput(f"url: each endpoint once, got {urls}")
    return urls


def endpoints_from_dns(host_port: str) -> List[str]:
    """Every address a name resolves to, as "ip:port" endpoints: a Kubernetes headless
    Service names each ready replica this way (resolve again to follow scaling)."""
    import socket

    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInput(f"host_port: expected 'name:port', got {host_port!r}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServerUnavailable(f"{host_port}: cannot resolve {host!r} ({exc})") from None
    addresses = []
    for family, _, _, _, address in infos:
        endpoint = f"[{address[0]}]:{port}" if family == socket.AF_INET6 else f"{address[0]}:{port}"
        if endpoint not in addresses:
            addresses.append(endpoint)
    return addresses


def rendezvous_order(key: str, urls: Sequence[str]) -> List[str]:
    """``urls`` ranked for ``key`` by highest random weight: a stable order per key that
    changes only where an endpoint is added or removed."""

    def weight(url: str) -> bytes:
        return hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest()

    return sorted(urls, key=weight, reverse=True)


class Endpoints:
    """The endpoints of one client and what it knows of their health."""

    def __init__(self, urls: Sequence[str], down_seconds: float = DEFAULT_DOWN_SECONDS):
        self.urls = list(urls)
        self.down_seconds = down_seconds
        self.failures: List[tuple] = []  # (url, reason), oldest first
        self._down_until = {u: 0.0 for u in self.urls}
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def order(self, image_id: Optional[str] = None) -> List[str]:
        """Where to try a request, first choice first: the image's rendezvous ranking, or a
        rotation for requests without an image; endpoints that are up before those marked down."""
        if image_id is not None:
            ranked = rendezvous_order(image_id, self.urls)
        else:
            with self._lock:
                start = next(self._turn) % len(self.urls)
            ranked = self.urls[start:] + self.urls[:start]
        now = time.monotonic()
        return sorted(ranked, key=lambda u: self._down_until[u] > now)  # stable: the ranking is kept

    def mark_down(self, url: str, error: Exception) -> None:
        """``url`` failed with ``error``: skip it for ``down_seconds`` and keep the failure."""
        with self._lock:
            self._down_until[url] = time.monotonic() + self.down_seconds
            self.failures.append((url, str(error)))
        if len(self.urls) > 1:
            logger.warning("samtriton: endpoint %s failed (%s); trying another endpoint", url, error)
