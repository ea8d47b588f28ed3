"""What an operator watches: samtriton's Triton metrics, scraped by a real Prometheus.

- The embedding cache counts hits, misses, single-flight waits, encodes, evictions and bytes
  (two caches on one directory, as two session instances; no Triton).
- A real Prometheus (Debian's ``prometheus``) scrapes a real server with a one-embedding cache;
  after a known sequence (one image, 5 clicks, the same image from a second client, another
  image that evicts the first) the scraped series equal the counts that sequence implies.
  The same Prometheus loads the shipped alert rules and evaluates every dashboard query.
- ``promtool check rules`` and ``promtool test rules`` pass on docker/monitoring.
"""

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from samtriton import SamPredictor
from samtriton import contract as C
from samtriton.server import EmbeddedTriton, free_port, stop_process
from samtriton.server import metrics as M
from samtriton.server.embedding_cache import EmbeddingCache

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "docker" / "monitoring"
RULES = MONITORING / "samtriton-rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
EMBEDDING = np.zeros(C.DECODER_IMAGE_EMBEDDINGS.dims, np.float32)
SIZES = np.array([1024, 683]), np.array([600, 900])
MISSING = (
    "Debian's prometheus package is not installed (prometheus, promtool): run scripts/test.sh as root, or "
    "apt-get update && apt-get install -y prometheus"
)


def _tool(name):
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name}: {MISSING}")
    return path


def test_cache_counts_what_it_does(tmp_path):
    """Two caches on one directory (two session instances): a miss, a second request waiting
    for the first one's encode, a hit, and an eviction, each counted where it happened."""
    first, second = (
        EmbeddingCache(str(tmp_path / "cache"), int(1.5 * EMBEDDING.nbytes), M.CacheMetrics(None)) for _ in range(2)
    )
    assert first.get("a" * 32) is None
    found = []
    with first.flight("a" * 32):
        waiter = threading.Thread(target=lambda: found.append(_get_or_wait(second, "a" * 32)))
        waiter.start()
        deadline = time.monotonic() + 10
        while second.metrics.counts[M.MISSES] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the second request has missed; it waits for the flight lock next
        first.put("a" * 32, EMBEDDING, *SIZES)
    waiter.join(timeout=10)
    assert found == [True], "the waiting request used the first one's encode"
    assert second.get("a" * 32) is not None
    first.put("b" * 32, EMBEDDING, *SIZES)  # over budget: "a" goes
    assert second.get("a" * 32) is None
    entry_bytes = (tmp_path / "cache" / ("b" * 32 + ".npz")).stat().st_size
    assert first.metrics.counts == {
        M.HITS: 0,
        M.MISSES: 1,
        M.FLIGHT_WAITS: 0,
        M.ENCODES: 2,
        M.EVICTIONS: 1,
        M.BYTES: entry_bytes,
    }
    assert second.metrics.counts == {
        M.HITS: 1,
        M.MISSES: 2,
        M.FLIGHT_WAITS: 1,
        M.ENCODES: 0,
        M.EVICTIONS: 0,
        M.BYTES: 0,
    }
    first.close()
    second.close()


def _get_or_wait(cache, image_id):
    """The session stage's pattern: look up, else encode under the flight lock (here: find it)."""
    if cache.get(image_id) is not None:
        return False
    with cache.flight(image_id):
        return cache.get(image_id) is not None


