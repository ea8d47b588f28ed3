"""Where each request goes and what happens when it fails, once for the sync and asyncio clients.

- Endpoint choice: a request that names an image id goes to the endpoint that ranks first
  for that id under rendezvous (highest random weight) hashing over the endpoints that are
  up, so a session's clicks land where its embedding is. Adding or removing one of N
  endpoints moves only the images that ranked it first. Other requests rotate over the
  endpoints that are up.
- The id also travels as gRPC metadata (``samtriton-image-id``), so a layer-7 proxy that
  hashes on it (nginx ``hash $http_samtriton_image_id consistent``) keeps the same affinity
  for clients that know one address.
- Fail-over: an endpoint that is unreachable, or lacks the model, is skipped for
  ``down_seconds`` and the request goes to the next endpoint in its order at once; when
  every endpoint was unreachable the call is retried with exponential backoff and jitter,
  never past its deadline.
- Re-send: a session request that finds the server without its image (NOT_FOUND from the
  session model) sends the image to that same endpoint once and asks again, so the images
  of a failed endpoint move to their next endpoint and stay there.
- Draining: a replica that stops unloads its models first (``EmbeddedTriton.drain``); a model
  missing on an endpoint whose server is not ready (draining, starting) is that endpoint
  being unavailable, so the request fails over and the endpoint is tried again after
  ``down_seconds``, as an unreachable one would be.
- Contract versions: before the first request to a model on an endpoint, its config's
  ``contract.CONTRACT_VERSION_PARAMETER`` is read (once per endpoint and model; again after
  the endpoint was unreachable, as a restarted replica may serve another export). An endpoint
  with another major version than this client's is skipped, with one warning naming both
  versions, and nothing is sent to it; with no compatible endpoint left the call raises
  ``ContractMismatch`` naming them. Skipped endpoints are asked again after
  ``ContractVersions.RECHECK_SECONDS``: an upgraded replica comes back into use.
- Errors: Triton's status codes, not message text, become samtriton's exceptions.

The attempt plan (``attempts``) is a generator both clients drive; the sync client drives it
with blocking tritonclient calls, the asyncio client with ``tritonclient.grpc.aio``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, Generator, List, Optional, Sequence, Tuple, Union

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from . import admin_key as keys
from . import contract as C
from .errors import (
    ContractMismatch,
    ImageNotCached,
    InvalidInput,
    ModelNotReady,
    SamTritonError,
    ServerUnavailable,
    from_status,
)
from .shared_memory import MIN_SHARED_BYTES, SharedMemoryPool, is_local

logger = logging.getLogger("samtriton")

# Errors that say "not here": the next endpoint may serve the request.
FAIL_OVER = (ServerUnavailable, ModelNotReady, ContractMismatch)

# A tritonclient.grpc (or .aio) InferenceServerClient; tritonclient has no type information.
TritonClient = Any

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.2
DEFAULT_DOWN_SECONDS = 5.0


def parse_urls(url: Union[str, Sequence[str]]) -> List[str]:
    urls = [u.strip() for u in (url.split(",") if isinstance(url, str) else url) if u and u.strip()]
    if not urls:
        raise InvalidInput(f"url: expected 'host:port' or a list of them, got {url!r}")
    if len(set(urls)) != len(urls):
        raise InvalidInput(f"url: each endpoint once, got {urls}")
    return urls


def endpoints_from_dns(host_port: str) -> List[str]:
    """Every address a name resolves to, as "ip:port" endpoints: a Kubernetes headless
    Service names each ready replica this way (resolve again to follow scaling)."""
    import socket

    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInput(f"host_port: expected 'name:port', got {host_port!r}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServerUnavailable(f"{host_port}: cannot resolve {host!r} ({exc})") from None
    addresses = []
    for family, _, _, _, address in infos:
        endpoint = f"[{address[0]}]:{port}" if family == socket.AF_INET6 else f"{address[0]}:{port}"
        if endpoint not in addresses:
            addresses.append(endpoint)
    return addresses


def rendezvous_order(key: str, urls: Sequence[str]) -> List[str]:
    """``urls`` ranked for ``key`` by highest random weight: a stable order per key that
    changes only where an endpoint is added or removed."""

    def weight(url: str) -> bytes:
        return hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest()

    return sorted(urls, key=weight, reverse=True)


class Endpoints:
    """The endpoints of one client and what it knows of their health."""

    def __init__(self, urls: Sequence[str], down_seconds: float = DEFAULT_DOWN_SECONDS):
        self.urls = list(urls)
        self.down_seconds = down_seconds
        self.failures: List[tuple] = []  # (url, reason), oldest first
        self._down_until = {u: 0.0 for u in self.urls}
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def order(self, image_id: Optional[str] = None) -> List[str]:
        """Where to try a request, first choice first: the image's rendezvous ranking, or a
        rotation for requests without an image; endpoints that are up before those marked down."""
        if image_id is not None:
            ranked = rendezvous_order(image_id, self.urls)
        else:
            with self._lock:
                start = next(self._turn) % len(self.urls)
            ranked = self.urls[start:] + self.urls[:start]
        now = time.monotonic()
        return sorted(ranked, key=lambda u: self._down_until[u] > now)  # stable: the ranking is kept

    def mark_down(self, url: str, error: Exception) -> None:
        with self._lock:
            self._down_until[url] = time.monotonic() + self.down_seconds
            self.failures.append((url, str(error)))
        if len(self.urls) > 1:
            logger.warning("samtriton: endpoint %s failed (%s); trying another endpoint", url, error)


@dataclass(frozen=True)
class Attempt:
    url: str
    deadline: float  # time.monotonic() by which the call must be done


@dataclass(frozen=True)
class Pause:
    seconds: float


def attempts(
    endpoints: Endpoints, image_id: Optional[str], timeout: float, retries: int, backoff: float
) -> Generator[Union[Attempt, Pause], Optional[Exception], None]:
    """The plan of one call. Yields an ``Attempt`` (try this endpoint) or a ``Pause`` (sleep,
    then ``next``). After a failed attempt, ``send`` its error: a fail-over error marks the
    endpoint down and the plan goes on (a ``ContractMismatch`` only skips it: nothing was
    sent); the plan raises the error when nothing is left."""
    deadline = time.monotonic() + timeout
    for attempt in itertools.count():
        error: Optional[Exception] = None
        skipped: List[ContractMismatch] = []
        for url in endpoints.order(image_id):
            sent = yield Attempt(url, deadline)
            if isinstance(sent, ContractMismatch):
                skipped.append(sent)
                continue
            error = sent
            if not isinstance(error, FAIL_OVER):
                raise error if error is not None else RuntimeError("attempts: send the failed attempt's error")
            endpoints.mark_down(url, error)
            if time.monotonic() >= deadline:
                raise error
        if error is None:  # every endpoint speaks another contract
            raise skipped[0] if len(skipped) == 1 else no_compatible_endpoint(skipped)
        pause = backoff * (2**attempt) * random.uniform(0.5, 1.5)
        # Only "unreachable" is worth waiting for; a missing model is a deployment matter.
        if not isinstance(error, ServerUnavailable) or attempt >= retries or time.monotonic() + pause >= deadline:
            raise error
        yield Pause(pause)


def no_compatible_endpoint(skipped: Sequence[ContractMismatch]) -> ContractMismatch:
    """The error of a call that every endpoint's contract version ruled out."""
    first = skipped[0]
    found = ", ".join(f"{e.url} has {e.server_version}" for e in skipped)
    return ContractMismatch(
        f"no endpoint serves {first.model} under this client's wire contract {first.client_version} (major "
        f"{_major(first.client_version)}): {found}; use a samtriton client of their version, or re-export the "
        "repository with this one",
        first.url,
        first.model,
        first.server_version,
        first.client_version,
    )


