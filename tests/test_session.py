"""Session mode (the embedding stays on the server), the encoded-image path and shared
memory, against the real embedded Triton and real MobileSAM weights.

Parity of every mode with the reference is in test_parity.py; here: bytes on the wire,
the cache (LRU by bytes, shared by instances, unknown ids re-sent transparently), the
server's checks on raw session requests, and the shared-memory fallback.
"""

import glob
import io
import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from samtriton import ImageNotCached, SamPredictor
from samtriton import contract as C
from samtriton.prompts import prompt_tensors
from samtriton.server.embedding_cache import EmbeddingCache
from samtriton.shared_memory import is_local

from helpers import EMBEDDING_BYTES, mask_iou, prompts_for, successful_requests


def test_a_click_sends_under_one_percent_of_the_embedding(server, images):
    with SamPredictor(server.grpc_url, model="mobilesam") as predictor:
        predictor.set_image(images["chelsea"])
        sent, received = predictor.client.bytes_sent, predictor.client.bytes_received
        masks, scores, logits = predictor.predict(**prompts_for(images["chelsea"].shape)["point"])
        click_sent = predictor.client.bytes_sent - sent
        click_received = predictor.client.bytes_received - received
    print(f"\nbytes per click: sent {click_sent}, received {click_received}")
    assert click_sent <= 0.01 * EMBEDDING_BYTES
    # 3 float16 low-res masks and 3 float32 scores: half of the float32 logits, a quarter of the 4 masks.
    assert click_received == 3 * C.LOW_RES_SIZE**2 * 2 + 3 * 4
    assert masks.shape == (3,) + images["chelsea"].shape[:2] and logits.dtype == np.float32


def test_same_image_from_another_client_is_not_encoded_again(server, images):
    image = images["astronaut"]
    with (
        SamPredictor(server.grpc_url, model="mobilesam") as first,
        SamPredictor(server.grpc_url, model="mobilesam") as second,
    ):
        first.set_image(image)
        encodes = successful_requests(server, "mobilesam_encoder")
        second.set_image(image)
        assert second.image_id == first.image_id
        assert successful_requests(server, "mobilesam_encoder") == encodes, "served from the cache"
        prompt = prompts_for(image.shape)["box"]
        np.testing.assert_array_equal(first.predict(**prompt)[0], second.predict(**prompt)[0])


def test_evicted_image_is_sent_again_transparently(server, images, session_cache):
    image = images["coffee"]
    prompt = prompts_for(image.shape)["point"]
    with SamPredictor(server.grpc_url, model="mobilesam") as predictor:
        predictor.set_image(image)
        before = predictor.predict(**prompt)
        stored = session_cache / f"{predictor.image_id}.npz"
        assert stored.exists()
        os.remove(stored)  # what LRU eviction (or a restart) does
        with pytest.raises(ImageNotCached, match="unknown image_id"):
            tensors = prompt_tensors(
                predictor.transform,
                prompt["point_coords"][None],
                prompt["point_labels"][None],
                None,
                None,
                predictor.original_size,
            )
            predictor.client.session_decode(predictor.image_id, tensors, multimask_output=True)
        encodes = successful_requests(server, "mobilesam_encoder")
        after = predictor.predict(**prompt)
        assert successful_requests(server, "mobilesam_encoder") == encodes + 1, "the image was encoded again"
        assert stored.exists()
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_allclose(after[1], before[1], atol=1e-6)


def test_get_image_embedding_in_session_mode_equals_embedding_mode(server, images):
    with (
        SamPredictor(server.grpc_url, model="mobilesam") as session,
        SamPredictor(server.grpc_url, model="mobilesam", session=False) as plain,
    ):
        session.set_image(images["rocket"])
        plain.set_image(images["rocket"])
        np.testing.assert_array_equal(session.get_image_embedding(), plain.get_image_embedding())


@pytest.mark.unit
def test_cache_evicts_least_recently_used_by_bytes(tmp_path):
    embedding = np.zeros(C.DECODER_IMAGE_EMBEDDINGS.dims, np.float32)
    sizes = np.array([1024, 683]), np.array([600, 900])
    cache = EmbeddingCache(str(tmp_path / "cache"), budget_bytes=int(2.5 * embedding.nbytes))
    for image_id in ("a", "b"):
        cache.put(image_id, embedding + ord(image_id), *sizes)
    os.utime(cache._path("a"), ns=(1, 1))  # make the clock order explicit: a older than b
    os.utime(cache._path("b"), ns=(2, 2))
    assert cache.get("a")[0][0, 0, 0, 0] == ord("a")  # a is now the most recently used
    cache.put("c", embedding, *sizes)
    assert cache.get("b") is None, "b was least recently used"
    assert cache.get("a") is not None and cache.get("c") is not None
    stored = cache.get("c")
    np.testing.assert_array_equal(stored[1], sizes[0])
    np.testing.assert_array_equal(stored[2], sizes[1])
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.npz")) == ["a.npz", "c.npz"]


