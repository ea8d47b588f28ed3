#!/usr/bin/env python3
"""Several samtriton replicas on this machine, optionally behind a real nginx, and the
click workload that measures them. Used by tests/test_scaleout.py and, as a script, as the
scale-out benchmark:

    .venv/bin/python scripts/scaleout.py --checkpoint ~/.cache/samtriton/checkpoints/mobile_sam.pt

It exports MobileSAM once, then for 1 replica, 3 replicas with client hashing and 3 replicas
behind nginx runs the same workload (client threads x images x clicks) and prints click
p50/p99 and encodes per image. Each replica has its own ports and cache directory, as
separate hosts would.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from samtriton import admin_key

ROOT = Path(__file__).resolve().parent.parent
# The replicas' one admin key (statistics are restricted to it).
FLEET_ADMIN_KEY = admin_key.generate()
NGINX_CONFIG = ROOT / "docker" / "nginx" / "samtriton.conf"


def scaleout_images() -> Dict[str, np.ndarray]:
    """12 distinct real images bundled with scikit-image (photographs and micrographs)."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "camera": data.camera(),
        "coins": data.coins(),
        "hubble": data.hubble_deep_field(),
        "retina": np.ascontiguousarray(data.retina()[:, 150:1250]),
        "moon": data.moon(),
        "immunohistochemistry": data.immunohistochemistry(),
        "clock": data.clock(),
        "motorcycle": data.stereo_motorcycle()[0],
    }


class Replicas:
    """N embedded Triton servers of one repository, each with its own ports and its own
    session cache directory (``cache_root/replica-i``; None: each server's default). They
    share one admin key, ``FLEET_ADMIN_KEY``, as a fleet's replicas share one Secret."""

    def __init__(self, repository: Path, count: int, cache_root: Optional[Path] = None):
        from samtriton.server import EmbeddedTriton

        self.servers = []
        for i in range(count):
            cache_dir = None if cache_root is None else Path(cache_root) / f"replica-{i}"
            self.servers.append(
                EmbeddedTriton.on_free_ports(repository, session_cache_dir=cache_dir, admin_key=FLEET_ADMIN_KEY)
            )

    @property
    def urls(self) -> List[str]:
        return [s.grpc_url for s in self.servers]

    def start(self) -> "Replicas":
        with ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(lambda s: s.start(), [s for s in self.servers if not self.alive(s)]))
        return self

    @staticmethod
    def alive(server) -> bool:
        return server.process is not None and server.process.poll() is None

    def restart_dead(self) -> None:
        """Starts again (same ports) any replica that was killed."""
        self.start()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def settled_counts(urls: Sequence[str], model: str) -> Dict[str, int]:
    """Successful inference requests of ``model`` per live endpoint, read until they stop
    moving (Triton updates its statistics just after it answers)."""
    import tritonclient.grpc as grpcclient

    def read():
        counts = {}
        for url in urls:
            client = grpcclient.InferenceServerClient(url)
            try:
                headers = admin_key.grpc_headers(FLEET_ADMIN_KEY)
                stats = client.get_inference_statistics(model, as_json=True, headers=headers)["model_stats"][0]
                counts[url] = int(stats.get("inference_stats", {}).get("success", {}).get("count", 0))
            except Exception:  # noqa: BLE001 - a dead replica has no statistics
                counts[url] = None
            finally:
                client.close()
        return counts

    previous = read()
    while True:
        time.sleep(0.15)
        current = read()
        if current == previous:
            return current
        previous = current