def _major(version: str) -> str:
    return version.split(".", 1)[0].strip()


def _remaining(deadline: float) -> float:
    """Seconds left before ``deadline`` (monotonic), at least 1 ms: a client timeout of 0 means none."""
    return max(deadline - time.monotonic(), 0.001)


class ContractVersions:
    """The wire-contract version each endpoint serves each model with (the model config's
    ``contract.CONTRACT_VERSION_PARAMETER``), as the client learnt it, and the verdict: same
    major version as this client, or skipped (one warning per endpoint and version)."""

    # A skipped endpoint is asked again after this long: its replica may have been upgraded.
    RECHECK_SECONDS = 30.0

    def __init__(self, client_version: str = C.CONTRACT_VERSION):
        self.client_version = client_version
        self._versions: Dict[tuple, tuple] = {}  # (url, model) -> (version, time.monotonic() when learnt)
        self._warned: set = set()
        self._lock = threading.Lock()

    def known(self, url: str, model: str) -> Optional[str]:
        """The version learnt for ``model`` at ``url``, or None: ask the endpoint."""
        with self._lock:
            entry = self._versions.get((url, model))
        if entry is None:
            return None
        version, learnt = entry
        if not self.compatible(version) and time.monotonic() - learnt > self.RECHECK_SECONDS:
            return None
        return version

    def learn(self, url: str, model: str, config) -> str:
        """Records the version in ``config`` (a ``ModelConfig`` protobuf) and returns it."""
        parameters = config.parameters
        version = (
            parameters[C.CONTRACT_VERSION_PARAMETER].string_value.strip()
            if C.CONTRACT_VERSION_PARAMETER in parameters
            else ""
        ) or C.UNVERSIONED_CONTRACT
        with self._lock:
            self._versions[(url, model)] = (version, time.monotonic())
        return version

    def forget(self, url: str) -> None:
        """The endpoint went away: whatever comes back there is asked again."""
        with self._lock:
            for key in [k for k in self._versions if k[0] == url]:
                del self._versions[key]

    def compatible(self, version: str) -> bool:
        return _major(version) == _major(self.client_version)

    def check(self, url: str, model: str, known: Optional[str], config=None) -> None:
        """Raises ``ContractMismatch`` when ``model`` at ``url`` follows another major version:
        the one in ``config`` (the model config just fetched), else ``known`` (learnt before)."""
        version = self.learn(url, model, config) if config is not None else known
        mismatch = self.mismatch(url, model, version) if version is not None else None
        if mismatch is not None:
            raise mismatch

    def mismatch(self, url: str, model: str, version: str) -> Optional[ContractMismatch]:
        """None when ``version`` is usable, else the error (logged once per endpoint and version)."""
        if self.compatible(version):
            return None
        error = ContractMismatch(
            f"{url} serves {model} under wire contract {version}; this client speaks {self.client_version} (another "
            f"major version): nothing is sent there. Use a samtriton client of contract {_major(version)}.x for it, "
            "or re-export its repository with this samtriton",
            url,
            model,
            version,
            self.client_version,
        )
        with self._lock:
            first = (url, version) not in self._warned
            self._warned.add((url, version))
        if first:
            logger.warning("samtriton: %s", error)
        return error


