"""The transport's logic on its own: rendezvous ranking, the attempt plan, error mapping by
status code, channel replacement. (The real-server behaviour is in test_scaleout.py.)"""

import random
import time

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
    parse_urls,
    rendezvous_order,
    translate,
)

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

    return dict(padded_image=np.zeros((1024, 1024, 3), np.uint8), input_size=(1024, 768), original_size=(600, 450))


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
    image_id = C.image_id_for(**source)
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
