"""The session model's embedding cache on its own (no Triton): private directories, holders
that keep a directory alive, orphans swept, failed writes cleaned up, single flight."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from samtriton import contract as C
from samtriton.server import embedding_cache as ec

# `pytest -m unit`: no server is started and nothing is exported here.
pytestmark = pytest.mark.unit

EMBEDDING = np.zeros(C.DECODER_IMAGE_EMBEDDINGS.dims, np.float32)
SIZES = np.array([1024, 683]), np.array([600, 900])

HOLD = """
import sys, time
from samtriton.server.embedding_cache import EmbeddingCache

cache = EmbeddingCache(sys.argv[1], 2**30)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(directory, seconds=60.0):
    """Another process (another server) using ``directory``."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_directory_is_created_private(tmp_path):
    cache = ec.EmbeddingCache(str(tmp_path / "cache"), 2**30)
    info = os.stat(cache.directory)
    assert info.st_mode & 0o777 == 0o700 and info.st_uid == os.geteuid()
    cache.close()


@pytest.mark.parametrize("kind", ["open to others", "symlink", "file"])
def test_unsafe_directories_are_refused(tmp_path, kind):
    path = tmp_path / "cache"
    if kind == "open to others":
        path.mkdir(mode=0o755)
        os.chmod(path, 0o755)
    elif kind == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.write_text("x")
    with pytest.raises(ec.CacheDirectoryError, match="session cache directory"):
        ec.EmbeddingCache(str(path), 2**30)


def test_closing_keeps_a_directory_another_server_uses(tmp_path):
    directory = tmp_path / "shared"
    other = _holder(directory)
    try:
        cache = ec.EmbeddingCache(str(directory), 2**30)
        cache.put("a" * 32, EMBEDDING, *SIZES)
        cache.close()  # this model unloads; the other server still uses the directory
        assert (directory / ("a" * 32 + ".npz")).exists()
    finally:
        other.terminate()
        other.wait()
    last = ec.EmbeddingCache(str(directory), 2**30)
    last.close()  # the last user leaves: the directory goes
    assert not directory.exists()


def test_directories_of_dead_servers_are_swept(tmp_path):
    dead, alive = tmp_path / f"{ec.DIRECTORY_PREFIX}dead", tmp_path / f"{ec.DIRECTORY_PREFIX}alive"
    killed = _holder(dead)
    killed.kill()  # kill -9: no finalize ran
    killed.wait()
    living = _holder(alive)
    try:
        assert dead.exists()
        removed = ec.sweep_orphans(str(tmp_path))
        assert removed == [str(dead)]
        assert alive.exists(), "a directory a live server holds is never swept"
    finally:
        living.terminate()
        living.wait()


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    cache = ec.EmbeddingCache(str(tmp_path / "cache"), 2**30)

    def disk_full(handle, **arrays):  # what a full /dev/shm does halfway through a write
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space"):
        cache.put("b" * 32, EMBEDDING, *SIZES)
    assert sorted(os.listdir(cache.directory)) == [ec.HOLDERS_FILE]
    assert cache.get("b" * 32) is None


def test_an_entry_just_written_is_returned_even_if_evicted_at_once(tmp_path):
    first = ec.EmbeddingCache(str(tmp_path / "cache"), budget_bytes=EMBEDDING.nbytes)  # room for one
    second = ec.EmbeddingCache(str(tmp_path / "cache"), budget_bytes=EMBEDDING.nbytes)  # another instance
    entry = first.put("c" * 32, EMBEDDING + 1, *SIZES)
    second.put("d" * 32, EMBEDDING + 2, *SIZES)  # evicts c: the newest always stays
    assert first.get("c" * 32) is None
    assert entry[0][0, 0, 0, 0] == 1, "the writer keeps what it wrote"


def test_single_flight_waits_for_the_running_encode(tmp_path, monkeypatch):
    """A second instance asking for an image being encoded waits until the first is done.
    The waiter is seen blocked on the real lock (a refused non-blocking flock) before the
    first lets go, so the order below cannot come from a waiter that had not started."""
    cache = ec.EmbeddingCache(str(tmp_path / "cache"), 2**30)
    other = ec.EmbeddingCache(str(tmp_path / "cache"), 2**30)
    refused = threading.Event()
    real_flock = ec.fcntl.flock

    def observed_flock(fd, operation):
        try:
            return real_flock(fd, operation)
        except BlockingIOError:
            refused.set()
            raise

    monkeypatch.setattr(ec.fcntl, "flock", observed_flock)
    order = []

    def second():
        with other.flight("e" * 32):
            order.append("second")

    with cache.flight("e" * 32):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert refused.wait(timeout=30), "the second request never tried the lock"
        time.sleep(0.2)  # it keeps waiting (polling every 5 ms) while the first holds it
        assert order == []
        order.append("first done")
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert order == ["first done", "second"]
