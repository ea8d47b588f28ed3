"""``samtriton export --reference-decoder``: the decoder with segment-anything's own ONNX
interface (``SamOnnxModel``), run with ONNX Runtime on the feeds of segment-anything's ONNX
example notebook, the image embedding coming from samtriton's encoder graph.

Reference: segment-anything's ``SamOnnxModel`` itself, in PyTorch, on the same feeds
(real MobileSAM weights). Acceptance: every mask IoU >= 0.99. The images have other aspect
ratios than the export's example (1500 x 2250), which segment-anything 1.0's own export
bakes into its graph.
"""

import numpy as np
import onnxruntime as ort
import pytest

from helpers import mask_iou

IMAGES = ("chelsea", "retina_crop", "astronaut")
# SamOnnxModel.forward's arguments, in order (segment-anything's scripts/export_onnx_model.py),
# written out here: the test must not take them from the code it checks.
REFERENCE_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]


@pytest.fixture(scope="module", params=[False, True], ids=["all_masks", "single_mask"])
def decoder(request, export_sam, tmp_path_factory):
    from samtriton.export.reference_decoder import export_reference_decoder

    path = tmp_path_factory.mktemp("reference_decoder") / "sam_reference_decoder.onnx"
    export_reference_decoder(export_sam, path, return_single_mask=request.param)
    return request.param, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def embeddings(onnx_files, images):
    """{image: [1,256,64,64]} from samtriton's encoder graph."""
    from samtriton.transforms import preprocess

    session = ort.InferenceSession(str(onnx_files[0]), providers=["CPUExecutionProvider"])
    out = {}
    for name in IMAGES:
        padded, size = preprocess(images[name])
        out[name] = session.run(None, {"image": padded[None], "input_size": np.array([size], np.int64)})[0]
    return out


def notebook_feeds(image, embedding, low_res_logits=None):
    """segment-anything's onnx_model_example.ipynb: a point (with the (0,0) / -1 padding
    point), then a box + a background point refined with the previous low-res logits."""
    from segment_anything.utils.transforms import ResizeLongestSide

    transform = ResizeLongestSide(1024)
    h, w = image.shape[:2]
    if low_res_logits is None:
        coords = np.array([[0.5 * w, 0.45 * h], [0.0, 0.0]])[None]
        labels = np.array([[1, -1]], np.float32)
        mask_input, has_mask = np.zeros((1, 1, 256, 256), np.float32), np.zeros(1, np.float32)
    else:
        box = np.array([0.2 * w, 0.15 * h, 0.8 * w, 0.85 * h])
        coords = np.concatenate([np.array([[0.1 * w, 0.1 * h]]), box.reshape(2, 2)])[None]
        labels = np.array([[0, 2, 3]], np.float32)
        mask_input, has_mask = low_res_logits.astype(np.float32), np.ones(1, np.float32)
    return {
        "image_embeddings": embedding,
        "point_coords": transform.apply_coords(coords, (h, w)).astype(np.float32),
        "point_labels": labels,
        "mask_input": mask_input,
        "has_mask_input": has_mask,
        "orig_im_size": np.array([h, w], np.float32),
    }


def reference_outputs(sam, single_mask, feeds):
    import torch

    from samtriton.export.compat import ensure_reference_imports

    ensure_reference_imports()
    from segment_anything.utils.onnx import SamOnnxModel

    model = SamOnnxModel(sam, return_single_mask=single_mask).eval()
    with torch.no_grad():
        out = model(*(torch.from_numpy(feeds[name]) for name in REFERENCE_INPUTS))
    return [t.numpy() for t in out]


def test_interface_is_segment_anythings(decoder):
    _, session = decoder
    assert [i.name for i in session.get_inputs()] == REFERENCE_INPUTS
    assert [o.name for o in session.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes["image_embeddings"] == [1, 256, 64, 64] and shapes["orig_im_size"] == [2]
    assert shapes["point_coords"][0] == 1 and isinstance(shapes["point_coords"][1], str)


@pytest.mark.parametrize("name", IMAGES)
def test_masks_match_the_reference(decoder, embeddings, reference_sam, images, name):
    single_mask, session = decoder
    image = images[name]
    feeds = notebook_feeds(image, embeddings[name])
    for step in ("point", "box_point_refined"):
        masks, scores, low_res = session.run(None, feeds)
        ref_masks, ref_scores, ref_low_res = reference_outputs(reference_sam, single_mask, feeds)
        assert masks.shape == ref_masks.shape == (1, 1 if single_mask else 4) + image.shape[:2]
        ious = [mask_iou(a > 0, b > 0) for a, b in zip(masks[0], ref_masks[0])]
        print(
            f"\n{name} {step} single={single_mask}: IoU {np.round(ious, 4)}, "
            f"score diff {np.abs(scores - ref_scores).max():.1e}"
        )
        assert min(ious) >= 0.99, (name, step, ious)
        assert np.abs(scores - ref_scores).max() <= 1e-3
        assert np.abs(low_res - ref_low_res).max() <= 1e-2
        best = int(np.argmax(scores[0]))
        feeds = notebook_feeds(image, embeddings[name], low_res_logits=low_res[:, best : best + 1])
