"""The transport's logic on its own: rendezvous ranking, the attempt plan, error mapping by
status code, channel replacement. (The real-server behaviour is in test_scaleout.py.)"""

import random
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from samtriton import ImageNotCached, InvalidInput, ModelNotReady, RequestTimeout, ServerError, ServerUnavailable, calls
from samtriton import contract as C
from samtriton.transport import (
    Attempt,
    Channels,
    Endpoints,
    Pause,
    attempts,
    endpoints_from_dns,
    make_call,
    parse_urls,
    rendezvous_order,
    translate,
)

# `pytest -m unit`: no server is started and nothing is exported here.
pytestmark = pytest.mark.unit

URLS = [f"10.0.0.{i}:8001" for i in range(1, 6)]


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=2, max_value=8), st.randoms(use_true_random=False))
def test_removing_an_endpoint_moves_only_its_images(count, rng):
    urls = [f"replica-{i}:8001" for i in range(count)]
    keys = [f"{rng.getrandbits(128):032x}" for _ in range(300)]
    gone = rng.choice(urls)
    rest = [u for u in urls if u != gone]
    for key in keys:
        before, after = rendezvous_order(key, urls)[0], rendezvous_order(key, rest)[0]
        if before != gone:
            assert after == before, "an image whose replica stayed does not move"
        else:
            assert after == rendezvous_order(key, urls)[1], "it moves to its next replica"


def test_adding_an_endpoint_moves_only_what_it_now_owns():
    keys = [f"{random.Random(7).getrandbits(128) + i:032x}" for i in range(2000)]
    grown = URLS + ["10.0.0.9:8001"]
    moved = [k for k in keys if rendezvous_order(k, URLS)[0] != rendezvous_order(k, grown)[0]]
    assert all(rendezvous_order(k, grown)[0] == "10.0.0.9:8001" for k in moved)
    assert 0.1 < len(moved) / len(keys) < 0.25, "about 1/6 of the images move to the new replica"
    owners = [rendezvous_order(k, URLS)[0] for k in keys]
    assert min(owners.count(u) for u in URLS) > 0.8 * len(keys) / len(URLS), "images spread evenly"


def test_order_puts_endpoints_that_are_down_last_keeping_the_ranking():
    endpoints = Endpoints(URLS, down_seconds=60)
    ranking = rendezvous_order("f" * 32, URLS)
    endpoints.mark_down(ranking[0], ServerUnavailable("gone"))
    assert endpoints.order("f" * 32) == ranking[1:] + ranking[:1]
    rotation = [endpoints.order()[0] for _ in range(8)]
    assert ranking[0] not in rotation and len(set(rotation)) == 4, "stateless requests rotate over the rest"


def test_the_plan_fails_over_then_backs_off_only_for_unreachable():
    endpoints = Endpoints(URLS[:2], down_seconds=60)
    plan = attempts(endpoints, "a" * 32, timeout=30, retries=2, backoff=0.01)
    first = next(plan)
    assert isinstance(first, Attempt) and first.url == rendezvous_order("a" * 32, URLS[:2])[0]
    second = plan.send(ServerUnavailable("refused"))
    assert isinstance(second, Attempt) and second.url != first.url
    assert isinstance(plan.send(ServerUnavailable("refused")), Pause)
    assert isinstance(next(plan), Attempt)
    # A missing model on every endpoint is raised at once, without waiting.
    plan = attempts(Endpoints(URLS[:2]), None, timeout=30, retries=2, backoff=0.01)
    next(plan)
    plan.send(ModelNotReady("not loaded"))
    with pytest.raises(ModelNotReady):
        plan.send(ModelNotReady("not loaded"))
    # Other errors are not the plan's to retry.
    plan = attempts(Endpoints(URLS[:2]), None, timeout=30, retries=2, backoff=0.01)
    next(plan)
    with pytest.raises(InvalidInput):
        plan.send(InvalidInput("point_coords: ..."))