@pytest.mark.unit
def test_cache_always_keeps_the_newest(tmp_path):
    embedding = np.zeros(C.DECODER_IMAGE_EMBEDDINGS.dims, np.float32)
    cache = EmbeddingCache(str(tmp_path / "tiny"), budget_bytes=1)
    cache.put("x", embedding, np.array([1024, 1024]), np.array([5, 5]))
    assert cache.get("x") is not None


# Measured: see test_parity.py for the same bounds' rationale.
JPEG_MIN_MASK_IOU = 0.999
JPEG_MAX_SCORE_DIFF = 1e-4


def test_set_image_file_jpeg_matches_reference_on_the_decoded_file(server, reference_predictor, images):
    """The server decodes and preprocesses the file; the reference gets the same file decoded."""
    from PIL import Image

    image = images["chelsea"]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    with SamPredictor(server.grpc_url, model="mobilesam") as predictor:
        sent = predictor.client.bytes_sent
        predictor.set_image_file(data)
        file_sent = predictor.client.bytes_sent - sent
        reference_predictor.set_image(decoded)
        assert predictor.original_size == reference_predictor.original_size
        assert predictor.input_size == reference_predictor.input_size
        ious, score_diffs = [], []
        for prompt in prompts_for(image.shape).values():
            ours, ref = predictor.predict(**prompt), reference_predictor.predict(**prompt)
            ious += [mask_iou(a, b) for a, b in zip(ours[0], ref[0])]
            score_diffs.append(np.abs(ours[1] - ref[1]).max())
        print(f"\nJPEG file: worst IoU {min(ious):.5f}, |score diff| {max(score_diffs):.1e}")
        assert min(ious) >= JPEG_MIN_MASK_IOU and max(score_diffs) <= JPEG_MAX_SCORE_DIFF
    padded_bytes = int(np.prod(C.IMAGE.dims))
    print(f"\nJPEG set_image_file sent {file_sent} bytes; the padded image is {padded_bytes}")
    assert file_sent <= padded_bytes / 10


def _session_inputs(**tensors):
    inputs = []
    for name, array in tensors.items():
        spec = C.SESSION.input(name)
        tensor = grpcclient.InferInput(name, list(array.shape), spec.wire_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _id(text):
    return np.array([text.encode()], dtype=object)


PROMPT = dict(
    point_coords=np.array([[[10.0, 10.0], [0.0, 0.0]]], np.float32), point_labels=np.array([[1.0, -1.0]], np.float32)
)
# A set and an AMG request in one (the set succeeds, or finds the image cached; the AMG part is refused).
ZERO_IMAGE = dict(
    image_id=_id(C.image_id_for(np.zeros((1024, 1024, 3), np.uint8), (1024, 1024), (1024, 1024))),
    image=np.zeros((1, 1024, 1024, 3), np.uint8),
    input_size=np.array([[1024, 1024]], np.int64),
    original_size=np.array([1024, 1024], np.int64),
)
RAW_SESSION_BAD = {
    "id not hex": (dict(image_id=_id("../../etc/passwd"), **PROMPT), "image_id"),
    "id too short": (dict(image_id=_id("abc"), **PROMPT), "image_id"),
    "unknown id": (dict(image_id=_id("0" * 32), **PROMPT), "unknown image_id"),
    "encoded garbage": (
        dict(
            image_id=_id(C.image_id_for(encoded_image=b"not an image")),
            encoded_image=np.array([b"not an image"], dtype=object),
        ),
        "encoded_image",
    ),
    "raw image without sizes": (
        dict(image_id=_id("0" * 32), image=np.zeros((1, 1024, 1024, 3), np.uint8)),
        "original_size",
    ),
    "id not the image's hash": (
        dict(
            image_id=_id("f" * 32),
            image=np.zeros((1, 1024, 1024, 3), np.uint8),
            input_size=np.array([[1024, 1024]], np.int64),
            original_size=np.array([1024, 1024], np.int64),
        ),
        "image_id: expected",
    ),
    "amg without crop_size": (
        dict(**ZERO_IMAGE, amg_thresholds=np.array([0.88, 0.95, 1.0], np.float32), **PROMPT),
        "crop_size",
    ),
    "amg thresholds not finite": (
        dict(
            **ZERO_IMAGE,
            crop_size=np.array([1024, 1024], np.int64),
            amg_thresholds=np.array([0.88, np.nan, 1.0], np.float32),
            **PROMPT,
        ),
        "amg_thresholds",
    ),
    "amg with a mask prompt": (
        dict(
            **ZERO_IMAGE,
            crop_size=np.array([1024, 1024], np.int64),
            amg_thresholds=np.array([0.88, 0.95, 1.0], np.float32),
            multimask_output=np.array([True]),
            **PROMPT,
        ),
        "multimask_output",
    ),
    "labels missing": (dict(image_id=_id("0" * 32), point_coords=PROMPT["point_coords"]), "point_labels"),
    "coords missing": (dict(image_id=_id("0" * 32), point_labels=PROMPT["point_labels"]), "point_coords"),
}


@pytest.mark.parametrize("case", list(RAW_SESSION_BAD))
def test_server_rejects_raw_bad_session_requests_and_stays_up(server, predictor, images, case):
    tensors, message = RAW_SESSION_BAD[case]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match=message):
        client.infer("mobilesam_session", _session_inputs(**tensors))
    client.close()
    predictor.set_image(images["coins_gray"])
    assert predictor.predict(**prompts_for(images["coins_gray"].shape)["point"])[0].shape[0] == 3


