"""The asyncio client and ``segment_many``: many images in flight through the real embedded
Triton; results equal the synchronous client's (whose reference parity test_parity checks)."""

import asyncio
import glob
import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from samtriton import AsyncSamPredictor, InvalidInput, SamPredictor, segment_many
from samtriton import contract as C

from helpers import mask_iou, prompts_for


@pytest.fixture(scope="module")
def sync_results(server, images):
    results = {}
    with SamPredictor(server.grpc_url, model="mobilesam") as predictor:
        for name, image in images.items():
            predictor.set_image(image)
            results[name] = predictor.predict(**prompts_for(image.shape)["box_and_point"])
    return results


def test_segment_many_equals_one_image_at_a_time(server, images, sync_results):
    names = list(images)
    prompts = [prompts_for(images[name].shape)["box_and_point"] for name in names]
    results = segment_many(
        server.grpc_url, [images[name] for name in names], prompts, concurrency=4, model="mobilesam", timeout=300
    )
    assert len(results) == len(names)
    for name, (masks, scores, logits) in zip(names, results):
        ref_masks, ref_scores, ref_logits = sync_results[name]
        assert masks.shape == ref_masks.shape and logits.shape == ref_logits.shape
        assert min(mask_iou(a, b) for a, b in zip(masks, ref_masks)) >= 0.999
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_async_predictor_handles_and_resend(server, images, session_cache):
    async def run():
        async with AsyncSamPredictor(server.grpc_url, model="mobilesam") as sam:
            first, second = await asyncio.gather(sam.set_image(images["chelsea"]), sam.set_image(images["coffee"]))
            prompt = prompts_for(images["coffee"].shape)["point"]
            before = await sam.predict(second, **prompt)
            os.remove(session_cache / f"{second.image_id}.npz")  # evicted: the client sends the image again
            after = await sam.predict(second, **prompt)
            with pytest.raises(InvalidInput, match="ImageHandle"):
                await sam.predict("not a handle", **prompt)
            with pytest.raises(InvalidInput, match="point_labels"):
                await sam.predict(first, point_coords=np.array([[1.0, 2.0]]))
            return first, before, after

    first, before, after = asyncio.run(run())
    assert first.original_size == images["chelsea"].shape[:2]
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_allclose(before[1], after[1], atol=1e-6)


def test_map_rejects_mismatched_prompts(server, images):
    with pytest.raises(InvalidInput, match="prompts"):
        segment_many(server.grpc_url, [images["chelsea"]], [{}, {}], model="mobilesam")
    with pytest.raises(InvalidInput, match="concurrency"):
        segment_many(server.grpc_url, [images["chelsea"]], concurrency=0, model="mobilesam")


def test_async_shared_memory_equals_the_blocking_client_and_skips_the_wire(server, images):
    """shared_memory=True on the asyncio client: the image and the logits go through
    registered regions (a few bytes on the wire), the answers are the blocking client's, and
    the regions are unregistered and freed on close."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    image = images["astronaut"]
    prompt = prompts_for(image.shape)["point"]

    async def run():
        async with AsyncSamPredictor(
            server.grpc_url, model="mobilesam", shared_memory=True, admin_key=server.admin_key
        ) as sam:
            handle = await sam.set_image(image)
            result = await sam.predict(handle, **prompt)
            prefix = sam.transport.channels.current(server.grpc_url).pool.prefix
            status = client.get_system_shared_memory_status(as_json=True, headers=server.admin_headers)
            assert any(name.startswith(prefix) for name in status.get("regions", {})), "regions are registered"
            return result, prefix, sam.bytes_sent, sam.bytes_received

    (masks, scores, logits), prefix, sent, received = asyncio.run(run())
    assert sent < 1024, "the image went through shared memory"
    assert received < logits.nbytes, "the logits came back through shared memory"
    registered = client.get_system_shared_memory_status(as_json=True, headers=server.admin_headers).get("regions", {})
    assert not any(name.startswith(prefix) for name in registered), "unregistered on close"
    assert not glob.glob(f"/dev/shm/{prefix}*"), "freed on close"
    client.close()
    with SamPredictor(server.grpc_url, model="mobilesam", shared_memory=True, admin_key=server.admin_key) as sync:
        sync.set_image(image)
        want_masks, want_scores, want_logits = sync.predict(**prompt)
    np.testing.assert_array_equal(masks, want_masks)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    np.testing.assert_allclose(logits, want_logits, atol=1e-5)


def test_async_wire_bytes_are_counted(server, images):
    image = images["chelsea"]

    async def run():
        async with AsyncSamPredictor(server.grpc_url, model="mobilesam") as sam:
            handle = await sam.set_image(image)
            await sam.predict(handle, **prompts_for(image.shape)["point"])
            return sam.bytes_sent, sam.bytes_received

    sent, received = asyncio.run(run())
    assert sent >= C.IMAGE_SIZE * C.IMAGE_SIZE * 3, "the padded image went over the wire"
    assert received >= 3 * C.LOW_RES_SIZE**2 * 2, "the float16 logits came back over the wire"