def test_promtool_checks_and_unit_tests_the_shipped_rules():
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    unit = subprocess.run(
        [promtool, "test", "rules", str(MONITORING / "samtriton-rules.test.yml")],
        capture_output=True,
        text=True,
        cwd=MONITORING,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


class Prometheus:
    """A real Prometheus on loopback with its own config and data directory, scraping
    ``targets`` every ``interval`` and loading the shipped rules."""

    def __init__(self, workdir: Path, targets, interval="1s"):
        self.workdir, self.port = Path(workdir), free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "samtriton", "static_configs": [{"targets": list(targets)}]}],
        }
        (self.workdir / "prometheus.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
        self.process = subprocess.Popen(
            [
                _tool("prometheus"),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "prometheus.log", "w"),
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "prometheus did not start:\n" + (self.workdir / "prometheus.log").read_text()[-3000:]
                )
            time.sleep(0.1)

    def _ready(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expression):
        """{labels as a sorted tuple: value} of an instant query."""
        result = self.api("query", query=expression)["result"]
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}

    def scraped_after(self, moment, timeout=30.0):
        """Waits until a scrape that began after ``moment`` (time.time()) is stored."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamps = self.query('timestamp(up{job="samtriton"})')
            if stamps and min(stamps.values()) > moment:
                return
            time.sleep(0.2)
        raise AssertionError(f"no scrape after {moment} within {timeout} s")

    def stop(self):
        stop_process(self.process, 20)


@pytest.fixture(scope="module")
def one_embedding_server(onnx_files, tmp_path_factory):
    """A server whose session cache holds one embedding (4 MiB budget): the next image evicts it."""
    from samtriton.export.repository import RepositoryOptions, write_repository

    root = tmp_path_factory.mktemp("metrics")
    write_repository(root / "repository", *onnx_files, RepositoryOptions(name="mobilesam", session_cache_mib=4))
    with EmbeddedTriton.on_free_ports(root / "repository", session_cache_dir=root / "cache") as server:
        yield server


def test_prometheus_scrapes_the_cache_metrics_of_a_known_sequence(one_embedding_server, images, tmp_path):
    server = one_embedding_server
    prometheus = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{server.metrics_port}"])
    try:
        prometheus.scraped_after(time.time())
        point = dict(point_coords=np.array([[120.0, 100.0]]), point_labels=np.array([1]))
        with SamPredictor(server.grpc_url, model="mobilesam") as first:
            first.set_image(images["chelsea"])  # a miss, an encode
            for _ in range(5):
                first.predict(**point)  # five hits
        with SamPredictor(server.grpc_url, model="mobilesam") as second:
            second.set_image(images["chelsea"])  # the same image from another client: a hit
            second.set_image(images["coins_gray"])  # a miss, an encode, the first image evicted
        done = time.time()
        prometheus.scraped_after(done)

        stored = [p.stat().st_size for p in Path(server.session_cache_dir).glob("*.npz")]
        assert len(stored) == 1, "the cache holds one embedding"
        expected = {
            M.HITS: 6,
            M.MISSES: 2,
            M.ENCODES: 2,
            M.EVICTIONS: 1,
            M.FLIGHT_WAITS: 0,
            M.BYTES: stored[0],
            f"{M.REQUEST_SECONDS}_count": 8,
        }
        scraped = {}
        for name in expected:
            series = prometheus.query(f'{name}{{job="samtriton", model="mobilesam_session"}}')
            assert len(series) == 1, (name, series)
            scraped[name] = next(iter(series.values()))
        assert scraped == expected
        encoder = prometheus.query(f'{M.REQUEST_SECONDS}_count{{model="mobilesam_encoder"}}')
        assert list(encoder.values()) == [2.0], "two encodes went through the encoder stage"
        slowest = prometheus.query(f'{M.REQUEST_SECONDS}_bucket{{model="mobilesam_session", le="+Inf"}}')
        assert list(slowest.values()) == [8.0]

        # The shipped rules loaded into this Prometheus, and every dashboard query runs on it.
        groups = prometheus.api("rules")["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} >= {"SamtritonReplicaDown", "SamtritonCacheHitRatioLow"}
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
        dashboard = json.loads(DASHBOARD.read_text())
        expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert len(expressions) >= 10
        empty = []
        for expression in expressions:
            result = prometheus.api("query", query=expression.replace("$__rate_interval", "1m"))
            if not result["result"]:
                empty.append(expression)
        # AMG ran no batch and no request failed here: those ratios and rates may be empty or NaN.
        assert all("amg" in e or "failure" in e for e in empty), empty
    finally:
        prometheus.stop()