def test_bad_image_file_is_rejected_before_sending(server):
    with SamPredictor(server.grpc_url, model="mobilesam") as predictor:
        with pytest.raises(ValueError, match="encoded_image"):
            predictor.set_image_file(b"\x89PNG not really")
        assert predictor.client.bytes_sent == 0


def test_shared_memory_falls_back_to_the_wire_for_a_remote_server(server, images, monkeypatch):
    """A server on another machine cannot map this machine's regions: a shared_memory=True
    client sends over the wire instead, and gets the same answers. No other machine can be
    reached here, so the real server is declared remote (the one stand-in: is_local)."""
    from samtriton import exchange

    assert is_local(server.grpc_url) and is_local("localhost:8001")
    assert not is_local("192.0.2.10:8001")  # TEST-NET-1: never this machine (not contacted)
    image = images["astronaut"]
    prompt = prompts_for(image.shape)["point"]
    monkeypatch.setattr(exchange, "is_local", lambda url: False)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    before = set(client.get_system_shared_memory_status(as_json=True, headers=server.admin_headers).get("regions", {}))
    with (
        SamPredictor(server.grpc_url, model="mobilesam", shared_memory=True, admin_key=server.admin_key) as remote,
        SamPredictor(server.grpc_url, model="mobilesam") as plain,
    ):
        remote.set_image(image)
        masks, scores, _ = remote.predict(**prompt)
        registered = set(
            client.get_system_shared_memory_status(as_json=True, headers=server.admin_headers).get("regions", {})
        )
        assert registered == before, "no region was registered"
        assert remote.client.bytes_sent >= image.nbytes, "the image went over the wire"
        plain.set_image(image)
        want_masks, want_scores, _ = plain.predict(**prompt)
    client.close()
    np.testing.assert_array_equal(masks, want_masks)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)


def test_shared_memory_regions_are_released_on_close(server, images):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with SamPredictor(server.grpc_url, model="mobilesam", shared_memory=True, admin_key=server.admin_key) as predictor:
        predictor.set_image(images["astronaut"])
        predictor.predict(**prompts_for(images["astronaut"].shape)["point"])
        prefix = predictor.client.transport.channels.current(server.grpc_url).pool.prefix
        registered = client.get_system_shared_memory_status(as_json=True, headers=server.admin_headers).get(
            "regions", {}
        )
        assert any(name.startswith(prefix) for name in registered)
        assert predictor.client.bytes_sent < 1024, "the image went through shared memory"
    registered = client.get_system_shared_memory_status(as_json=True, headers=server.admin_headers).get("regions", {})
    assert not any(name.startswith(prefix) for name in registered)
    assert not glob.glob(f"/dev/shm/{prefix}*")
    client.close()
