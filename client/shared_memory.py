"""System shared memory for clients on the server's machine, through tritonclient's own
utilities (``tritonclient.utils.shared_memory``).

Large tensors (the 3 MiB image, the 4 MiB embedding, mask logits) are written into a
POSIX shared-memory region registered with the server instead of being serialized into the
gRPC message. Regions are created once, registered once and reused: a request checks out
regions big enough for its tensors and returns them when the response has been read.
"""

from __future__ import annotations

import inspect
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Dict, List, Optional, Tuple

import numpy as np
import tritonclient.utils.shared_memory as shm

# Tensors smaller than this go on the wire: a region round trip costs more than it saves.
MIN_SHARED_BYTES = 64 * 1024
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"}


def is_local(url: str) -> bool:
    """True when ``host:port`` names this machine (only then can the server map our regions)."""
    host = url.rsplit(":", 1)[0].strip("[]") if ":" in url else url
    if host in _LOCAL_HOSTS or host == socket.gethostname():
        return True
    try:
        return socket.gethostbyname(host).startswith("127.")
    except OSError:
        return False


@dataclass
class Region:
    """One system shared-memory region: its names, its size and tritonclient's handle."""

    name: str  # the name the server knows it by
    key: str  # the POSIX shm key
    byte_size: int
    handle: object


class SharedMemoryPool:
    """Registered system shared-memory regions of one client on one server, reused by size."""

    def __init__(self, client: Any, headers: Optional[Dict[str, str]] = None, timeout: Optional[float] = None):
        """``client``: a tritonclient.grpc InferenceServerClient; ``headers`` and ``timeout``
        (seconds) go with each (un)registration."""
        self.client, self.headers, self.timeout = client, headers, timeout
        self.prefix = f"samtriton_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._free: List[Region] = []
        self._all: List[Region] = []
        self._lock = threading.Lock()

    def take(self, byte_size: int) -> Optional[Region]:
        """A free registered region of at least ``byte_size`` bytes (the smallest), or None:
        then ``create`` one, register it with the server and ``add`` it."""
        with self._lock:
            fitting = [r for r in self._free if r.byte_size >= byte_size]
            if not fitting:
                return None
            region = min(fitting, key=lambda r: r.byte_size)
            self._free.remove(region)
            return region

    def create(self, byte_size: int) -> Region:
        """A new local region for ``byte_size`` bytes, not yet registered with the server."""
        size = 1 << max(byte_size - 1, 1).bit_length()  # power of two: regions get reused
        name = f"{self.prefix}_{uuid.uuid4().hex[:12]}"
        key = "/" + name
        return Region(name, key, size, shm.create_shared_memory_region(name, key, size))

    def registration(self, region: Region) -> Tuple[tuple, Dict[str, Any]]:
        """The arguments of ``register_system_shared_memory`` for ``region``."""
        return (region.name, region.key, region.byte_size), dict(headers=self.headers, client_timeout=self.timeout)

    def add(self, region: Region) -> None:
        """``region`` is registered: it is the pool's, in use by the caller until ``release``."""
        with self._lock:
            self._all.append(region)

    @staticmethod
    def discard(region: Region) -> None:
        """Frees a region the server refused."""
        shm.destroy_shared_memory_region(region.handle)

    def release(self, regions: List[Region]) -> None:
        """The caller is done with ``regions``: they may be checked out again."""
        with self._lock:
            self._free.extend(regions)

    @staticmethod
    def write(region: Region, array: np.ndarray) -> None:
        """Copies ``array`` into ``region``."""
        shm.set_shared_memory_region(region.handle, [np.ascontiguousarray(array)])

    @staticmethod
    def read(region: Region, dtype, shape) -> np.ndarray:
        """A copy of ``region``'s contents as an array of ``dtype`` and ``shape``."""
        return np.array(shm.get_contents_as_numpy(region.handle, np.dtype(dtype), list(shape)), copy=True)

    def close(self) -> Optional[Awaitable[None]]:
        """Unregisters and frees every region. With an asyncio client the unregistrations are
        awaitables: the regions are freed by the awaitable returned, which the caller awaits."""
        with self._lock:
            regions, self._all, self._free = self._all, [], []
        pending = []
        for region in regions:
            try:
                result = self.client.unregister_system_shared_memory(
                    region.name, headers=self.headers, client_timeout=self.timeout
                )
            except Exception:  # the server may be gone; the local region is still ours to free
                result = None
            if inspect.isawaitable(result):
                pending.append(result)
        if not pending:
            _destroy(regions)
            return None
        return _unregistered(pending, regions)


def _destroy(regions: List[Region]) -> None:
    for region in regions:
        shm.destroy_shared_memory_region(region.handle)


async def _unregistered(pending: List[Awaitable[Any]], regions: List[Region]) -> None:
    for awaitable in pending:
        try:
            await awaitable
        except Exception:  # noqa: BLE001 - the server may be gone; the local regions are still ours to free
            pass
    _destroy(regions)