@dataclass
class Call:
    """One request to one served model: what is sent, what comes back, where it may go."""

    spec: C.ModelSpec
    model_name: str
    arrays: Dict[str, np.ndarray]
    outputs: List[str]
    output_bytes: Dict[str, int] = field(default_factory=dict)  # bound for shared-memory outputs
    image_id: Optional[str] = None  # affinity key; also sent as metadata
    resend: Optional["Call"] = None  # sent once when the server does not hold the image

    @property
    def may_miss_image(self) -> bool:
        """A session request that names an image and carries none: NOT_FOUND means the
        server does not hold the image (or the model is missing: see ``Transport``)."""
        return (
            self.spec is C.SESSION
            and self.image_id is not None
            and not (C.IMAGE.name in self.arrays or C.ENCODED_IMAGE.name in self.arrays)
        )

    def headers(self, base: Optional[Dict[str, str]]) -> Optional[Dict[str, str]]:
        if self.image_id is None:
            return base
        return dict(base or {}, **{C.IMAGE_ID_HEADER: self.image_id})


def make_call(
    spec: C.ModelSpec,
    model: str,
    tensors: Dict[str, np.ndarray],
    outputs: Optional[Sequence[str]] = None,
    output_bytes: Optional[Dict[str, int]] = None,
    image_id: Optional[str] = None,
    resend: Optional[Call] = None,
) -> Call:
    """A ``Call`` with its tensors checked and cast to the contract's dtypes."""
    model_name = spec.served_name(model)
    return Call(
        spec,
        model_name,
        request_arrays(spec, model_name, tensors),
        list(outputs) if outputs else [s.name for s in spec.outputs],
        dict(output_bytes or {}),
        image_id,
        resend,
    )


