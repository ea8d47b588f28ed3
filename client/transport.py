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
  ``down_seconds`` and the request goes to the next endpoint in its order at once; each
  failure is kept in the client's ``endpoint_failures`` (and, with several endpoints, logged
  on the "samtriton" logger). Every call has a deadline (``timeout`` seconds); when every
  endpoint was unreachable the call is retried, at most ``retries`` times and never past its
  deadline, after an exponential backoff (``backoff`` seconds, doubled each retry, times a
  random jitter of 0.5-1.5), then ``ServerUnavailable`` is raised. A model missing on a ready
  server (``ModelNotReady``) is not waited for. Every request is idempotent, so retrying is
  safe.
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
- Readiness: an endpoint is ready when its server is live and every served model of the
  deployment (each of ``contract.MODEL_SPECS``) is READY (``endpoint_ready``); a blocking
  client's ``is_ready`` is True when one of its endpoints is.

This docstring is the one description of fail-over; the modules it is built from:
``endpoints`` (parsing, hashing, health), ``attempts`` (the plan), ``versions`` (contract
versions), ``wire`` (requests, dtypes, errors), ``channels`` (client lifetimes), ``exchange``
(one call's steps, sans-IO) and ``options`` (the connection options). This module drives an
exchange with blocking tritonclient calls (``Transport``) or with ``tritonclient.grpc.aio``
(``AsyncTransport``), and re-exports the names it always had.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tritonclient.grpc as grpcclient

from . import contract as C
from .attempts import FAIL_OVER, Attempt, Pause, attempts, no_compatible_endpoint  # noqa: F401 - re-exported
from .channels import Channels, TritonClient  # noqa: F401 - re-exported
from .endpoints import Endpoints, endpoints_from_dns, logger, parse_urls, rendezvous_order  # noqa: F401
from .exchange import Exchange, Op, Steps
from .options import (  # noqa: F401 - re-exported
    DEFAULT_BACKOFF_S,
    DEFAULT_DOWN_SECONDS,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    ConnectionOptions,
    TransportOptions,
    check_names,
)
from .shared_memory import is_local  # noqa: F401 - re-exported
from .versions import ContractVersions  # noqa: F401 - re-exported
from .wire import NUMPY_DTYPES, Call, make_call, nbytes, request_arrays, translate  # noqa: F401 - re-exported


class _Driven:
    """An exchange's steps, advanced by a driver with each operation's outcome."""

    def __init__(self, steps: Steps):
        self._steps = steps
        self.running, self.result = True, None
        self.op: Any = self._advance(steps.send, None)

    def _advance(self, how, value) -> Any:
        try:
            return how(value)
        except StopIteration as stop:
            self.running, self.result = False, stop.value
            return None

    def feed(self, perform, *args) -> None:
        """Runs ``perform(*args)`` and sends its result (or throws its exception) in."""
        try:
            reply = perform(*args)
        except Exception as exc:  # noqa: BLE001 - the exchange decides what an error means
            self.op = self._advance(self._steps.throw, exc)
        else:
            self.op = self._advance(self._steps.send, reply)

    def close(self) -> None:
        self._steps.close()  # an abandoned call (cancelled, interrupted) releases its channels


def _perform(op: Union[Op, Pause]) -> Any:
    if isinstance(op, Pause):
        return time.sleep(op.seconds)
    return getattr(op.client, op.method)(*op.args, **op.kwargs)


def run(steps: Steps) -> Any:
    """Drives ``steps`` with blocking calls; returns what they return."""
    driven = _Driven(steps)
    try:
        while driven.running:
            driven.feed(_perform, driven.op)
        return driven.result
    finally:
        driven.close()


async def run_async(steps: Steps) -> Any:
    """Drives ``steps`` with awaited calls (``tritonclient.grpc.aio``); returns what they return."""
    driven = _Driven(steps)
    try:
        while driven.running:
            driven.feed(_Outcome.of, await _Outcome.wait(_perform_async(driven.op)))
        return driven.result
    finally:
        driven.close()


async def _perform_async(op: Union[Op, Pause]) -> Any:
    if isinstance(op, Pause):
        return await asyncio.sleep(op.seconds)
    return await getattr(op.client, op.method)(*op.args, **op.kwargs)


class _Outcome:
    """An awaited result or exception, carried to ``_Driven.feed`` (which is synchronous)."""

    def __init__(self, value: Any = None, error: Optional[BaseException] = None):
        self.value, self.error = value, error

    @staticmethod
    async def wait(pending) -> "_Outcome":
        try:
            return _Outcome(await pending)
        except Exception as exc:  # noqa: BLE001 - thrown into the exchange, which decides
            return _Outcome(error=exc)

    @staticmethod
    def of(outcome: "_Outcome") -> Any:
        if outcome.error is not None:
            raise outcome.error
        return outcome.value


class Transport(Exchange):
    """The blocking transport: ``tritonclient.grpc`` clients, each call's steps run in turn.

    Arguments: ``Exchange``'s.
    """

    def new_client(self, url: str) -> TritonClient:
        """A blocking ``tritonclient.grpc.InferenceServerClient`` for ``url``."""
        return grpcclient.InferenceServerClient(url, **self.options.client_arguments())

    def call(self, call: Call) -> Dict[str, np.ndarray]:
        """Sends ``call``, failing over as this module's docstring says; its outputs by name."""
        return run(self.steps(call))

    def endpoint_ready(self, url: str, model: str) -> bool:
        """The endpoint is live with every served model of deployment ``model`` READY."""
        return run(self.ready_steps(url, model))

    def admin(self, url: str):
        """The endpoint's current tritonclient (for configuration and statistics queries)."""
        return self.channels.current(url).client

    def close(self) -> None:
        """Closes every channel (shared-memory regions are unregistered and freed)."""
        self.channels.close()


class AsyncTransport(Exchange):
    """The asyncio transport: ``tritonclient.grpc.aio`` clients, each call's steps awaited.

    Arguments: ``Exchange``'s.
    """

    def new_client(self, url: str) -> TritonClient:
        """A ``tritonclient.grpc.aio.InferenceServerClient`` for ``url``."""
        import tritonclient.grpc.aio as grpcaio  # only asyncio users pay for importing it

        return grpcaio.InferenceServerClient(url, **self.options.client_arguments())

    async def _run(self, steps: Steps) -> Any:
        try:
            return await run_async(steps)
        finally:
            # Channels retired during the call close now, their shared memory first.
            await self._finish_closing()

    async def call(self, call: Call) -> Dict[str, np.ndarray]:
        """``Transport.call``, awaited."""
        return await self._run(self.steps(call))

    async def close(self) -> None:
        """Closes every channel (shared-memory regions are unregistered and freed)."""
        self.channels.close()
        await self._finish_closing()

    async def endpoint_ready(self, url: str, model: str) -> bool:
        """``Transport.endpoint_ready``, awaited."""
        return await self._run(self.ready_steps(url, model))

    async def _finish_closing(self) -> None:
        closing, self.channels.closing = self.channels.closing, []
        for awaitable in closing:
            try:
                await awaitable
            except Exception:  # noqa: BLE001 - a channel to a dead server may fail to close cleanly
                pass


class Deployment:
    """One deployment ``model`` on one or more Triton endpoints, and the transport that
    reaches it: what ``TritonSam`` (blocking) and ``AsyncSamPredictor`` (asyncio) share. How
    requests pick, fail over and retry endpoints: this module's docstring.

    Arguments:
      url: "host:port", a comma-separated list of them, or a list.
      model: the deployment name (the served models are NAME_encoder, NAME_decoder, ...).
      timeout, headers, retries, backoff, down_seconds, options: the fields of
        ``ConnectionOptions`` (``options``: the others, by keyword), the same for every
        client; an unknown one is a ``TypeError`` naming it and the client.
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
        **options,
    ):
        check_names(type(self).__name__, options)
        self.urls = parse_urls(url)
        self.model = model
        self.options = ConnectionOptions(timeout, headers, retries, backoff, down_seconds, **options)
        self.transport = self.transport_class(self.urls, self.options)

    @property
    def url(self) -> str:
        """The endpoints, comma-separated."""
        return ",".join(self.urls)

    @property
    def timeout(self) -> float:
        """Each call's deadline, seconds."""
        return self.options.timeout

    @property
    def endpoint_failures(self) -> List[Tuple[str, str]]:
        """(url, reason) of each failed attempt, oldest first."""
        return self.transport.endpoints.failures

    @property
    def bytes_sent(self) -> int:
        """Bytes of tensors that crossed the wire (shared-memory tensors are not counted)."""
        return self.transport.bytes_sent

    @property
    def bytes_received(self) -> int:
        """Bytes of tensors received over the wire (shared-memory tensors are not counted)."""
        return self.transport.bytes_received


__all__ = (
    "Attempt",
    "AsyncTransport",
    "Call",
    "Channels",
    "ConnectionOptions",
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
