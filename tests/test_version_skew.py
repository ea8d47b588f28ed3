"""Version skew: every exported model carries the wire contract's version; a client skips a
replica of another major version (one warning naming both versions), never sends it a request
(its own inference statistics stay at zero), and with no compatible replica left raises an
error naming both versions."""

import asyncio
import logging
import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from samtriton import AsyncSamPredictor, ContractMismatch, SamPredictor, ServerUnavailable
from samtriton import contract as C
from samtriton.export.repository import config_text, parse_config
from samtriton.server import EmbeddedTriton
from samtriton.transforms import preprocess, to_rgb_uint8
from samtriton.transport import Attempt, ContractVersions, Endpoints, Pause, attempts, rendezvous_order

SKEWED = "2.0"
POINT = dict(point_coords=np.array([[120.0, 100.0]]), point_labels=np.array([1]))


def _configs(repository):
    return sorted(repository.glob("*/config.pbtxt"))


def test_every_exported_model_carries_the_contract_version(repository):
    configs = _configs(repository)
    assert len(configs) >= 5
    for path in configs:
        parameters = parse_config(path.read_text()).parameters
        assert parameters[C.CONTRACT_VERSION_PARAMETER].string_value == C.CONTRACT_VERSION, path


def _mismatch(url, version=SKEWED):
    return ContractMismatch("skip", url, "m_session", version, C.CONTRACT_VERSION)


@pytest.mark.unit
def test_the_plan_skips_a_mismatched_endpoint_without_marking_it_down():
    urls = ["a:1", "b:1"]
    endpoints = Endpoints(urls, down_seconds=60)
    plan = attempts(endpoints, "e" * 32, timeout=30, retries=2, backoff=0.01)
    first = next(plan)
    second = plan.send(_mismatch(first.url))
    assert isinstance(second, Attempt) and second.url != first.url
    assert endpoints.failures == [], "a skipped endpoint is not a failed one"
    assert isinstance(plan.send(ServerUnavailable("refused")), Pause), "the other one may come back: wait"
    # Every endpoint of another major version: the call fails at once, naming the versions.
    plan = attempts(Endpoints(urls), None, timeout=30, retries=2, backoff=0.01)
    next(plan)
    plan.send(_mismatch("a:1"))
    with pytest.raises(ContractMismatch, match=rf"{C.CONTRACT_VERSION}.*a:1 has {SKEWED}, b:1 has 3\.1"):
        plan.send(_mismatch("b:1", "3.1"))


class _Config:
    def __init__(self, version=None):
        self.parameters = {}
        if version is not None:
            self.parameters[C.CONTRACT_VERSION_PARAMETER] = type("P", (), {"string_value": version})()


@pytest.mark.unit
def test_contract_versions_verdicts_warnings_and_rechecks(caplog, monkeypatch):
    versions = ContractVersions("1.3")
    assert versions.mismatch("a:1", "m", versions.learn("a:1", "m", _Config("1.0"))) is None, "same major: used"
    assert versions.learn("b:1", "m", _Config()) == C.UNVERSIONED_CONTRACT, "configs from before versions"
    with caplog.at_level(logging.WARNING, logger="samtriton"):
        for _ in range(3):
            error = versions.mismatch("c:1", "m", versions.learn("c:1", "m", _Config("2.1")))
            assert isinstance(error, ContractMismatch)
    assert "2.1" in str(error) and "1.3" in str(error) and "c:1" in str(error)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per endpoint and version"
    assert versions.known("c:1", "m") == "2.1"
    now = [1000.0]
    monkeypatch.setattr("samtriton.transport.time.monotonic", lambda: now[0])
    versions.learn("c:1", "m", _Config("2.1"))
    now[0] += ContractVersions.RECHECK_SECONDS + 1
    assert versions.known("c:1", "m") is None, "a skipped replica is asked again later (it may be upgraded)"
    versions.learn("a:1", "m", _Config("1.0"))
    versions.forget("a:1")
    assert versions.known("a:1", "m") is None, "an endpoint that went away is asked again"


@pytest.fixture(scope="module")
def skewed_server(repository, tmp_path_factory):
    """A replica whose repository says another contract major version (otherwise the same export)."""
    copy = tmp_path_factory.mktemp("skewed") / "repository"
    shutil.copytree(repository, copy)
    for path in _configs(copy):
        config = parse_config(path.read_text())
        config.parameters[C.CONTRACT_VERSION_PARAMETER].string_value = SKEWED
        path.write_text(config_text(config))
    with EmbeddedTriton.on_free_ports(copy) as server:
        yield server


def _requests_served(server):
    """Inference requests (successful or failed) of every model on ``server``."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics("", as_json=True, headers=server.admin_headers)["model_stats"]
    finally:
        client.close()
    assert stats, "statistics of every model"
    return {
        s["name"]: int(s.get("inference_count", 0))
        + sum(int(s.get("inference_stats", {}).get(kind, {}).get("count", 0)) for kind in ("success", "fail"))
        for s in stats
    }


def _images_ranked(images, urls, first, count):
    """``count`` images (shifted copies of the test photographs) whose session requests rank ``first`` first."""
    chosen = []
    for shift in range(0, 400, 3):
        for image in images.values():
            moved = np.roll(image, shift, axis=1)
            padded, size = preprocess(to_rgb_uint8(moved))
            if rendezvous_order(C.image_id_for(padded, size, moved.shape[:2]), urls)[0] == first:
                chosen.append(moved)
                if len(chosen) == count:
                    return chosen
    raise AssertionError("no images rank that endpoint first")


def test_a_skewed_replica_is_never_sent_a_request(server, skewed_server, images, caplog):
    urls = [server.grpc_url, skewed_server.grpc_url]
    # Images whose ranking puts the skewed replica first: without the check, they would go there.
    work = _images_ranked(images, urls, skewed_server.grpc_url, 3) + _images_ranked(images, urls, server.grpc_url, 1)
    clicks = 0
    with caplog.at_level(logging.WARNING, logger="samtriton"):
        with SamPredictor(urls, model="mobilesam", timeout=120) as predictor:
            for image in work:
                predictor.set_image(image)
                for _ in range(3):
                    masks, scores, _ = predictor.predict(**POINT)
                    assert masks.shape[0] == 3 and np.isfinite(scores).all()
                    clicks += 1
            assert predictor.client.endpoint_failures == [], "skipping is not failing"
    assert clicks == 12
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert skewed_server.grpc_url in warnings[0] and SKEWED in warnings[0] and C.CONTRACT_VERSION in warnings[0]
    served = _requests_served(skewed_server)
    assert set(served) >= {"mobilesam_session", "mobilesam_encoder"} and not any(served.values()), served


def test_with_only_a_skewed_replica_the_error_names_both_versions(skewed_server, images):
    with SamPredictor(skewed_server.grpc_url, model="mobilesam", timeout=30) as predictor:
        with pytest.raises(ContractMismatch, match=rf"{SKEWED}.*{C.CONTRACT_VERSION}"):
            predictor.set_image(images["chelsea"])

    async def asynchronous():
        async with AsyncSamPredictor(skewed_server.grpc_url, model="mobilesam", timeout=30) as predictor:
            await predictor.set_image(images["chelsea"])

    with pytest.raises(ContractMismatch, match=rf"{SKEWED}.*{C.CONTRACT_VERSION}"):
        asyncio.run(asynchronous())
    served = _requests_served(skewed_server)
    assert not any(served.values()), served