@pytest.mark.timeout(60)
def test_the_plan_stops_at_its_deadline():
    """100 retries with backoff would pause for ages; the 0.05 s deadline ends the plan
    (~0.05 s; 1 s bound for a loaded machine)."""
    plan = attempts(Endpoints(URLS[:1]), None, timeout=0.05, retries=100, backoff=0.01)
    step, start = next(plan), time.monotonic()
    with pytest.raises(ServerUnavailable):
        for _ in range(2 * 101):  # an attempt and a pause per retry, at most
            step = plan.send(ServerUnavailable("refused")) if isinstance(step, Attempt) else next(plan)
            if isinstance(step, Pause):
                time.sleep(min(step.seconds, 1.0))
    assert time.monotonic() - start < 1.0


def _source():
    import numpy as np

    return calls.ImageSource(np.zeros((1024, 1024, 3), np.uint8), input_size=(1024, 768), original_size=(600, 450))


@pytest.mark.parametrize(
    "status, expected",
    [
        ("StatusCode.UNAVAILABLE", ServerUnavailable),
        ("StatusCode.DEADLINE_EXCEEDED", RequestTimeout),
        ("StatusCode.INVALID_ARGUMENT", InvalidInput),
        ("StatusCode.INTERNAL", ServerError),
        ("StatusCode.UNKNOWN", ServerError),
    ],
)
def test_errors_map_by_status_code_not_text(status, expected):
    import numpy as np

    call = calls.encode("sam", np.zeros((1, 1024, 1024, 3), np.uint8), np.array([[1024, 1024]]))
    # The message says something else entirely: only the code decides.
    error = translate(
        InferenceServerException("unknown image_id; connection refused; expected", status), call, "h:1", 5.0
    )
    assert type(error) is expected


def test_not_found_is_an_unknown_image_only_for_a_request_on_a_stored_image():
    import numpy as np

    source = _source()
    image_id = source.image_id
    prompts = {C.POINT_COORDS.name: np.zeros((1, 2, 2), np.float32), C.POINT_LABELS.name: np.ones((1, 2), np.float32)}
    click = calls.session_decode("sam", image_id, prompts, True, source=source)
    assert click.resend is not None and click.resend.image_id == image_id
    not_found = InferenceServerException("whatever", "StatusCode.NOT_FOUND")
    assert isinstance(translate(not_found, click, "h:1", 5.0), ImageNotCached)
    # The request that carries the image cannot miss it: NOT_FOUND there is the model.
    assert isinstance(translate(not_found, click.resend, "h:1", 5.0), ModelNotReady)


def test_a_replaced_channel_is_closed_only_after_its_last_request():
    closed = []
    channels = Channels(["h:1"], make_client=lambda url: object(), close_client=closed.append)
    in_flight = channels.acquire("h:1")
    channels.renew("h:1", in_flight)  # a request saw the endpoint fail
    assert channels.current("h:1") is not in_flight, "new requests get a fresh channel"
    assert closed == [], "not closed under the request still using it"
    channels.renew("h:1", in_flight)  # a second failure of the same old channel: no second replacement
    replacement = channels.current("h:1")
    channels.release(in_flight)
    assert closed == [in_flight.client]
    assert channels.current("h:1") is replacement


def test_urls_and_dns():
    assert parse_urls("a:1, b:2") == ["a:1", "b:2"]
    with pytest.raises(InvalidInput, match="url"):
        parse_urls(" , ")
    with pytest.raises(InvalidInput, match="each endpoint once"):
        parse_urls(["a:1", "a:1"])
    assert "127.0.0.1:8001" in endpoints_from_dns("localhost:8001")
    with pytest.raises(InvalidInput, match="host_port"):
        endpoints_from_dns("localhost")


class _FakeResult:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays[name]


