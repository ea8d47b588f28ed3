"""Each endpoint's tritonclient, and when an old one may be closed."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, List, Optional, Sequence

from .shared_memory import SharedMemoryPool

# A tritonclient.grpc (or .aio) InferenceServerClient; tritonclient has no type information.
TritonClient = Any


class Channels:
    """Each endpoint's current client. ``renew`` gives an endpoint a fresh one (a channel that
    saw its server die waits out gRPC's reconnect backoff; a new one connects as soon as the
    server is back); the old one is closed when the last request using it has returned,
    never under a request in flight.

    Arguments:
      urls: the endpoints.
      make_client: a new client for a url.
      close_client: closes a client; may return an awaitable (asyncio), kept in ``closing``.
    """

    def __init__(
        self,
        urls: Sequence[str],
        make_client: Callable[[str], TritonClient],
        close_client: Callable[[TritonClient], Optional[Awaitable[Any]]],
    ):
        self._make, self._close = make_client, close_client
        self._current = {u: _Channel(make_client(u)) for u in urls}
        self._lock = threading.Lock()
        self.closing: List[Awaitable[Any]] = []  # what close_client returned (awaitables to await)

    def acquire(self, url: str) -> "_Channel":
        """The endpoint's current channel, counted in use until ``release``."""
        with self._lock:
            channel = self._current[url]
            channel.users += 1
            return channel

    def release(self, channel: "_Channel") -> None:
        """``channel`` is no longer used by the caller; a retired one closes with its last user."""
        with self._lock:
            channel.users -= 1
            done = channel.retired and channel.users == 0
        if done:
            self._finish(channel)

    def current(self, url: str) -> "_Channel":
        """The endpoint's current channel (not counted in use)."""
        return self._current[url]

    def renew(self, url: str, seen: "_Channel") -> None:
        """Replace ``seen`` (the channel a failed request used) unless another thread already did."""
        with self._lock:
            if self._current[url] is not seen:
                return
            self._current[url] = _Channel(self._make(url))
            seen.retired = True
            done = seen.users == 0
        if done:
            self._finish(seen)

    def close(self) -> None:
        """Closes every channel (with an asyncio client, await ``closing`` afterwards)."""
        with self._lock:
            channels, self._current = list(self._current.values()), {}
        for channel in channels:
            channel.retired = True
            self._finish(channel)

    def _finish(self, channel: "_Channel") -> None:
        if channel.closed:
            return
        channel.closed = True
        # An asyncio client's unregistrations are awaited before its channel closes (in order).
        pending = channel.pool.close() if channel.pool is not None else None
        if pending is not None:
            self.closing.append(pending)
        result = self._close(channel.client)
        if result is not None:
            self.closing.append(result)


@dataclass(eq=False)
class _Channel:
    client: TritonClient
    users: int = 0
    retired: bool = False
    closed: bool = False
    pool: Optional[SharedMemoryPool] = None  # system shared memory with this server, if used
    pool_checked: bool = False
