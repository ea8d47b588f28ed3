"""Draining a running tritonserver before it stops: the requests in flight finish, new ones
are refused, and clients fail over to other replicas.

Triton 2.51's SIGTERM does not drain: it stops the encoder under an in-flight session
request, whose encode then fails. Draining first unloads the models clients call (the
server's strict readiness goes false, so load balancers and Kubernetes take the replica out;
new requests get NOT_FOUND, which samtriton's client fails over on), waits until they are
gone, then unloads the models they call (encoder, decoder, AMG filter). Only Triton's HTTP
repository API is used, so it works on any tritonserver started with explicit model
control: ``EmbeddedTriton.stop`` and ``samtriton drain`` (a Kubernetes preStop hook for
NVIDIA's container).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

from samtriton import admin_key as keys
from samtriton import contract as C

# Seconds a stopping server gives requests in flight, per phase (``samtriton serve
# --drain-timeout``, ``samtriton drain --timeout``); an orchestrator's grace period must
# exceed twice this plus ~10 s.
DEFAULT_DRAIN_TIMEOUT_S = 30.0
# Models that other stages call through BLS or an ensemble: unloaded last.
CALLED_SUFFIXES = (C.ENCODER.suffix, C.DECODER.suffix, C.AMG_FILTER.suffix)


class AdminKeyRefused(RuntimeError):
    """The server refused the repository API: no admin key was sent, or not its key."""


def _http(http_url: str, path: str, key: Optional[str], body: Optional[dict] = None, timeout: float = 10.0):
    """A POST (``body``) or GET to Triton's HTTP API at ``http_url`` ("host:port") with the
    admin ``key`` (or None); the JSON. ``AdminKeyRefused`` on HTTP 403 (Triton's answer to a
    restricted API called without its key)."""
    data = None if body is None else json.dumps(body).encode()
    method = "GET" if body is None else "POST"
    request = urllib.request.Request(
        f"http://{http_url}{path}", data=data, method=method, headers=keys.http_headers(key)
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        if exc.code != 403:
            raise
        raise AdminKeyRefused(
            f"{http_url} refused {path} ({exc.read().decode(errors='replace').strip()}): send the admin key the "
            f"server was started with (--admin-key-file, {keys.ADMIN_KEY_FILE_ENV} or {keys.ADMIN_KEY_ENV})"
        ) from None
    return json.loads(text) if text else None


def model_states(http_url: str, key: Optional[str]) -> Dict[str, str]:
    """{model name: state} from the repository index of the server at ``http_url``
    ("READY", "UNLOADING", "UNAVAILABLE", ...); ``key``: the server's admin key."""
    return {m["name"]: m.get("state", "") for m in _http(http_url, "/v2/repository/index", key, {})}


def drain(http_url: str, timeout: float, key: Optional[str]) -> bool:
    """Unloads every loaded model of the server at ``http_url`` ("host:port" of Triton's HTTP
    API) in two phases, callers then called models, each bounded by ``timeout`` seconds;
    ``key``: the server's admin key (the repository API is restricted to it). The server
    keeps running. True when everything unloaded in time; False when it did not, or when the
    server does not answer (then nothing is left in flight to wait for). A refused key raises
    ``AdminKeyRefused``: nothing was unloaded."""
    try:
        loaded = [name for name, state in model_states(http_url, key).items() if state in ("READY", "LOADING")]
    except (OSError, ValueError):
        return False
    called = [m for m in loaded if m.endswith(CALLED_SUFFIXES)]
    callers = [m for m in loaded if m not in called]
    return all(_unload(http_url, phase, timeout, key) for phase in (callers, called) if phase)


def _unload(http_url: str, models: List[str], timeout: float, key: Optional[str]) -> bool:
    deadline = time.monotonic() + timeout
    try:
        for model in models:
            _http(http_url, f"/v2/repository/models/{model}/unload", key, {})
        while time.monotonic() < deadline:
            states = model_states(http_url, key)
            if not any(states.get(m) in ("READY", "LOADING", "UNLOADING") for m in models):
                return True
            time.sleep(0.05)
    except (OSError, ValueError):
        pass  # the server went away: nothing left in flight
    return False