class _FakeClient:
    """A tritonclient stand-in: the first endpoint is unreachable, the second answers."""

    def __init__(self, url, log):
        self.url, self.log = url, log

    def get_model_config(self, name, headers=None, client_timeout=None):
        raise InferenceServerException("no config here")  # the request itself says what is wrong

    def infer(self, name, inputs, outputs=None, headers=None, client_timeout=None):
        self.log.append((self.url, name))
        if self.url == "h:1":
            raise InferenceServerException("down", status="StatusCode.UNAVAILABLE")
        return _FakeResult({o.name(): np.array([float(len(inputs))], np.float32) for o in outputs})

    def close(self):
        return None


class _AsyncFakeClient(_FakeClient):
    async def get_model_config(self, *args, **kwargs):
        return super().get_model_config(*args, **kwargs)

    async def infer(self, *args, **kwargs):
        return super().infer(*args, **kwargs)


def _fake_exchange(client_class, log):
    from samtriton.exchange import Exchange
    from samtriton.options import ConnectionOptions

    return Exchange(["h:1", "h:2"], ConnectionOptions(timeout=5.0), lambda url: client_class(url, log))


def _encode_call():
    tensors = {C.IMAGE.name: np.zeros((1, 1024, 1024, 3), np.uint8), C.INPUT_SIZE.name: np.array([[4, 4]])}
    return make_call(C.ENCODER, "sam", tensors)


def test_one_exchange_driven_blocking_and_asyncio_makes_the_same_calls():
    import asyncio

    from samtriton.transport import run, run_async

    blocking_log, async_log = [], []
    blocking = _fake_exchange(_FakeClient, blocking_log)
    asynchronous = _fake_exchange(_AsyncFakeClient, async_log)
    out = run(blocking.steps(_encode_call()))
    async_out = asyncio.run(run_async(asynchronous.steps(_encode_call())))
    assert blocking_log == async_log == [("h:1", "sam_encoder"), ("h:2", "sam_encoder")], "failed over once"
    assert out.keys() == async_out.keys() == {C.IMAGE_EMBEDDINGS.name}
    assert blocking.bytes_sent == asynchronous.bytes_sent > 1024**2 * 3, "the wire bytes are counted by both"
    assert [u for u, _ in blocking.endpoints.failures] == [u for u, _ in asynchronous.endpoints.failures] == ["h:1"]


def test_unknown_options_are_a_type_error_naming_them_and_the_client():
    from samtriton import AsyncSamPredictor, SamPredictor, TritonSam

    for client in (SamPredictor, TritonSam, AsyncSamPredictor):
        with pytest.raises(TypeError, match=rf"{client.__name__} got unknown option\(s\) 'bogus'"):
            client("127.0.0.1:1", model="sam", bogus=True)


def test_every_option_is_accepted_by_the_asyncio_client_too():
    import asyncio

    from samtriton import AsyncSamPredictor
    from samtriton.options import OPTION_NAMES

    async def make():
        sam = AsyncSamPredictor(
            "127.0.0.1:1", model="sam", shared_memory=True, admin_key="k" * 20, ssl=False, verbose=False, retries=0
        )
        await sam.close()
        return sam

    sam = asyncio.run(make())
    assert sam.options.shared_memory and sam.options.admin_key == "k" * 20 and sam.options.retries == 0
    assert {"timeout", "headers", "shared_memory", "admin_key", "ssl", "root_certificates"} <= OPTION_NAMES


def test_a_cancelled_asyncio_call_releases_its_channel():
    import asyncio

    from samtriton.transport import run_async

    class Hanging(_AsyncFakeClient):
        async def infer(self, *args, **kwargs):
            await asyncio.sleep(60)

    exchange = _fake_exchange(Hanging, [])

    async def cancel():
        task = asyncio.create_task(run_async(exchange.steps(_encode_call())))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel())
    assert all(exchange.channels.current(url).users == 0 for url in ("h:1", "h:2")), "released on cancel"
