"""Run the real ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships.

The wheel bundles Triton 2.51 with the python backend only; python-backend models run in a
stub process that takes its packages from the ``python3`` first on PATH, so the server is
started with this interpreter's directory first on PATH and its LIBDIR first on
LD_LIBRARY_PATH (else the stub mixes the system libpython with another stdlib).

Lifetime: the server never outlives the process that started it. tritonserver gets
``PR_SET_PDEATHSIG`` (SIGKILL), and the kernel sends it when the thread that forked it ends;
so every server is forked by one thread that lives as long as this process (a server forked
by a pool's worker thread would die with that thread). Its python-backend stubs leave when
tritonserver is gone: it alone holds the write end of a pipe whose closing makes the kernel
SIGKILL them (``samtriton.server.lifecycle``). A killed launcher leaves its
stubs' shared-memory regions behind: the next server started on the host removes those of
launchers that are no longer alive.

Locked: the server restricts Triton's model-repository, shared-memory, statistics, trace and
logging APIs to callers holding its admin key (``samtriton.server.restriction``), one given or
one generated per start; ``admin_headers`` carries it.

Stopping drains (``samtriton.server.drain``): ``stop()`` unloads the models clients call
(readiness goes false, new requests are refused with NOT_FOUND, requests in flight finish),
then the models they call, each phase bounded by ``drain_timeout``, then sends SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from pathlib import Path
from typing import List, Optional, Sequence

from samtriton import admin_key as keys
from samtriton.contract import SESSION_CACHE_DIR_ENV
from samtriton.server import drain as draining
from samtriton.server.drain import DEFAULT_DRAIN_TIMEOUT_S
from samtriton.server.lifecycle import LIFELINE_ENV
from samtriton.server.restriction import RESTRICTION_FLAGS, restriction_args


class ServerStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries its own log lines."""


