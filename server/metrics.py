"""samtriton's custom Triton metrics: what an operator watches, on the server's own /metrics.

Triton exports these next to its ``nv_*`` metrics (python backend ``pb_utils.MetricFamily``);
every instance of a model adds to the same series (label ``model``, the served model's name).

Session cache (any cache, see ``CacheMetrics``):
- ``samtriton_cache_hits_total``: requests that found their image's embedding cached.
- ``samtriton_cache_misses_total``: requests that did not (a new image, or a click on an id
  never set here or evicted: the client then sends the image again, a second miss).
- ``samtriton_cache_evictions_total``: embeddings removed to keep the cache within its budget.
- ``samtriton_cache_bytes`` (gauge): bytes the cache holds now.
- ``samtriton_cache_flight_waits_total``: requests that waited for another request's encode
  of the same image and used its result: the encodes single flight saved.
- ``samtriton_encodes_total``: images encoded and stored.

Stages:
- ``samtriton_request_seconds`` (histogram, buckets ``REQUEST_BUCKETS``): seconds one request
  spends in a stage, per model (encoder: the batch it ran in; session, decoder, AMG: its own).
- ``samtriton_amg_decode_seconds`` / ``samtriton_amg_filter_seconds`` (``runtime.AmgTimes``).

Reporting from a cache (the session stage's file cache, or a GPU cache of another backend)::

    metrics = CacheMetrics(model_name)
    metrics.hit()          # a lookup found the entry
    metrics.miss()         # a lookup did not
    metrics.flight_wait()  # waited for another encode of the same image and used it
    metrics.encoded()      # encoded and stored an entry
    metrics.evicted(n)     # removed n entries for room
    metrics.set_bytes(b)   # the cache holds b bytes now

Each call also counts in ``counts`` (a dict) in this process. Outside Triton (tests, tools), or
with metrics off (``--allow-metrics=false``), only ``counts`` moves. No Triton import at
module level: ``triton_python_backend_utils`` is imported when the first metric is made.
"""

import threading
import time
from contextlib import contextmanager

HITS = "samtriton_cache_hits_total"
MISSES = "samtriton_cache_misses_total"
EVICTIONS = "samtriton_cache_evictions_total"
BYTES = "samtriton_cache_bytes"
FLIGHT_WAITS = "samtriton_cache_flight_waits_total"
ENCODES = "samtriton_encodes_total"
REQUEST_SECONDS = "samtriton_request_seconds"
# Seconds: a click takes tens of ms, an encode about a second on a CPU, AMG up to minutes.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

DESCRIPTIONS = {
    HITS: "session cache lookups that found the image's embedding",
    MISSES: "session cache lookups that did not find the image's embedding",
    EVICTIONS: "embeddings removed from the session cache to stay within its budget",
    BYTES: "bytes held by the session cache",
    FLIGHT_WAITS: "requests that waited for another request's encode of the same image (encodes saved)",
    ENCODES: "images encoded and stored by the session stage",
    REQUEST_SECONDS: "seconds one request spends in a samtriton stage",
}
GAUGES = (BYTES,)
HISTOGRAMS = (REQUEST_SECONDS,)

_lock = threading.Lock()
_families = {}  # name -> pb_utils.MetricFamily, or None where metrics are unavailable
_metrics = {}  # (name, model) -> pb_utils.Metric, or None


def _triton_metric(name, model):
    """The Triton metric ``name`` for ``model`` (made once per process), or None outside
    Triton or with metrics off."""
    key = (name, model)
    with _lock:
        if key in _metrics:
            return _metrics[key]
        metric = None
        try:
            import triton_python_backend_utils as pb_utils

            if name not in _families:
                kind = (
                    pb_utils.MetricFamily.GAUGE
                    if name in GAUGES
                    else pb_utils.MetricFamily.HISTOGRAM
                    if name in HISTOGRAMS
                    else pb_utils.MetricFamily.COUNTER
                )
                _families[name] = pb_utils.MetricFamily(name=name, description=DESCRIPTIONS[name], kind=kind)
            family = _families[name]
            if family is not None:
                labels = {"model": model}
                metric = (
                    family.Metric(labels=labels, buckets=list(REQUEST_BUCKETS))
                    if name in HISTOGRAMS
                    else family.Metric(labels=labels)
                )
        except Exception:  # noqa: BLE001 - not in a stub, or metrics off: count in memory only
            _families.setdefault(name, None)
            metric = None
        _metrics[key] = metric
        return metric


class CacheMetrics:
    """A cache's counters and its size, for one served model (see the module docstring)."""

    def __init__(self, model_name):
        self.model = model_name
        self.counts = {HITS: 0, MISSES: 0, EVICTIONS: 0, FLIGHT_WAITS: 0, ENCODES: 0, BYTES: 0}
        self._lock = threading.Lock()
        if model_name is not None:  # every series from the start, at 0: rates and ratios need them
            for name in self.counts:
                _triton_metric(name, model_name)

    def _add(self, name, value=1):
        with self._lock:
            self.counts[name] += value
        metric = _triton_metric(name, self.model) if self.model is not None else None
        if metric is not None:
            metric.increment(value)

    def hit(self):
        self._add(HITS)

    def miss(self):
        self._add(MISSES)

    def flight_wait(self):
        self._add(FLIGHT_WAITS)

    def encoded(self):
        self._add(ENCODES)

    def evicted(self, count=1):
        if count > 0:
            self._add(EVICTIONS, count)

    def set_bytes(self, value):
        with self._lock:
            self.counts[BYTES] = int(value)
        metric = _triton_metric(BYTES, self.model) if self.model is not None else None
        if metric is not None:
            metric.set(float(value))


def observe_request(model_name, seconds, count=1):
    """Records ``count`` requests of ``model_name`` that took ``seconds`` each."""
    metric = _triton_metric(REQUEST_SECONDS, model_name)
    if metric is not None:
        for _ in range(count):
            metric.observe(seconds)


@contextmanager
def timed(model_name, count=1):
    """Times the block as ``count`` requests of ``model_name`` (a batch: each waited for all)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        observe_request(model_name, time.perf_counter() - start, count)


def timed_call(model_name, count, function, *args):
    """``function(*args)``, timed as ``count`` requests of ``model_name``."""
    with timed(model_name, count):
        return function(*args)
