"""The session model's embedding cache: files on /dev/shm, shared by the model's instances,
least recently used removed first. No Triton import, so it is tested on its own."""

import hashlib
import os
import tempfile
from collections import OrderedDict

import numpy as np


class EmbeddingCache:
    """image id -> (embedding, input_size, original_size), shared by every instance of the
    model: one file per image in a directory on /dev/shm (memory), so any instance can
    answer any client and an encode in one instance does not hold up clicks in another.
    Least recently used files are removed while the directory holds more than the budget;
    a file removed under a reader is simply an unknown id, and the client re-sends."""

    # Entries this process read or wrote last, kept in memory: a click on the same image
    # then costs one utime (which also proves the file was not evicted) instead of a 4 MiB read.
    RECENT = 4

    def __init__(self, directory, budget_bytes):
        self.directory, self.budget_bytes = directory, budget_bytes
        self.recent = OrderedDict()
        os.makedirs(directory, exist_ok=True)

    def _path(self, image_id):
        return os.path.join(self.directory, image_id + ".npz")

    def get(self, image_id):
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
        os.makedirs(self.directory, exist_ok=True)  # a reload's finalize may have removed it
        temporary = os.path.join(self.directory, f".{image_id}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, embedding=embedding, input_size=input_size, original_size=original_size)
        os.replace(temporary, self._path(image_id))  # readers never see a partial file
        self._remember(image_id, (embedding, input_size, original_size))
        self._evict()

    def _evict(self):
        entries = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".npz"):
                try:
                    info = entry.stat()
                except FileNotFoundError:
                    continue
                entries.append((info.st_mtime_ns, info.st_size, entry.path))
        used = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries)[:-1]:  # oldest first; the newest always stays
            if used <= self.budget_bytes:
                break
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            used -= size


def cache_directory(model_directory, base):
    """The cache's directory for the session model in ``model_directory`` (Triton's
    ``args["model_repository"]``): one per served deployment and export, told apart by the
    model's path and the encoder's files' times."""
    from samtriton import contract as C

    encoder_dir = os.path.join(model_directory, os.pardir, C.ENCODER.served_name(base))
    stamp = [os.path.abspath(model_directory)]
    for root, _, files in os.walk(encoder_dir):
        stamp += [f"{name}:{os.stat(os.path.join(root, name)).st_mtime_ns}" for name in sorted(files)]
    digest = hashlib.blake2b("|".join(stamp).encode(), digest_size=8).hexdigest()
    return os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),
                        f"samtriton_session_{base}_{digest}")