def _pytriton_dir() -> Path:
    """nvidia-pytriton's package folder (tritonserver, its backends and stubs), found without
    importing it: its ``__init__`` imports its client and gevent, which running tritonserver
    does not need (the GPU check's bundle carries the server alone)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("the embedded server needs the nvidia-pytriton wheel: pip install 'samtriton[serve]'")
    return Path(next(iter(spec.submodule_search_locations)))


def _backend_directory(root: Path) -> Path:
    """A backend directory holding the python backend and the stub for this Python."""
    bundled = _pytriton_dir() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = bundled / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerStartError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    python_dir = root / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in (
        bundled / "backends" / "python" / "libtriton_python.so",
        bundled / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        shutil.copy2(source, python_dir / source.name)
    return root


# glibc raises its mmap threshold each time a block above it is freed (up to 32 MiB), after
# which the stubs' 1-50 MiB arrays (images, embeddings, AMG logits) come from heaps that
# fragment and are never given back: a session stub's resident set climbed ~100 MiB in 10
# minutes of mixed load (scripts/soak.py), and stayed flat with the threshold fixed at 1 MiB.
# A value set by the caller wins.
MALLOC_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def _environment() -> dict:
    env = dict(os.environ)
    libs = _pytriton_dir().parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    for name, value in MALLOC_ENVIRONMENT.items():
        env.setdefault(name, value)
    return env


def repository_models(repository: Path) -> List[str]:
    return sorted(p.name for p in Path(repository).iterdir() if (p / "config.pbtxt").exists())


PYTHON_SHM_DEFAULT_BYTES = 32 * 2**20
PYTHON_SHM_GROWTH_BYTES = 16 * 2**20
# The python-backend stubs' shared-memory regions: SHM_PREFIX + "<launcher pid>_<random>_".
SHM_PREFIX = "samtriton_triton_"
_SHM_OWNER = re.compile(re.escape(SHM_PREFIX) + r"(\d+)_")
PR_SET_PDEATHSIG = 1
# Resolved here: a forked child of a threaded process should not load libraries.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent(parent_pid: int) -> None:
    """In the forked child, before exec: SIGKILL this process when its parent thread ends
    (the setting survives exec); if the parent died before the call, die now."""
    if _PRCTL is None:  # not Linux: the launcher's own stop is all there is
        return
    if _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        os._exit(127)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


class _Spawner:
    """Forks child processes from one daemon thread that lives as long as this process, so
    that ``PR_SET_PDEATHSIG`` means "when this process ends", whatever thread asked."""

    def __init__(self):
        self._jobs: "queue.Queue" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def popen(self, args: List[str], **kwargs) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="samtriton-spawner", daemon=True)
                self._thread.start()
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((args, kwargs, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            args, kwargs, done = self._jobs.get()
            parent = os.getpid()
            try:
                done.set_result(subprocess.Popen(args, preexec_fn=lambda: _die_with_parent(parent), **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)


_SPAWNER = _Spawner()


def popen_tied(args: List[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(args, **kwargs)`` for a child that is SIGKILLed when this process
    ends (by any signal), from whatever thread it is called."""
    return _SPAWNER.popen(list(args), **kwargs)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not: it waits only for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def sweep_orphan_shared_memory(root: Path = Path("/dev/shm")) -> List[str]:
    """Removes python-backend shared-memory regions whose launcher process is gone (a
    launcher killed with its server cannot clean up after them). Returns the names removed."""
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _SHM_OWNER.match(entry.name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            entry.unlink()
            removed.append(entry.name)
        except OSError:
            pass
    return removed


class EmbeddedTriton:
    """A tritonserver process serving ``repository`` on loopback (or ``host``).

    Use as a context manager, or call ``start()`` / ``stop()``. ``start`` returns once every
    model is READY and raises ``ServerStartError`` with the server's own error lines otherwise.
    ``admin_key``: the key its restricted APIs need (``samtriton.admin_key``); None generates
    one for this server.
    """

    def __init__(
        self,
        repository: os.PathLike,
        grpc_port: int = 8001,
        http_port: int = 8000,
        metrics_port: int = 8002,
        host: str = "127.0.0.1",
        models: Optional[Sequence[str]] = None,
        startup_timeout: float = 120.0,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        tls_cert: Optional[os.PathLike] = None,
        tls_key: Optional[os.PathLike] = None,
        tls_client_ca: Optional[os.PathLike] = None,
        session_cache_dir: Optional[os.PathLike] = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S,
        admin_key: Optional[str] = None,
    ):
        self.repository = Path(repository).resolve()
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        self.host = host
        self.models = list(models) if models is not None else None
        self.startup_timeout = startup_timeout
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        if any(arg.split("=", 1)[0] in RESTRICTION_FLAGS for arg in self.extra_args):
            raise ValueError(f"extra_args: {' / '.join(RESTRICTION_FLAGS)} come from admin_key; leave them out")
        self.admin_key = keys.generate() if admin_key is None else keys.check(admin_key, "admin_key")
        if (tls_cert is None) != (tls_key is None) or (tls_client_ca is not None and tls_cert is None):
            raise ValueError("gRPC TLS needs both tls_cert and tls_key (and tls_client_ca only with them)")
        self.tls = (
            None
            if tls_cert is None
            else (Path(tls_cert), Path(tls_key), Path(tls_client_ca) if tls_client_ca else None)
        )
        # The session model's embedding cache directory for this server; None: the model's
        # config, else a directory of this server's own under /dev/shm.
        self.session_cache_dir = None if session_cache_dir is None else Path(session_cache_dir).resolve()
        if drain_timeout < 0:
            raise ValueError(f"drain_timeout: expected seconds >= 0, got {drain_timeout!r}")
        self.drain_timeout = drain_timeout
        self.process: Optional[subprocess.Popen] = None
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.log_lines: deque = deque(maxlen=400)
        self._workdir: Optional[tempfile.TemporaryDirectory] = None
        self._reader: Optional[threading.Thread] = None

    @classmethod
    def on_free_ports(cls, repository: os.PathLike, **kwargs) -> "EmbeddedTriton":
        """A server of ``repository`` whose gRPC, HTTP and metrics ports are free ones (several
        servers on one host: tests, benchmarks); ``kwargs``: the other arguments."""
        return cls(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), **kwargs)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def admin_headers(self) -> dict:
        """gRPC metadata carrying the admin key (tritonclient.grpc's ``headers=``)."""
        return keys.grpc_headers(self.admin_key)

    @property
    def http_admin_headers(self) -> dict:
        """HTTP headers carrying the admin key (tritonclient.http's ``headers=``)."""
        return keys.http_headers(self.admin_key)

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
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
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
            *restriction_args(self.admin_key),
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
        sweep_orphan_shared_memory()
        self._workdir = tempfile.TemporaryDirectory(prefix="samtriton-backends-")
        backend_dir = _backend_directory(Path(self._workdir.name))
        env = _environment()
        env.pop(SESSION_CACHE_DIR_ENV, None)  # never inherited by accident: set only when asked
        env.pop(keys.ADMIN_KEY_ENV, None)  # the models' processes never see the key (as in the containers)
        if self.session_cache_dir is not None:
            env[SESSION_CACHE_DIR_ENV] = str(self.session_cache_dir)
        # The stubs' lifeline: a pipe whose write end only tritonserver keeps (lifecycle.py).
        lifeline = os.pipe()
        env[LIFELINE_ENV] = ",".join(map(str, lifeline))
        # Its own session: a terminal's Ctrl-C reaches the launcher only, and the process
        # group (tritonserver and its stubs) can be killed as one.
        try:
            self.process = popen_tied(
                self.command(backend_dir),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,
                pass_fds=lifeline,
            )
        finally:
            for fd in lifeline:
                os.close(fd)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop(drain=False)
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
            if self.is_ready() and self._metrics_listening():
                return
            time.sleep(0.2)
        raise ServerStartError(self._failure(f"tritonserver was not ready after {self.startup_timeout:.0f} s"))

    def _metrics_listening(self) -> bool:
        """Triton opens /metrics after the health endpoints: ready means scrapable too (unless
        metrics are turned off)."""
        if "--allow-metrics=false" in self.extra_args:
            return True
        import socket

        with socket.socket() as probe:
            probe.settimeout(2)
            return probe.connect_ex((self.host, self.metrics_port)) == 0

    def _failure(self, headline: str) -> str:
        lines = self.error_lines() or list(self.log_lines)[-20:]
        return headline + "\n" + "\n".join(lines)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def model_states(self) -> dict:
        """{model name: state} from the repository index ("READY", "UNLOADING", ...)."""
        return draining.model_states(self.http_url, self.admin_key)

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Stops taking requests and lets those in flight finish (``samtriton.server.drain``),
        each phase bounded by ``timeout`` seconds (default ``drain_timeout``). The server keeps
        running; returns True when everything unloaded in time."""
        return draining.drain(self.http_url, self.drain_timeout if timeout is None else timeout, self.admin_key)

    def stop(self, timeout: float = 15.0, drain: bool = True) -> Optional[int]:
        """Drains (see ``drain``; unless ``drain=False``), then SIGTERM; SIGKILL to the whole
        process group after ``timeout`` seconds. Returns tritonserver's exit code."""
        process = self.process
        code = None
        if process is not None:
            if process.poll() is None:
                if drain:
                    self.drain()
                stop_process(process, timeout)
            code = process.returncode
            self._kill_group(process.pid)  # a stub still finishing (or a server that was killed)
            if self._reader is not None:
                self._reader.join(timeout=2)
        self.process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        self._remove_shared_memory()
        return code

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL the whole server process group (for fault tests)."""
        if self.process is not None and self.process.poll() is None:
            self._kill_group(self.process.pid)
            self.process.wait()
        self.stop(drain=False)

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


def stop_process(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM to ``process``, SIGKILL if it has not exited ``timeout`` seconds later; its
    exit code."""
    process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