def request_arrays(spec: C.ModelSpec, model_name: str, tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The request's tensors in their contract dtypes, checked for presence and total size."""
    missing = [s.name for s in spec.inputs if not s.optional and tensors.get(s.name) is None]
    if missing:
        raise InvalidInput(f"request to {model_name}: missing input(s) {missing}")
    arrays = {s.name: _wire_array(tensors[s.name], s) for s in spec.inputs if tensors.get(s.name) is not None}
    size = sum(nbytes(a) for a in arrays.values())
    if size > C.MAX_REQUEST_BYTES:
        raise InvalidInput(
            f"request to {model_name}: {size / 2**20:.1f} MiB of tensors; the limit is "
            f"{C.MAX_REQUEST_BYTES / 2**20:.0f} MiB (send fewer prompts or images per call)"
        )
    return arrays


def _wire_array(value, spec: C.TensorSpec) -> np.ndarray:
    if np.dtype(spec.dtype) == np.object_:
        array = np.asarray(value, dtype=object)
        return np.array([v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()], dtype=object).reshape(
            array.shape
        )
    return np.ascontiguousarray(value, dtype=spec.dtype)


def nbytes(array: np.ndarray) -> int:
    if array.dtype == object:
        return sum(len(v) + 4 for v in array.ravel())  # BYTES elements carry a 4-byte length
    return array.nbytes


def translate(exc: InferenceServerException, call: Call, url: str, timeout: float) -> SamTritonError:
    """A tritonclient error -> samtriton's exception, by Triton's status code
    (``errors.from_status``). The message is kept for people; nothing is decided on its text."""
    message = (exc.message() or str(exc)).strip()
    status = (exc.status() or "").rsplit(".", 1)[-1]  # "StatusCode.NOT_FOUND" -> "NOT_FOUND"
    if not status and _is_connection_error(exc):
        status = "UNAVAILABLE"
    image_id = call.image_id if call.may_miss_image else None
    return from_status(status, message, call.model_name, url, timeout, image_id)


def _is_connection_error(exc: InferenceServerException) -> bool:
    # tritonclient raises some channel failures without a status (its own wrapper).
    return isinstance(exc.__cause__, (ConnectionError, OSError))


def _not_serving(url: str, error: ModelNotReady, server_ready: bool, versions: ContractVersions) -> SamTritonError:
    """A model missing where the server is not ready either (draining for a restart, or still
    starting): the endpoint is unavailable for now, and the call may wait for it. Where the
    server is ready, the model is missing for good (``ModelNotReady``)."""
    if server_ready:
        return error
    versions.forget(url)  # a replica that comes back may serve another export
    return ServerUnavailable(f"{url} is not ready (draining, stopping or starting): {error}")


def _model_missing(call: Call, url: str) -> ModelNotReady:
    return ModelNotReady(f"{call.model_name} at {url} is not ready; load it or check the deployment name")


def _send_failed(
    channels: "Channels", channel: "_Channel", exc: InferenceServerException, call: Call, url: str, timeout: float
) -> SamTritonError:
    """A failed send as samtriton's error; an unreachable endpoint gets a fresh channel."""
    error = translate(exc, call, url, timeout)
    if isinstance(error, ServerUnavailable):
        channels.renew(url, channel)
    return error


class Channels:
    """Each endpoint's current client. ``renew`` gives an endpoint a fresh one (a channel that
    saw its server die waits out gRPC's reconnect backoff; a new one connects as soon as the
    server is back); the old one is closed when the last request using it has returned,
    never under a request in flight. ``close_client`` may return an awaitable (asyncio)."""

    def __init__(
        self,
        urls: Sequence[str],
        make_client: Callable[[str], TritonClient],
        close_client: Callable[[TritonClient], Optional[Awaitable[Any]]],
    ):
        self._make, self._close = make_client, close_client
        self._current = {u: _Channel(make_client(u)) for u in urls}
        self._lock = threading.Lock()
        self.closing: List[Awaitable[Any]] = []  # what close_client returned (awaitables to await)

    def acquire(self, url: str) -> "_Channel":
        with self._lock:
            channel = self._current[url]
            channel.users += 1
            return channel

    def release(self, channel: "_Channel") -> None:
        with self._lock:
            channel.users -= 1
            done = channel.retired and channel.users == 0
        if done:
            self._finish(channel)

    def current(self, url: str) -> "_Channel":
        return self._current[url]

    def renew(self, url: str, seen: "_Channel") -> None:
        """Replace ``seen`` (the channel a failed request used) unless another thread already did."""
        with self._lock:
            if self._current[url] is not seen:
                return
            self._current[url] = _Channel(self._make(url))
            seen.retired = True
            done = seen.users == 0
        if done:
            self._finish(seen)

    def close(self) -> None:
        with self._lock:
            channels, self._current = list(self._current.values()), {}
        for channel in channels:
            channel.retired = True
            self._finish(channel)

    def _finish(self, channel: "_Channel") -> None:
        if channel.closed:
            return
        channel.closed = True
        if channel.pool is not None:
            channel.pool.close()
        result = self._close(channel.client)
        if result is not None:
            self.closing.append(result)


@dataclass(eq=False)
class _Channel:
    client: TritonClient
    users: int = 0
    retired: bool = False
    closed: bool = False
    pool: Optional[SharedMemoryPool] = None  # system shared memory with this server, if used
    pool_checked: bool = False


@dataclass
class TransportOptions:
    timeout: float = DEFAULT_TIMEOUT_S
    headers: Optional[Dict[str, str]] = None
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF_S
    down_seconds: float = DEFAULT_DOWN_SECONDS

    def __post_init__(self):
        if not self.timeout or self.timeout <= 0:
            raise InvalidInput(f"timeout: expected a positive number of seconds, got {self.timeout!r}")
        if self.retries < 0:
            raise InvalidInput(f"retries: expected 0 or more, got {self.retries!r}")


class Transport:
    """The blocking transport: tritonclient.grpc clients, optional system shared memory.

    shared_memory: large tensors through system shared memory with servers on this host;
    admin_key: the servers' admin key, which registering a region needs (default:
    ``SAMTRITON_ADMIN_KEY_FILE`` / ``SAMTRITON_ADMIN_KEY``; without one the wire is used, with
    one warning); client_kwargs: tritonclient's ``InferenceServerClient`` arguments.
    """

    def __init__(
        self,
        urls: Sequence[str],
        options: TransportOptions,
        shared_memory: bool = False,
        admin_key: Optional[str] = None,
        **client_kwargs,
    ):
        self.endpoints = Endpoints(urls, options.down_seconds)
        self.options = options
        self.shared_memory = shared_memory
        if admin_key is not None:
            admin_key = keys.check(admin_key, "admin_key")
        elif shared_memory:
            admin_key = keys.from_environment()
        # Sent with (un)registrations only: inference calls never carry the key.
        self._shared_memory_headers = {**(options.headers or {}), **keys.grpc_headers(admin_key)}
        self._has_admin_key = admin_key is not None
        self._client_kwargs = client_kwargs
        self.channels = Channels(urls, self._new_client, lambda client: client.close())
        self.versions = ContractVersions()
        self._lock = threading.Lock()
        # Bytes of tensors that crossed the wire (shared-memory tensors are not counted).
        self.bytes_sent = 0
        self.bytes_received = 0

    def _new_client(self, url: str):
        return grpcclient.InferenceServerClient(url, **self._client_kwargs)

    def call(self, call: Call) -> Dict[str, np.ndarray]:
        options = self.options
        plan = attempts(self.endpoints, call.image_id, options.timeout, options.retries, options.backoff)
        step = next(plan)
        while True:
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                step = next(plan)
                continue
            try:
                return self._attempt(step.url, call, step.deadline)
            except FAIL_OVER as error:
                step = plan.send(error)

    def _attempt(self, url: str, call: Call, deadline: float) -> Dict[str, np.ndarray]:
        self._check_contract(url, call, deadline)
        try:
            return self._send_or_resend(url, call, deadline)
        except ModelNotReady as error:
            raise _not_serving(url, error, self._server_ready(url, deadline), self.versions) from None
        except ServerUnavailable:
            self.versions.forget(url)
            raise

    def _send_or_resend(self, url: str, call: Call, deadline: float) -> Dict[str, np.ndarray]:
        try:
            return self._send(url, call, deadline)
        except ImageNotCached:
            if not self._model_ready(url, call, deadline):  # not the image: the model (draining?)
                raise _model_missing(call, url) from None
            if call.resend is None:
                raise
            logger.info("samtriton: %s holds no embedding for %s; sending the image again", url, call.image_id)
            self._send(url, call.resend, deadline)
            return self._send(url, call, deadline)

    def _check_contract(self, url: str, call: Call, deadline: float) -> None:
        """Raises ``ContractMismatch`` for an endpoint of another major contract version."""
        known, config = self.versions.known(url, call.model_name), None
        if known is None:
            channel = self.channels.acquire(url)
            try:
                config = channel.client.get_model_config(
                    call.model_name, headers=self.options.headers, client_timeout=_remaining(deadline)
                ).config
            except InferenceServerException:
                return  # unreachable, or no such model: the request itself says which
            finally:
                self.channels.release(channel)
        self.versions.check(url, call.model_name, known, config)

    def _model_ready(self, url: str, call: Call, deadline: float) -> bool:
        channel = self.channels.acquire(url)
        try:
            return channel.client.is_model_ready(
                call.model_name, headers=self.options.headers, client_timeout=_remaining(deadline)
            )
        except InferenceServerException:
            return False
        finally:
            self.channels.release(channel)

    def _server_ready(self, url: str, deadline: float) -> bool:
        channel = self.channels.acquire(url)
        try:
            return channel.client.is_server_ready(headers=self.options.headers, client_timeout=_remaining(deadline))
        except InferenceServerException:
            return False
        finally:
            self.channels.release(channel)

    def _send(self, url: str, call: Call, deadline: float) -> Dict[str, np.ndarray]:
        channel = self.channels.acquire(url)
        try:
            return self._infer(channel, url, call, deadline)
        except InferenceServerException as exc:
            raise _send_failed(self.channels, channel, exc, call, url, self.options.timeout) from None
        finally:
            self.channels.release(channel)

    def _infer(self, channel: _Channel, url: str, call: Call, deadline: float) -> Dict[str, np.ndarray]:
        pool = self._pool(channel, url)
        held, shared_out = [], {}
        inputs, wire_sent = [], 0
        try:
            for name, array in call.arrays.items():
                tensor = grpcclient.InferInput(name, list(array.shape), C.WIRE_DTYPES[array.dtype])
                if pool is not None and array.dtype != object and array.nbytes >= MIN_SHARED_BYTES:
                    region = pool.checkout(array.nbytes)
                    held.append(region)
                    pool.write(region, array)
                    tensor.set_shared_memory(region.name, array.nbytes)
                else:
                    tensor.set_data_from_numpy(array)
                    wire_sent += nbytes(array)
                inputs.append(tensor)
            requested = []
            for name in call.outputs:
                output = grpcclient.InferRequestedOutput(name)
                if pool is not None and call.output_bytes.get(name, 0) >= MIN_SHARED_BYTES:
                    region = pool.checkout(call.output_bytes[name])
                    held.append(region)
                    output.set_shared_memory(region.name, region.byte_size)
                    shared_out[name] = region
                requested.append(output)
            result = channel.client.infer(
                call.model_name,
                inputs,
                outputs=requested,
                headers=call.headers(self.options.headers),
                client_timeout=_remaining(deadline),
            )
            values = {}
            for name in call.outputs:
                if name in shared_out:
                    assert pool is not None  # shared_out is filled from the pool only
                    meta = result.get_output(name)
                    values[name] = pool.read(shared_out[name], NUMPY_DTYPES[meta.datatype], meta.shape)
                else:
                    values[name] = result.as_numpy(name)
        finally:
            if held:
                assert pool is not None  # held is filled from the pool only
                pool.release(held)
        received = sum(nbytes(v) for k, v in values.items() if k not in shared_out)
        with self._lock:
            self.bytes_sent += wire_sent
            self.bytes_received += received
        return values

    def _pool(self, channel: _Channel, url: str) -> Optional[SharedMemoryPool]:
        """The channel's shared-memory pool, created on first use; None means the wire."""
        if not self.shared_memory:
            return None
        with self._lock:
            if channel.pool_checked:
                return channel.pool
            channel.pool_checked = True
        if not is_local(url):
            logger.warning("samtriton: %s is not on this machine; shared memory is off for it, using the wire", url)
            return None
        candidate = SharedMemoryPool(channel.client, self._shared_memory_headers, self.options.timeout)
        try:
            candidate.release([candidate.checkout(MIN_SHARED_BYTES)])  # proves the server can map our regions
        except Exception as exc:  # noqa: BLE001 - any failure means: use the wire
            hint = (
                ""
                if self._has_admin_key
                else f"; samtriton's servers allow it only with their admin key: pass admin_key= or set "
                f"{keys.ADMIN_KEY_FILE_ENV} / {keys.ADMIN_KEY_ENV}"
            )
            logger.warning("samtriton: %s refused system shared memory (%s%s); using the wire", url, exc, hint)
            candidate.close()
            return None
        channel.pool = candidate
        return candidate

    def endpoint_ready(self, url: str, model: str) -> bool:
        """The endpoint is live with every served model of deployment ``model`` READY."""
        channel = self.channels.acquire(url)
        headers, timeout = self.options.headers, self.options.timeout
        try:
            return channel.client.is_server_ready(headers=headers, client_timeout=timeout) and all(
                channel.client.is_model_ready(spec.served_name(model), headers=headers, client_timeout=timeout)
                for spec in C.MODEL_SPECS
            )
        except InferenceServerException:
            self.channels.renew(url, channel)
            return False
        finally:
            self.channels.release(channel)

    def admin(self, url: str):
        """The endpoint's current tritonclient (for configuration and statistics queries)."""
        return self.channels.current(url).client

    def close(self) -> None:
        self.channels.close()


NUMPY_DTYPES = {w: d for d, w in C.WIRE_DTYPES.items()}


class AsyncTransport:
    """The asyncio transport (``tritonclient.grpc.aio``): the same plan, errors and re-send."""

    def __init__(self, urls: Sequence[str], options: TransportOptions, **client_kwargs):
        import tritonclient.grpc.aio as grpcaio

        self.endpoints = Endpoints(urls, options.down_seconds)
        self.options = options
        self.channels = Channels(
            urls, lambda url: grpcaio.InferenceServerClient(url, **client_kwargs), lambda client: client.close()
        )
        self.versions = ContractVersions()

    async def call(self, call: Call) -> Dict[str, np.ndarray]:
        import asyncio

        options = self.options
        plan = attempts(self.endpoints, call.image_id, options.timeout, options.retries, options.backoff)
        step = next(plan)
        while True:
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                step = next(plan)
                continue
            try:
                return await self._attempt(step.url, call, step.deadline)
            except FAIL_OVER as error:
                step = plan.send(error)
            finally:
                await self._finish_closing()

    async def _attempt(self, url: str, call: Call, deadline: float) -> Dict[str, np.ndarray]:
        await self._check_contract(url, call, deadline)
        try:
            return await self._send_or_resend(url, call, deadline)
        except ModelNotReady as error:
            raise _not_serving(url, error, await self._server_ready(url, deadline), self.versions) from None
        except ServerUnavailable:
            self.versions.forget(url)
            raise

    async def _send_or_resend(self, url: str, call: Call, deadline: float) -> Dict[str, np.ndarray]:
        try:
            return await self._send(url, call, deadline)
        except ImageNotCached:
            if not await self._model_ready(url, call, deadline):
                raise _model_missing(call, url) from None
            if call.resend is None:
                raise
            logger.info("samtriton: %s holds no embedding for %s; sending the image again", url, call.image_id)
            await self._send(url, call.resend, deadline)
            return await self._send(url, call, deadline)

    async def _check_contract(self, url: str, call: Call, deadline: float) -> None:
        known, config = self.versions.known(url, call.model_name), None
        if known is None:
            channel = self.channels.acquire(url)
            try:
                response = await channel.client.get_model_config(
                    call.model_name, headers=self.options.headers, client_timeout=_remaining(deadline)
                )
                config = response.config
            except InferenceServerException:
                return  # unreachable, or no such model: the request itself says which
            finally:
                self.channels.release(channel)
        self.versions.check(url, call.model_name, known, config)

    async def _model_ready(self, url: str, call: Call, deadline: float) -> bool:
        channel = self.channels.acquire(url)
        try:
            return await channel.client.is_model_ready(
                call.model_name, headers=self.options.headers, client_timeout=_remaining(deadline)
            )
        except InferenceServerException:
            return False
        finally:
            self.channels.release(channel)

    async def _server_ready(self, url: str, deadline: float) -> bool:
        channel = self.channels.acquire(url)
        try:
            return await channel.client.is_server_ready(
                headers=self.options.headers, client_timeout=_remaining(deadline)
            )
        except InferenceServerException:
            return False
        finally:
            self.channels.release(channel)

    async def _send(self, url: str, call: Call, deadline: float) -> Dict[str, np.ndarray]:
        inputs = []
        for name, array in call.arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), C.WIRE_DTYPES[array.dtype])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        requested = [grpcclient.InferRequestedOutput(name) for name in call.outputs]
        channel = self.channels.acquire(url)
        try:
            result = await channel.client.infer(
                call.model_name,
                inputs,
                outputs=requested,
                headers=call.headers(self.options.headers),
                client_timeout=_remaining(deadline),
            )
            return {name: result.as_numpy(name) for name in call.outputs}
        except InferenceServerException as exc:
            raise _send_failed(self.channels, channel, exc, call, url, self.options.timeout) from None
        finally:
            self.channels.release(channel)

    async def _finish_closing(self) -> None:
        closing, self.channels.closing = self.channels.closing, []
        for awaitable in closing:
            try:
                await awaitable
            except Exception:  # noqa: BLE001 - a channel to a dead server may fail to close cleanly
                pass

    async def close(self) -> None:
        self.channels.close()
        await self._finish_closing()


