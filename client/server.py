"""Run the real ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships.

The wheel bundles Triton 2.51 with the python backend only; python-backend models run in a
stub process that takes its packages from the ``python3`` first on PATH, so the server is
started with this interpreter's directory first on PATH and its LIBDIR first on
LD_LIBRARY_PATH (else the stub mixes the system libpython with another stdlib).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import deque
from pathlib import Path
from typing import List, Optional, Sequence

from .contract import SESSION_CACHE_DIR_ENV


class ServerStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries its own log lines."""


def _pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServerStartError(
            "the embedded server needs the nvidia-pytriton wheel: pip install 'samtriton[serve]'") from exc
    return Path(pytriton.__file__).parent


def _backend_directory(root: Path) -> Path:
    """A backend directory holding the python backend and the stub for this Python."""
    bundled = _pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = bundled / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerStartError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    python_dir = root / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in (bundled / "backends" / "python" / "libtriton_python.so",
                   bundled / "backends" / "python" / "triton_python_backend_utils.py", stub):
        shutil.copy2(source, python_dir / source.name)
    return root


def _environment() -> dict:
    env = dict(os.environ)
    libs = _pytriton_dir().parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


def repository_models(repository: Path) -> List[str]:
    return sorted(p.name for p in Path(repository).iterdir() if (p / "config.pbtxt").exists())


PYTHON_SHM_DEFAULT_BYTES = 32 * 2**20
PYTHON_SHM_GROWTH_BYTES = 16 * 2**20


class EmbeddedTriton:
    """A tritonserver process serving ``repository`` on loopback (or ``host``).

    Use as a context manager, or call ``start()`` / ``stop()``. ``start`` returns once every
    model is READY and raises ``ServerStartError`` with the server's own error lines otherwise.
    """

    def __init__(self, repository: os.PathLike, grpc_port: int = 8001, http_port: int = 8000,
                 metrics_port: int = 8002, host: str = "127.0.0.1", models: Optional[Sequence[str]] = None,
                 startup_timeout: float = 120.0, log_verbose: int = 0, extra_args: Sequence[str] = (),
                 tls_cert: Optional[os.PathLike] = None, tls_key: Optional[os.PathLike] = None,
                 tls_client_ca: Optional[os.PathLike] = None, session_cache_dir: Optional[os.PathLike] = None):
        self.repository = Path(repository).resolve()
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        self.host = host
        self.models = list(models) if models is not None else None
        self.startup_timeout = startup_timeout
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        if (tls_cert is None) != (tls_key is None) or (tls_client_ca is not None and tls_cert is None):
            raise ValueError("gRPC TLS needs both tls_cert and tls_key (and tls_client_ca only with them)")
        self.tls = None if tls_cert is None else (Path(tls_cert), Path(tls_key),
                                                  Path(tls_client_ca) if tls_client_ca else None)
        # The session model's embedding cache directory for this server; None: the model's
        # config, else a directory of this server's own under /dev/shm.
        self.session_cache_dir = None if session_cache_dir is None else Path(session_cache_dir).resolve()
        self.process: Optional[subprocess.Popen] = None
        self.shm_prefix = f"samtriton_{uuid.uuid4().hex[:12]}_"
        self.log_lines: deque = deque(maxlen=400)
        self._workdir: Optional[tempfile.TemporaryDirectory] = None
        self._reader: Optional[threading.Thread] = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self, backend_dir: Path) -> List[str]:
        binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
        models = self.models if self.models is not None else repository_models(self.repository)
        if not models:
            raise ServerStartError(f"no model (no */config.pbtxt) in repository {self.repository}")
        args = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            "--model-control-mode=explicit",
            *[f"--load-model={m}" for m in models],
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=5",
            # A unique shared-memory prefix lets several servers share one machine.
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            # Each python-backend stub exchanges tensors through its own region, 1 MiB by
            # default and grown 1 MiB at a time: a 4 MiB embedding then costs a regrowth
            # on every request. Start at 32 MiB and grow by 16 MiB.
            f"--backend-config=python,shm-default-byte-size={PYTHON_SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={PYTHON_SHM_GROWTH_BYTES}",
            f"--log-verbose={self.log_verbose}",
            *self._tls_args(),
            *self.extra_args,
        ]
        return args

    def _tls_args(self) -> List[str]:
        if self.tls is None:
            return []
        cert, key, client_ca = self.tls
        for path in (p for p in self.tls if p is not None):
            if not path.is_file():
                raise ServerStartError(f"TLS file not found: {path}")
        args = [f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
        if client_ca is not None:  # clients must present a certificate signed by this CA
            return args + ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={client_ca}"]
        return args + ["--grpc-use-ssl=true"]

    def start(self) -> "EmbeddedTriton":
        self._workdir = tempfile.TemporaryDirectory(prefix="samtriton-backends-")
        backend_dir = _backend_directory(Path(self._workdir.name))
        env = _environment()
        env.pop(SESSION_CACHE_DIR_ENV, None)  # never inherited by accident: set only when asked
        if self.session_cache_dir is not None:
            env[SESSION_CACHE_DIR_ENV] = str(self.session_cache_dir)
        self.process = subprocess.Popen(
            self.command(backend_dir), env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_log(self) -> None:
        for line in self.process.stdout:
            self.log_lines.append(line.rstrip("\n"))

    def error_lines(self) -> List[str]:
        keys = ("E1", "E0", "error", "Error", "failed", "UNAVAILABLE")
        return [line for line in self.log_lines if any(k in line for k in keys) and "CUDA" not in line]

    def is_ready(self) -> bool:
        """Triton's /v2/health/ready on the (plain, loopback-bound) HTTP endpoint."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        """The sum of Prometheus metric ``name`` over the series carrying ``labels``, from this
        server's /metrics (Triton's own, and the counters samtriton's stages add); 0 if none."""
        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        total = 0.0
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] == name and all(label in series for label in wanted):
                total += float(value)
        return total

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(timeout=2)
                raise ServerStartError(self._failure(f"tritonserver exited with code {self.process.returncode}"))
            if self.is_ready():
                return
            time.sleep(0.2)
        raise ServerStartError(self._failure(f"tritonserver was not ready after {self.startup_timeout:.0f} s"))

    def _failure(self, headline: str) -> str:
        lines = self.error_lines() or list(self.log_lines)[-20:]
        return headline + "\n" + "\n".join(lines)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        process, self.process = self.process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            code = process.returncode
            if self._reader is not None:
                self._reader.join(timeout=2)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        self._remove_shared_memory()
        return code

    def kill(self) -> None:
        """SIGKILL the whole server process group (for fault tests)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.stop()

    def _remove_shared_memory(self) -> None:
        """A killed server leaves its python-backend shared-memory regions behind."""
        for leftover in Path("/dev/shm").glob(self.shm_prefix + "*"):
            try:
                leftover.unlink()
            except OSError:
                pass

    def __enter__(self) -> "EmbeddedTriton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
