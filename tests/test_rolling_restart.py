"""A rolling restart under load, as a deploy does it: three ``samtriton serve`` replicas, each
with its own ports and session cache directory; 6 client threads click in session mode for
``SAMTRITON_ROLLING_SECONDS`` (default 120) while each replica in turn gets SIGTERM (drains,
stops) and starts again on the same ports. No call may fail; click p50 / p99 are printed;
at the end every replica serves clicks again (its images' ranking sends them back, and their
embeddings, gone with the restart, are sent again)."""

import os
import runpy
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from samtriton import SamPredictor
from samtriton import contract as C
from samtriton.server import free_port
from samtriton.transforms import preprocess, to_rgb_uint8
from samtriton.transport import rendezvous_order

from helpers import serve_command

ROOT = Path(__file__).resolve().parent.parent
LOAD_SECONDS = float(os.environ.get("SAMTRITON_ROLLING_SECONDS", "120"))
THREADS = 6
CLICKS_PER_IMAGE = 5
FIRST_RESTART_S = 10.0
RETURN_WITHIN_S = 30.0  # clients come back to a restarted replica (down_seconds is 5 s)
SERVING_AGAIN_S = 15.0  # load kept on after the last replica is back, to see them all serve


class Replica:
    """One ``samtriton serve`` with fixed ports and its own session cache directory."""

    def __init__(self, repository, cache_dir):
        self.repository, self.cache_dir = repository, cache_dir
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.process = None

    @property
    def url(self):
        return f"127.0.0.1:{self.grpc_port}"

    def start(self):
        command = serve_command(
            self.repository,
            self.grpc_port,
            self.http_port,
            self.metrics_port,
            "--session-cache-dir",
            str(self.cache_dir),
            "--startup-timeout",
            "300",
        )
        started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        assert self.url in line, line + (self.process.stderr.read() if self.process.poll() is not None else "")
        return time.monotonic() - started

    def stop(self):
        """SIGTERM (a deploy's stop): (exit code, seconds until exited)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=180)
        return code, time.monotonic() - started

    def metric(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith(name + "{") and 'model="mobilesam_session"' in line
        )

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def replicas(repository, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    group = [Replica(repository, tmp_path / f"cache-{i}") for i in range(3)]
    try:
        with ThreadPoolExecutor(len(group)) as pool:
            list(pool.map(Replica.start, group))
        yield group
    finally:
        with ThreadPoolExecutor(len(group)) as pool:  # stopped together, as at start
            list(pool.map(Replica.kill, group))


def _images_for(urls, per_replica=3):
    """Shifted copies of real photographs, chosen so every replica ranks first for
    ``per_replica`` of them (each replica then has clicks coming back after its restart)."""
    photographs = runpy.run_path(str(ROOT / "scripts" / "scaleout.py"))["scaleout_images"]().values()
    owned = {u: [] for u in urls}
    for shift in range(0, 300, 5):
        for image in photographs:
            moved = to_rgb_uint8(np.roll(image, shift, axis=1))
            padded, size = preprocess(moved)
            owner = rendezvous_order(C.image_id_for(padded, size, moved.shape[:2]), urls)[0]
            if len(owned[owner]) < per_replica:
                owned[owner].append(moved)
            if all(len(v) == per_replica for v in owned.values()):
                return [image for pair in zip(*owned.values()) for image in pair]
    raise AssertionError("could not give every replica its images")


def test_rolling_restart_under_load_drops_no_call(replicas):
    urls = [r.url for r in replicas]
    images = _images_for(urls)
    stop_at = [float("inf")]
    clicks, failures, failovers, lock = [], [], [], threading.Lock()

    def client(index):
        order = images[index:] + images[:index]
        with SamPredictor(urls, model="mobilesam", timeout=120) as predictor:
            while time.monotonic() < stop_at[0]:
                for image in order:
                    if time.monotonic() >= stop_at[0]:
                        break
                    try:
                        predictor.set_image(image)
                        h, w = image.shape[:2]
                        for c in range(CLICKS_PER_IMAGE):
                            point = np.array([[w * (0.3 + 0.1 * c), h * (0.4 + 0.05 * c)]])
                            started = time.perf_counter()
                            masks, scores, _ = predictor.predict(point_coords=point, point_labels=np.array([1]))
                            assert masks.shape == (3, h, w) and np.isfinite(scores).all()
                            with lock:
                                clicks.append(time.perf_counter() - started)
                    except Exception as exc:  # noqa: BLE001 - every failed call is counted and shown
                        with lock:
                            failures.append((time.monotonic(), repr(exc)))
            with lock:
                failovers.extend(predictor.client.endpoint_failures)

    started = time.monotonic()
    stop_at[0] = started + 10 * LOAD_SECONDS  # set for real once every replica has restarted
    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    time.sleep(FIRST_RESTART_S)
    restarts = []  # (drain + stop s, start s, s until it served a click from its cache again)
    try:
        for replica in replicas:  # one at a time, the next once clients are back on this one
            code, stop_seconds = replica.stop()
            assert code == 0, replica.process.stderr.read()
            start_seconds = replica.start()
            back = time.monotonic()
            while replica.metric("samtriton_cache_hits_total") == 0 and time.monotonic() - back < RETURN_WITHIN_S:
                time.sleep(0.25)
            restarts.append((stop_seconds, start_seconds, time.monotonic() - back))
            assert replica.metric("samtriton_cache_hits_total") > 0, (
                f"no client came back to {replica.url} within {RETURN_WITHIN_S:.0f} s of its restart"
            )
        before = {r.url: r.metric("samtriton_cache_hits_total") for r in replicas}
        stop_at[0] = max(started + LOAD_SECONDS, time.monotonic() + SERVING_AGAIN_S)
        time.sleep(max(0.0, stop_at[0] - time.monotonic()))
        after = {r.url: r.metric("samtriton_cache_hits_total") for r in replicas}
    finally:
        stop_at[0] = 0.0
        for thread in threads:
            thread.join(timeout=300)
    elapsed = time.monotonic() - started

    p50, p99 = np.percentile(np.asarray(clicks) * 1000, [50, 99])
    print(
        f"\nrolling restart: {len(clicks)} clicks by {THREADS} threads in {elapsed:.0f} s, {len(failures)} failed; "
        f"click p50 {p50:.0f} ms, p99 {p99:.0f} ms; {len(failovers)} fail-overs; per replica (drain + stop s, "
        f"start s, clicks back after s): " + ", ".join(f"({a:.1f}, {b:.1f}, {c:.1f})" for a, b, c in restarts)
    )
    assert not failures, failures[:5]
    assert elapsed >= LOAD_SECONDS
    assert failovers, "the restarts sent requests to other replicas (else nothing was tested)"
    serving = {url: after[url] - before[url] for url in urls}
    assert all(n > 0 for n in serving.values()), f"every replica serves clicks from its cache again: {serving}"
