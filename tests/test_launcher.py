"""The launcher and its server live and die together, and a stopping server drains.

- A child started with ``popen_tied`` dies with the process that started it, not with the
  thread (a pool's worker) that asked for it.
- A python-backend stub dies when its tritonserver is gone, even one stuck holding the GIL (the
  kernel's doing: the launcher's lifeline pipe).
- SIGKILL of ``samtriton serve``: nothing of its server is left running after 5 s and a new
  ``samtriton serve`` on the same ports is ready; what the killed one left behind (its stubs'
  shared memory, its session cache directory) is removed by the new one.
- ``drain``: requests in flight (executing or queued) finish, new ones are refused as
  "not ready" (the client's ServerUnavailable, so it fails over), readiness is false meanwhile.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from samtriton import SamPredictor, ServerUnavailable
from samtriton.server.embedding_cache import DIRECTORY_PREFIX
from samtriton.server.launcher import SHM_PREFIX, EmbeddedTriton, free_port, popen_tied

from helpers import serve_command

GONE_WITHIN_S = 5.0


def _stat(pid):
    """(state letter, start time) of a process, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return fields[0], int(fields[19])
    except (FileNotFoundError, ProcessLookupError):
        return None


def _state(pid):
    stat = _stat(pid)
    return None if stat is None else stat[0]


def _running(processes):
    """Of {pid: start time}, the pids that still run: a zombie has ended and only waits for
    its reaper; a pid with another start time is another process."""
    running = []
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z" and stat[1] == started:
            running.append(pid)
    return running


def _identities(pids):
    return {pid: _stat(pid)[1] for pid in pids if _stat(pid) is not None}