class Deployment:
    """One deployment ``model`` on one or more Triton endpoints, and the transport that
    reaches it: what ``TritonSam`` (blocking) and ``AsyncSamPredictor`` (asyncio) share.

    url: "host:port", a comma-separated list of them, or a list; model: the deployment name
    (the served models are NAME_encoder, NAME_decoder, ...); timeout: each call's deadline,
    seconds; headers: gRPC metadata sent with every call; retries: how many times a call is
    retried when every endpoint is unreachable, ``backoff`` seconds apart at first (doubled
    each time, with jitter); down_seconds: how long an endpoint that failed is skipped;
    client_kwargs: the transport's own options (``shared_memory`` for the blocking one) and
    tritonclient's ``InferenceServerClient`` arguments.
    """

    transport_class: Any = Transport

    def __init__(
        self,
        url: Union[str, Sequence[str]] = DEFAULT_URL,
        model: str = C.DEFAULT_MODEL_NAME,
        timeout: float = DEFAULT_TIMEOUT_S,
        headers: Optional[Dict[str, str]] = None,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
        down_seconds: float = DEFAULT_DOWN_SECONDS,
        **client_kwargs,
    ):
        self.urls = parse_urls(url)
        self.model = model
        self.options = TransportOptions(timeout, headers, retries, backoff, down_seconds)
        self.transport = self.transport_class(self.urls, self.options, **client_kwargs)

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    @property
    def timeout(self) -> float:
        return self.options.timeout

    @property
    def endpoint_failures(self) -> List[Tuple[str, str]]:
        """(url, reason) of each failed attempt, oldest first."""
        return self.transport.endpoints.failures


__all__ = (
    "Attempt",
    "AsyncTransport",
    "Call",
    "Channels",
    "ContractVersions",
    "Deployment",
    "Endpoints",
    "Pause",
    "Transport",
    "TransportOptions",
    "attempts",
    "endpoints_from_dns",
    "make_call",
    "parse_urls",
    "rendezvous_order",
    "translate",
)
