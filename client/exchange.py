"""One call as a sans-IO generator, written once for the blocking and asyncio transports.

``Exchange.steps`` yields the operations a call makes (an ``Op``: a tritonclient method to
call, or a ``Pause`` to sleep) and receives each one's result, or its exception thrown in at
the ``yield``; it returns the call's outputs. A driver (``transport.run`` blocking,
``transport.run_async`` asyncio) does the waiting and sending: that is all the two
transports differ in. The fail-over behaviour it implements is described once, in
``samtriton.transport``'s docstring.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Generator, List, Optional, Sequence, Union

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from . import admin_key as keys
from . import contract as C
from .attempts import FAIL_OVER, Pause, attempts, remaining
from .channels import Channels, TritonClient, _Channel
from .endpoints import Endpoints
from .errors import ImageNotCached, ModelNotReady, SamTritonError, ServerUnavailable
from .options import ConnectionOptions
from .shared_memory import MIN_SHARED_BYTES, Region, SharedMemoryPool, is_local
from .versions import ContractVersions
from .wire import NUMPY_DTYPES, Call, nbytes, translate

logger = logging.getLogger("samtriton")


@dataclass(frozen=True)
class Op:
    """Call ``client.method(*args, **kwargs)`` (awaited with an asyncio client)."""

    client: TritonClient
    method: str
    args: tuple = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)


# What an exchange yields, and what it is sent back.
Steps = Generator[Union[Op, Pause], Any, Any]


class Exchange:
    """The endpoints, channels, contract versions and byte counters of one client, and the
    steps of each call on them (the I/O is its driver's).

    Arguments:
      urls: the endpoints ("host:port").
      options: the client's ``ConnectionOptions``.
      make_client: a tritonclient ``InferenceServerClient`` for a url (default: ``new_client``,
        which each transport defines).
    """

    def __init__(self, urls: Sequence[str], options: ConnectionOptions, make_client=None):
        self.endpoints = Endpoints(urls, options.down_seconds)
        self.options = options
        self.shared_memory = options.shared_memory
        admin_key = options.shared_memory_key()
        # Sent with (un)registrations only: inference calls never carry the key.
        self._shared_memory_headers = {**(options.headers or {}), **keys.grpc_headers(admin_key)}
        self._has_admin_key = admin_key is not None
        self.channels = Channels(urls, make_client or self.new_client, lambda client: client.close())
        self.versions = ContractVersions()
        self._lock = threading.Lock()
        # Bytes of tensors that crossed the wire (shared-memory tensors are not counted).
        self.bytes_sent = 0
        self.bytes_received = 0

    def new_client(self, url: str) -> TritonClient:
        """A tritonclient ``InferenceServerClient`` for ``url`` (blocking or asyncio)."""
        raise NotImplementedError

    def _op(self, channel: _Channel, method: str, *args, deadline: Optional[float] = None, **kwargs) -> Op:
        """``method`` on ``channel``'s client, with the client's headers and the time left."""
        timeout = remaining(deadline) if deadline is not None else self.options.timeout
        kwargs.setdefault("headers", self.options.headers)
        return Op(channel.client, method, args, dict(kwargs, client_timeout=timeout))

    def steps(self, call: Call) -> Steps:
        """The steps of ``call``: its attempts, as the plan orders them."""
        options = self.options
        plan = attempts(self.endpoints, call.image_id, options.timeout, options.retries, options.backoff)
        step = next(plan)
        while True:
            if isinstance(step, Pause):
                yield step
                step = next(plan)
                continue
            try:
                return (yield from self._attempt(step.url, call, step.deadline))
            except FAIL_OVER as error:
                step = plan.send(error)

    def _attempt(self, url: str, call: Call, deadline: float) -> Steps:
        yield from self._check_contract(url, call, deadline)
        try:
            return (yield from self._send_or_resend(url, call, deadline))
        except ModelNotReady as error:
            server_ready = yield from self._asks(url, "is_server_ready", deadline=deadline)
            raise _not_serving(url, error, server_ready, self.versions) from None
        except ServerUnavailable:
            self.versions.forget(url)
            raise

    def _send_or_resend(self, url: str, call: Call, deadline: float) -> Steps:
        try:
            return (yield from self._send(url, call, deadline))
        except ImageNotCached:
            if not (yield from self._asks(url, "is_model_ready", call.model_name, deadline=deadline)):
                raise _model_missing(call, url) from None  # not the image: the model (draining?)
            if call.resend is None:
                raise
            logger.info("samtriton: %s holds no embedding for %s; sending the image again", url, call.image_id)
            yield from self._send(url, call.resend, deadline)
            return (yield from self._send(url, call, deadline))

    def _check_contract(self, url: str, call: Call, deadline: float) -> Steps:
        """Raises ``ContractMismatch`` for an endpoint of another major contract version."""
        known, config = self.versions.known(url, call.model_name), None
        if known is None:
            channel = self.channels.acquire(url)
            try:
                config = (yield self._op(channel, "get_model_config", call.model_name, deadline=deadline)).config
            except InferenceServerException:
                return  # unreachable, or no such model: the request itself says which
            finally:
                self.channels.release(channel)
        self.versions.check(url, call.model_name, known, config)

    def _asks(self, url: str, method: str, *args, deadline: float) -> Steps:
        """The answer of a readiness question (``is_server_ready``, ``is_model_ready``); False
        when it cannot be asked."""
        channel = self.channels.acquire(url)
        try:
            return bool((yield self._op(channel, method, *args, deadline=deadline)))
        except InferenceServerException:
            return False
        finally:
            self.channels.release(channel)

    def _send(self, url: str, call: Call, deadline: float) -> Steps:
        channel = self.channels.acquire(url)
        try:
            return (yield from self._infer(channel, url, call, deadline))
        except InferenceServerException as exc:
            raise _send_failed(self.channels, channel, exc, call, url, self.options.timeout) from None
        finally:
            self.channels.release(channel)

    def _infer(self, channel: _Channel, url: str, call: Call, deadline: float) -> Steps:
        pool = yield from self._pool(channel, url)
        held: List[Region] = []
        shared_out: Dict[str, Region] = {}
        inputs, wire_sent = [], 0
        try:
            for name, array in call.arrays.items():
                tensor = grpcclient.InferInput(name, list(array.shape), C.WIRE_DTYPES[array.dtype])
                if pool is not None and array.dtype != object and array.nbytes >= MIN_SHARED_BYTES:
                    region = yield from self._checkout(channel, pool, array.nbytes)
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
                    region = yield from self._checkout(channel, pool, call.output_bytes[name])
                    held.append(region)
                    output.set_shared_memory(region.name, region.byte_size)
                    shared_out[name] = region
                requested.append(output)
            headers = call.headers(self.options.headers)
            op = self._op(
                channel, "infer", call.model_name, inputs, outputs=requested, headers=headers, deadline=deadline
            )
            result = yield op
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

    @staticmethod
    def _checkout(channel: _Channel, pool: SharedMemoryPool, byte_size: int) -> Steps:
        """A registered region of ``pool`` for ``byte_size`` bytes (registering a new one)."""
        region = pool.take(byte_size)
        if region is not None:
            return region
        region = pool.create(byte_size)
        args, kwargs = pool.registration(region)
        try:
            yield Op(channel.client, "register_system_shared_memory", args, kwargs)
        except BaseException:
            pool.discard(region)
            raise
        pool.add(region)
        return region

    def _pool(self, channel: _Channel, url: str) -> Steps:
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
            # Proves the server can map our regions.
            candidate.release([(yield from self._checkout(channel, candidate, MIN_SHARED_BYTES))])
        except Exception as exc:  # noqa: BLE001 - any failure means: use the wire
            hint = (
                ""
                if self._has_admin_key
                else f"; samtriton's servers allow it only with their admin key: pass admin_key= or set "
                f"{keys.ADMIN_KEY_FILE_ENV} / {keys.ADMIN_KEY_ENV}"
            )
            logger.warning("samtriton: %s refused system shared memory (%s%s); using the wire", url, exc, hint)
            candidate.close()  # holds no region: the refused one was freed
            return None
        channel.pool = candidate
        return candidate

    def ready_steps(self, url: str, model: str) -> Steps:
        """The steps of asking whether the endpoint is live with every served model of deployment ``model`` READY."""
        channel = self.channels.acquire(url)
        try:
            if not (yield self._op(channel, "is_server_ready")):
                return False
            for spec in C.MODEL_SPECS:
                if not (yield self._op(channel, "is_model_ready", spec.served_name(model))):
                    return False
            return True
        except InferenceServerException:
            self.channels.renew(url, channel)
            return False
        finally:
            self.channels.release(channel)


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
    channels: Channels, channel: _Channel, exc: InferenceServerException, call: Call, url: str, timeout: float
) -> SamTritonError:
    """A failed send as samtriton's error; an unreachable endpoint gets a fresh channel."""
    error = translate(exc, call, url, timeout)
    if isinstance(error, ServerUnavailable):
        channels.renew(url, channel)
    return error
