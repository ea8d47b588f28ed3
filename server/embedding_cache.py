"""The session model's embedding cache: files in a private directory (on /dev/shm by
default), shared by the model's instances, least recently used removed first. No Triton
import, so it is tested on its own.

One directory per served deployment: by default it is named after the server process, so
two servers never share one unless they are given the same directory
(``samtriton serve --session-cache-dir``). Each instance using a directory holds a shared
``flock`` on its ``.holders`` file for as long as it runs; the kernel drops it when the
process dies, so a directory whose lock can be taken exclusively is unused: an unloading
model removes its directory only then, and a starting one sweeps such directories left by
servers that died.

Metrics (``metrics.CacheMetrics``): a lookup outside an encode's single flight is a hit or a
miss; a lookup inside it that finds the entry (another request encoded it meanwhile) is a
flight wait; every stored entry is an encode; removed entries are evictions; every scan
of the directory sets the cache's bytes.
"""

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
import zlib
from collections import OrderedDict

import numpy as np

from samtriton.server.metrics import CacheMetrics

logger = logging.getLogger("samtriton")

DIRECTORY_PREFIX = "samtriton_session_"
HOLDERS_FILE = ".holders"
# Single flight: an encode holds the lock of its stripe, so N requests for the same new
# image (from any instance) encode it once and the others read the result.
FLIGHT_STRIPES = 256
FLIGHT_WAIT_S = 120.0


class CacheDirectoryError(RuntimeError):
    """The configured directory cannot hold the cache safely (not private, not ours)."""


class EmbeddingCache:
    """image id -> (embedding, input_size, original_size), shared by every instance of the
    model: one file per image, so any instance can answer any client and an encode in one
    instance does not hold up clicks in another. Least recently used files are removed while
    the directory holds more than the budget; a file removed under a reader is simply an
    unknown id, and the client re-sends."""

    # Entries this process read or wrote last, kept in memory: a click on the same image
    # then costs one utime (which also proves the file was not evicted) instead of a 4 MiB read.
    RECENT = 4

    def __init__(self, directory, budget_bytes, metrics=None):
        """``metrics``: a ``CacheMetrics`` to report to (default: one that counts in memory)."""
        self.directory, self.budget_bytes = os.path.abspath(directory), budget_bytes
        self.recent = OrderedDict()
        self.metrics = metrics if metrics is not None else CacheMetrics(None)
        self._flying = None  # the image id this instance is encoding under its flight lock
        self._holder = hold_directory(self.directory)
        self.metrics.set_bytes(sum(size for _, size, _ in self._entries()))

    def _path(self, image_id):
        return os.path.join(self.directory, image_id + ".npz")

    def get(self, image_id):
        """The entry of ``image_id``, or None."""
        entry = self._read(image_id)
        if image_id == self._flying:
            if entry is not None:  # another request encoded it while this one waited
                self.metrics.flight_wait()
        elif entry is not None:
            self.metrics.hit()
        else:
            self.metrics.miss()
        return entry

    def _read(self, image_id):
        path = self._path(image_id)
        try:
            os.utime(path)  # recently used; raises if evicted
            entry = self.recent.get(image_id)
            if entry is None:
                with np.load(path) as stored:
                    entry = stored["embedding"], stored["input_size"], stored["original_size"]
            self._remember(image_id, entry)
            return entry
        except (FileNotFoundError, ValueError, OSError, KeyError):
            self.recent.pop(image_id, None)
            return None

    def _remember(self, image_id, entry):
        self.recent[image_id] = entry
        self.recent.move_to_end(image_id)
        while len(self.recent) > self.RECENT:
            self.recent.popitem(last=False)

    def put(self, image_id, embedding, input_size, original_size):
        """Stores the entry and returns it: the caller uses what it wrote, even if another
        instance evicts the file a moment later."""
        entry = (embedding, input_size, original_size)
        temporary = os.path.join(self.directory, f".{image_id}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                np.savez(handle, embedding=embedding, input_size=input_size, original_size=original_size)
            os.replace(temporary, self._path(image_id))  # readers never see a partial file
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            raise
        self.metrics.encoded()
        self._remember(image_id, entry)
        self._evict()
        return entry

    @contextlib.contextmanager
    def flight(self, image_id):
        """Held while ``image_id`` is being encoded: a second request for it (in any instance)
        waits here, then finds the entry. Gives up waiting after FLIGHT_WAIT_S."""
        stripe = zlib.crc32(image_id.encode()) % FLIGHT_STRIPES
        fd = os.open(os.path.join(self.directory, f".flight.{stripe}"), os.O_RDWR | os.O_CREAT, 0o600)
        self._flying = image_id
        try:
            deadline = time.monotonic() + FLIGHT_WAIT_S
            locked = False
            while not locked:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        logger.warning(
                            "samtriton: waited %.0f s for another encode of %s; encoding it here",
                            FLIGHT_WAIT_S,
                            image_id,
                        )
                        break
                    time.sleep(0.005)
            yield
        finally:
            self._flying = None
            os.close(fd)  # releases the lock

    def _entries(self):
        """(mtime_ns, size, path) of every stored entry."""
        entries = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".npz"):
                try:
                    info = entry.stat()
                except FileNotFoundError:
                    continue
                entries.append((info.st_mtime_ns, info.st_size, entry.path))
        return entries

    def _evict(self):
        entries = self._entries()
        used = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries)[:-1]:  # oldest first; the newest always stays
            if used <= self.budget_bytes:
                break
            try:
                os.remove(path)
                removed += 1
            except FileNotFoundError:
                pass
            used -= size
        self.metrics.evicted(removed)
        self.metrics.set_bytes(used)

    def close(self):
        """Stops using the directory; removes it when no other live process uses it."""
        holder, self._holder = self._holder, None
        if holder is not None:
            release_directory(self.directory, holder)