class Nginx:
    """A real nginx running ``docker/nginx/samtriton.conf`` (upstream servers and listen port
    replaced) in its own directory, unprivileged paths, in the foreground of its process."""

    def __init__(self, upstreams: Sequence[str], port: int, workdir: Path, binary: Optional[str] = None):
        self.binary = binary or shutil.which("nginx") or "/usr/sbin/nginx"
        self.upstreams, self.port, self.workdir = list(upstreams), port, Path(workdir)
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def site_config(self) -> str:
        """The shipped configuration with this machine's upstreams and port."""
        lines, replaced = [], False
        for line in NGINX_CONFIG.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("server triton-"):
                if not replaced:
                    options = stripped.split(None, 2)[2]  # keep max_fails / fail_timeout as shipped
                    lines += [f"    server {u} {options}" for u in self.upstreams]
                    replaced = True
                continue
            if stripped.startswith("listen "):
                line = line.replace(stripped, f"listen 127.0.0.1:{self.port} http2;")
            lines.append(line)
        if not replaced:
            raise RuntimeError(f"{NGINX_CONFIG}: no 'server triton-...' upstream lines to replace")
        return "\n".join(lines) + "\n"

    def main_config(self) -> str:
        w = self.workdir
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers may then use our temp paths
        temp = "\n".join(
            f"    {name}_temp_path {w / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"{user}worker_processes 1;\ndaemon off;\npid {w / 'nginx.pid'};\n"
            f"error_log {w / 'error.log'} warn;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log {w / 'access.log'};\n{temp}\n    include {w / 'samtriton.conf'};\n}}\n"
        )

    def start(self, timeout: float = 10.0) -> "Nginx":
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "samtriton.conf").write_text(self.site_config())
        (self.workdir / "nginx.conf").write_text(self.main_config())
        config = str(self.workdir / "nginx.conf")
        check = subprocess.run(
            [self.binary, "-t", "-c", config, "-p", str(self.workdir)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        self.process = subprocess.Popen(
            [self.binary, "-c", config, "-p", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.process.stderr.read().decode()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("nginx did not listen in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            from samtriton.server import stop_process

            stop_process(self.process, 10)
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def click_points(image: np.ndarray, clicks: int) -> List[np.ndarray]:
    """``clicks`` foreground points spread over the image's middle."""
    h, w = image.shape[:2]
    return [
        np.array([[w * (0.3 + 0.4 * (i + 0.5) / clicks), h * (0.35 + 0.3 * ((i * 7) % clicks) / clicks)]])
        for i in range(clicks)
    ]


class Workload:
    """``threads`` clients, each with its own ``SamPredictor(url)``; each goes through all
    images (from its own starting point, so clients meet on images) and clicks ``clicks``
    times per image. Records errors, click latencies, each image's id and each click's scores."""

    def __init__(
        self,
        url,
        images: Dict[str, np.ndarray],
        threads: int = 6,
        clicks: int = 5,
        model: str = "mobilesam",
        timeout: float = 120.0,
    ):
        self.url, self.images, self.threads, self.clicks = url, images, threads, clicks
        self.model, self.timeout = model, timeout
        self.errors: List[tuple] = []
        self.click_seconds: List[float] = []
        self.image_ids: Dict[str, str] = {}
        self.scores: Dict[tuple, List[np.ndarray]] = {}
        self.clicks_done = 0
        self._lock = threading.Lock()

    def run(self, on_click=None) -> "Workload":
        """``on_click(total_clicks_done)`` is called after every click (e.g. to kill a replica)."""
        from samtriton import SamPredictor

        names = list(self.images)

        def client(index: int):
            order = names[2 * index % len(names) :] + names[: 2 * index % len(names)]
            with SamPredictor(self.url, model=self.model, timeout=self.timeout) as predictor:
                for name in order:
                    image = self.images[name]
                    try:
                        predictor.set_image(image)
                        with self._lock:
                            self.image_ids[name] = predictor.image_id
                        for c, point in enumerate(click_points(image, self.clicks)):
                            start = time.perf_counter()
                            _, scores, _ = predictor.predict(point_coords=point, point_labels=np.array([1]))
                            elapsed = time.perf_counter() - start
                            with self._lock:
                                self.click_seconds.append(elapsed)
                                self.scores.setdefault((name, c), []).append(scores)
                                self.clicks_done += 1
                                done = self.clicks_done
                            if on_click is not None:
                                on_click(done)
                    except Exception as exc:  # noqa: BLE001 - every failure is recorded and reported
                        with self._lock:
                            self.errors.append((name, repr(exc)))

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(client, range(self.threads)))
        return self

    def score_spread(self) -> float:
        """The largest difference between two clients' scores for the same click."""
        return max(float(np.max(np.abs(np.stack(v) - v[0]))) for v in self.scores.values())

    def latency_ms(self) -> tuple:
        values = np.asarray(self.click_seconds) * 1000
        return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def expected_owners(image_ids: Dict[str, str], urls: Sequence[str], down: Sequence[str] = ()) -> Dict[str, int]:
    """How many images each endpoint should have encoded: the first endpoint, not down, of
    each image's rendezvous ranking."""
    from samtriton.transport import rendezvous_order

    owners = {u: 0 for u in urls if u not in down}
    for image_id in image_ids.values():
        owners[next(u for u in rendezvous_order(image_id, urls) if u not in down)] += 1
    return owners


def encodes(urls: Sequence[str], model: str = "mobilesam") -> Dict[str, Optional[int]]:
    return settled_counts(urls, f"{model}_encoder")


def measure(label: str, url, encoder_urls: Sequence[str], images, threads: int, clicks: int) -> dict:
    before = encodes(encoder_urls)
    work = Workload(url, images, threads=threads, clicks=clicks).run()
    after = encodes(encoder_urls)
    total = sum(after[u] - before[u] for u in encoder_urls)
    p50, p99 = work.latency_ms()
    return dict(
        setup=label,
        clicks=len(work.click_seconds),
        errors=len(work.errors),
        p50_ms=p50,
        p99_ms=p99,
        encodes_per_image=total / len(images),
        replicas_used=sum(1 for u in encoder_urls if after[u] > before[u]),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="MobileSAM checkpoint (mobile_sam.pt)")
    parser.add_argument("--threads", type=int, default=6, help="client threads (default 6)")
    parser.add_argument("--clicks", type=int, default=5, help="clicks per image per client (default 5)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from samtriton.export.checkpoints import load_sam
    from samtriton.export.onnx_export import export_decoder, export_encoder
    from samtriton.export.repository import RepositoryOptions, write_repository
    from samtriton.server import free_port

    images = scaleout_images()
    with tempfile.TemporaryDirectory(prefix="samtriton-scaleout-") as work:
        work = Path(work)
        sam = load_sam("vit_t", args.checkpoint)
        encoder = export_encoder(sam, work / "onnx" / "encoder" / "model.onnx")
        decoder = export_decoder(sam, work / "onnx" / "decoder" / "model.onnx")
        repository = work / "repository"
        write_repository(repository, encoder, decoder, RepositoryOptions(name="mobilesam"))
        rows = []
        with Replicas(repository, 1, work / "cache-1") as one:
            rows.append(measure("1 replica", one.urls[0], one.urls, images, args.threads, args.clicks))
        with Replicas(repository, 3, work / "cache-3") as three:
            rows.append(
                measure("3 replicas, client hashing", three.urls, three.urls, images, args.threads, args.clicks)
            )
            for server in three.servers:  # the same cold start for the nginx run
                for stored in Path(server.session_cache_dir).glob("*.npz"):
                    stored.unlink()
            with Nginx(three.urls, free_port(), work / "nginx") as proxy:
                rows.append(
                    measure("3 replicas, nginx hashing", proxy.url, three.urls, images, args.threads, args.clicks)
                )
    print(
        f"{args.threads} client threads x {len(images)} images x {args.clicks} clicks, MobileSAM, "
        f"python backend on CPU ({os.cpu_count()} cores)\n"
    )
    print("| setup | clicks | errors | click p50 (ms) | click p99 (ms) | encodes per image | replicas used |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setup']} | {r['clicks']} | {r['errors']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['encodes_per_image']:.2f} | {r['replicas_used']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
