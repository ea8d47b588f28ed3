"""The asyncio client and ``segment_many``: many images in flight through the real embedded
Triton; results equal the synchronous client's (whose reference parity test_parity checks)."""

import asyncio
import os

import numpy as np
import pytest

from samtriton import AsyncSamPredictor, InvalidInput, SamPredictor, segment_many

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