def private_directory(path):
    """Creates ``path`` (mode 0700), or checks that an existing one is a real directory owned
    by this user and closed to others. Raises CacheDirectoryError otherwise."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CacheDirectoryError(f"session cache directory {path}: cannot create it ({exc})") from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise CacheDirectoryError(
            f"session cache directory {path}: exists and is not a directory (a link or a "
            "file); remove it or choose another directory"
        )
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise CacheDirectoryError(
            f"session cache directory {path}: expected a directory owned by uid {os.geteuid()} with mode 0700, "
            f"found owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}; another user could read or "
            "replace the embeddings: remove it or choose another directory"
        )


def hold_directory(path):
    """Makes ``path`` a private cache directory held by this process: a shared lock on its
    holders file, kept until ``release_directory`` (or the process's death). Returns the fd."""
    for _ in range(100):
        private_directory(path)
        fd = os.open(os.path.join(path, HOLDERS_FILE), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            same = os.fstat(fd).st_ino == os.stat(os.path.join(path, HOLDERS_FILE)).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the directory was swept between our open and our lock: make it anew
    raise CacheDirectoryError(f"session cache directory {path}: removed repeatedly while starting")


def release_directory(path, fd):
    """Drops this process's hold; removes the directory if nobody else holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # only when no other holder is alive
    except BlockingIOError:
        os.close(fd)
        return
    shutil.rmtree(path, ignore_errors=True)
    os.close(fd)


def sweep_orphans(root, keep=()):
    """Removes cache directories under ``root`` that no live process holds (left by servers
    that died). Only this user's directories with a holders file are considered."""
    removed = []
    try:
        candidates = [e for e in os.scandir(root) if e.name.startswith(DIRECTORY_PREFIX)]
    except OSError:
        return removed
    for entry in candidates:
        if entry.path in keep:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.geteuid():
                continue
            fd = os.open(os.path.join(entry.path, HOLDERS_FILE), os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live server uses it
            os.close(fd)
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        os.close(fd)
        removed.append(entry.path)
    return removed


def default_root():
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def cache_directory(model_directory, base, server_pid=None):
    """The default cache directory of the session model in ``model_directory`` (Triton's
    ``args["model_repository"]``) served by the tritonserver process ``server_pid`` (the
    python stub's parent): one per server, deployment and export, so two servers never share
    one by accident, even when they serve the same repository on one host."""
    from samtriton import contract as C

    server_pid = os.getppid() if server_pid is None else server_pid
    encoder_dir = os.path.join(model_directory, os.pardir, C.ENCODER.served_name(base))
    stamp = [os.path.abspath(model_directory), str(server_pid)]
    for root, _, files in os.walk(encoder_dir):
        stamp += [f"{name}:{os.stat(os.path.join(root, name)).st_mtime_ns}" for name in sorted(files)]
    digest = hashlib.blake2b("|".join(stamp).encode(), digest_size=8).hexdigest()
    return os.path.join(default_root(), f"{DIRECTORY_PREFIX}{base}_{server_pid}_{digest}")