def _wait_gone(processes, seconds=GONE_WITHIN_S):
    deadline = time.monotonic() + seconds
    while _running(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _running(processes)


def _describe(pids):
    described = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
        except OSError:
            command = "?"
        described.append(f"{pid} ({_state(pid)}): {command}")
    return described


def _processes():
    """{pid: (ppid, pgid)} of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
                table[int(entry)] = (int(fields[1]), int(fields[2]))
            except (OSError, IndexError):
                pass
    return table


TIED_CHILD = """
import sys
from samtriton.server.launcher import popen_tied
child = popen_tied(["sleep", "120"])
print(child.pid, flush=True)
sys.stdin.read()
"""


def test_a_tied_child_outlives_the_thread_that_asked_but_not_the_process():
    holder = {}
    asker = threading.Thread(target=lambda: holder.setdefault("child", popen_tied(["sleep", "120"])))
    asker.start()
    asker.join()
    time.sleep(0.5)  # PR_SET_PDEATHSIG would fire at once if it followed the asking thread
    child = holder["child"]
    try:
        assert child.poll() is None, "the child died with the short-lived thread that started it"
    finally:
        child.kill()
        child.wait()

    parent = subprocess.Popen(
        [sys.executable, "-c", TIED_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    grandchild = int(parent.stdout.readline())
    watched = _identities([grandchild])
    try:
        assert _running(watched) == [grandchild]
        parent.kill()
        parent.wait()
        assert _wait_gone(watched, 2.0) == [], "the child outlived the process that started it"
    finally:
        for pid in _running(watched):
            os.kill(pid, signal.SIGKILL)


STUB_STANDIN = """
import ctypes
from samtriton.server.lifecycle import exit_with_server
print("held" if exit_with_server() else "none", flush=True)
ctypes.PyDLL(None).pause()  # blocks holding the GIL, as a stub waiting for its dead server's reply
"""
SERVER_STANDIN = """
import os, subprocess, sys
fds = [int(fd) for fd in os.environ["SAMTRITON_SERVER_LIFELINE"].split(",")]
stub = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True, pass_fds=fds)
print(stub.stdout.readline().strip(), stub.pid, flush=True)
sys.stdin.read()
"""


def test_a_stub_stuck_holding_the_gil_dies_with_its_server():
    """A stand-in for tritonserver (its own process group, as EmbeddedTriton starts it, with
    the launcher's lifeline) starts a stub that runs our hook, then blocks holding the GIL.
    The server is SIGKILLed: the kernel kills the stub."""
    from samtriton.server.lifecycle import LIFELINE_ENV

    pipe = os.pipe()
    env = dict(os.environ, **{LIFELINE_ENV: ",".join(map(str, pipe))})
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_STANDIN, STUB_STANDIN],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        pass_fds=pipe,
    )
    for fd in pipe:
        os.close(fd)  # as EmbeddedTriton does: only the server keeps the write end
    held, stub = server.stdout.readline().split()
    assert held == "held"
    watched = _identities([int(stub)])
    try:
        time.sleep(0.3)
        assert _running(watched) == [int(stub)], "the stub lives while its server does"
        server.kill()
        server.wait()
        assert _wait_gone(watched, 2.0) == [], "the stub kept running after its server died"
    finally:
        for pid in _running(watched):
            os.kill(pid, signal.SIGKILL)


def test_a_lifeline_that_is_not_one_pipe_is_left_alone():
    from samtriton.server.lifecycle import hold_lifeline

    first, second = os.pipe(), os.pipe()
    try:
        for value in ("", "x,y", f"{first[0]},{second[1]}", f"{first[0]},999"):
            assert hold_lifeline(value) is False
        os.fstat(second[1])  # not closed: it was not the pair's write end
    finally:
        for fd in first + second:
            os.close(fd)


def _serve(repository, ports):
    command = serve_command(repository, ports[0], ports[1], ports[2], "--startup-timeout", "180")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert f"127.0.0.1:{ports[0]}" in line, line + (process.stderr.read() if process.poll() is not None else "")
    return process


def test_sigkill_of_serve_leaves_no_server_and_the_ports_serve_again(repository, images):
    ports = [free_port(), free_port(), free_port()]
    launcher = _serve(repository, ports)
    replacement = None
    try:
        with SamPredictor(f"127.0.0.1:{ports[0]}", model="mobilesam") as predictor:
            predictor.set_image(images["chelsea"])  # the session cache directory holds an embedding
        table = _processes()
        server = next(pid for pid, (ppid, _) in table.items() if ppid == launcher.pid)
        group = _identities(pid for pid, (_, pgid) in table.items() if pgid == server)
        stubs = [pid for pid in group if pid != server]
        assert len(stubs) >= 4, f"tritonserver and its stubs share its process group: {group}"
        for stub in stubs:  # glibc's fixed mmap threshold (launcher.MALLOC_ENVIRONMENT) reaches the stubs
            environ = Path(f"/proc/{stub}/environ").read_bytes().split(b"\0")
            assert b"MALLOC_MMAP_THRESHOLD_=1048576" in environ, stub
        shm = [p.name for p in Path("/dev/shm").glob(f"{SHM_PREFIX}{launcher.pid}_*")]
        cache = [p for p in Path("/dev/shm").glob(f"{DIRECTORY_PREFIX}mobilesam_{server}_*")]
        assert shm and cache, "the launcher's stubs' shared memory and its session cache directory exist"

        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        killed_at = time.monotonic()
        left = _wait_gone(group)
        assert left == [], f"still running {GONE_WITHIN_S:.0f} s after the launcher's SIGKILL: {_describe(left)}"
        print(f"\nserver and {len(stubs)} stubs gone {time.monotonic() - killed_at:.2f} s after the launcher's SIGKILL")

        replacement = _serve(repository, ports)  # same ports: nothing holds them
        with SamPredictor(f"127.0.0.1:{ports[0]}", model="mobilesam", retries=0) as predictor:
            predictor.set_image(images["coins_gray"])
            masks, _, _ = predictor.predict(point_coords=np.array([[100.0, 100.0]]), point_labels=np.array([1]))
            assert masks.shape[0] == 3
        assert not [n for n in shm if (Path("/dev/shm") / n).exists()], "the killed launcher's shared memory is swept"
        assert not [c for c in cache if c.exists()], "the killed server's session cache directory is swept"
    finally:
        for process in (launcher, replacement):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)


def _distinct_images(images, count):
    """``count`` new images (shifted copies of a photograph) whose encodes take distinct
    single-flight lock files, so each one executing shows as its own file."""
    from samtriton import contract as C
    from samtriton.server.embedding_cache import FLIGHT_STRIPES
    from samtriton.transforms import preprocess

    chosen, stripes, shift = [], set(), 0
    while len(chosen) < count:
        shift += 7
        image = np.roll(images["astronaut"], shift, axis=1)
        padded, input_size = preprocess(image)
        image_id = C.image_id_for(padded, input_size, image.shape[:2])
        stripe = zlib.crc32(image_id.encode()) % FLIGHT_STRIPES
        if stripe not in stripes:
            stripes.add(stripe)
            chosen.append(image)
    return chosen


def test_drain_finishes_requests_in_flight_and_refuses_new_ones(repository, images, tmp_path):
    """``samtriton drain`` (the Kubernetes preStop hook; ``stop()`` runs the same function)
    on a server with requests executing and queued: they finish, new ones are refused."""
    cache_dir = tmp_path / "cache"
    server = EmbeddedTriton.on_free_ports(repository, session_cache_dir=cache_dir, drain_timeout=120).start()
    try:
        # Three encodes at once: two session instances execute, the third waits in Triton's queue.
        results, ready_during = [], []

        def encode(image):
            try:
                with SamPredictor(server.grpc_url, model="mobilesam", retries=0, timeout=120) as predictor:
                    predictor.set_image(image)
                    results.append("ok")
            except Exception as exc:  # noqa: BLE001 - reported below
                results.append(repr(exc))

        workers = [threading.Thread(target=encode, args=(image,)) for image in _distinct_images(images, 3)]
        for worker in workers:
            worker.start()

        def executing_and_queued():  # each executing encode holds a flight lock file
            return (
                len(list(cache_dir.glob(".flight.*"))) >= 2
                and server.metric("nv_inference_pending_request_count", model="mobilesam_session") >= 1
            )

        deadline = time.monotonic() + 60
        while not executing_and_queued() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert executing_and_queued() and not results, "two encodes execute, one waits in the queue"

        drained = []
        drain = [sys.executable, "-m", "samtriton.tools.cli", "drain", "--http-url", server.http_url]
        key_file = tmp_path / "admin-key"
        key_file.write_text(server.admin_key)
        drain += ["--admin-key-file", str(key_file)]
        drainer = threading.Thread(
            target=lambda: drained.append(subprocess.run([*drain, "--timeout", "120"], capture_output=True, text=True))
        )
        drainer.start()
        while server.model_states().get("mobilesam_session") != "UNLOADING" and drainer.is_alive():
            time.sleep(0.01)
        ready_during.append(server.is_ready())
        with SamPredictor(server.grpc_url, model="mobilesam", retries=0, timeout=30) as late:
            with pytest.raises(ServerUnavailable, match="not ready"):
                late.set_image(images["coffee"])
        drainer.join(timeout=180)
        for worker in workers:
            worker.join(timeout=180)
        assert results == ["ok"] * 3, f"requests in flight when the drain began must finish: {results}"
        assert [d.returncode for d in drained] == [0], drained
        assert "drained: every model unloaded" in drained[0].stdout
        assert ready_during == [False], "a draining server is not ready (orchestrators stop sending)"
        states = server.model_states()
        assert all(state == "UNAVAILABLE" for state in states.values()), states
    finally:
        assert server.stop() == 0
