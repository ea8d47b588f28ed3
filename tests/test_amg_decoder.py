"""The AMG decoder (export/amg_decoder.py): the decoder reordered for automatic mask
generation's point batches, against the decoder it stands in for, on real MobileSAM weights.

Reordering changes float rounding only; bounds: logits within 1e-5 of their range, IoU
predictions within 1e-5, and no mask pixel on the other side of 0 beyond 1 in 10^5.
"""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from samtriton import contract as C


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _grid_prompts(k, rng):
    """AMG's prompt form: one foreground point + SAM's padding point per prompt."""
    coords = np.concatenate([rng.uniform(0, 1024, (k, 1, 2)), np.zeros((k, 1, 2))], axis=1).astype(np.float32)
    labels = np.tile(np.array([[C.LABEL_FOREGROUND, C.LABEL_PAD]], np.float32), (k, 1))
    return coords, labels


def _other_prompts(rng):
    """Prompts beyond AMG's: two points, a background point, a point + box."""
    coords = rng.uniform(0, 1024, (3, 3, 2)).astype(np.float32)
    coords[2, 1:] = np.sort(coords[2, 1:], axis=0)
    labels = np.array([[1, 1, -1], [0, 1, -1], [1, 2, 3]], np.float32)
    return coords, labels


def _assert_close(masks, iou, ref_masks, ref_iou):
    scale = max(1.0, float(np.abs(ref_masks).max()))
    assert np.abs(masks - ref_masks).max() <= 1e-5 * scale
    assert np.abs(iou - ref_iou).max() <= 1e-5
    assert ((masks > 0) != (ref_masks > 0)).mean() <= 1e-5


@pytest.fixture(scope="module")
def embedding(reference_predictor, images):
    reference_predictor.set_image(images["chelsea"])
    return reference_predictor.get_image_embedding().numpy()


def test_graph_is_written_beside_the_decoder_and_matches_the_contract(onnx_files):
    path = onnx_files[1].parent / C.AMG_DECODER_FILE
    graph = onnx.load(str(path)).graph
    assert [v.name for v in graph.input] == [s.name for s in C.AMG_DECODER.inputs]
    assert [v.name for v in graph.output] == [s.name for s in C.AMG_DECODER.outputs]
    for value, spec in zip(list(graph.input) + list(graph.output), C.AMG_DECODER.inputs + C.AMG_DECODER.outputs):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        assert dims == list(C.AMG_DECODER.full_shape(spec)), spec.name


@pytest.mark.parametrize("prompts", ["amg_batch", "other"])
def test_graph_matches_the_decoder_graph_without_mask_input(onnx_files, embedding, prompts):
    rng = np.random.default_rng(1)
    coords, labels = _grid_prompts(64, rng) if prompts == "amg_batch" else _other_prompts(rng)
    k = len(coords)
    ref_masks, ref_iou = _session(onnx_files[1]).run(
        None,
        {
            "image_embeddings": embedding,
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": np.zeros((k, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(k, np.float32),
        },
    )
    masks, iou = _session(onnx_files[1].parent / C.AMG_DECODER_FILE).run(
        None, {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels}
    )
    assert masks.shape == ref_masks.shape == (k, C.NUM_MASK_OUTPUTS, C.LOW_RES_SIZE, C.LOW_RES_SIZE)
    _assert_close(masks, iou, ref_masks, ref_iou)


def test_module_matches_the_reference_mask_decoder_with_other_weights(reference_sam, embedding):
    """Every bias the reordering moves (key bias dropped, value and output biases carried
    in the small factors, transposed-convolution biases in the GEMMs) made large, and the
    first block's image side shared: still the reference's predict_masks."""
    from samtriton.export.amg_decoder import AmgPromptDecoder
    from samtriton.export.onnx_export import PromptDecoder

    sam = copy.deepcopy(reference_sam)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in sam.mask_decoder.named_parameters():
            if name.endswith("bias"):
                parameter.add_(torch.randn(parameter.shape, generator=generator))
    rng = np.random.default_rng(2)
    coords, labels = _grid_prompts(8, rng)
    with torch.no_grad():
        masks, iou = AmgPromptDecoder(PromptDecoder(sam)).eval()(
            torch.from_numpy(embedding), torch.from_numpy(coords), torch.from_numpy(labels)
        )
        points = (torch.from_numpy(coords[:, :1]), torch.ones(len(coords), 1))
        sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
        ref_masks, ref_iou = sam.mask_decoder.predict_masks(
            torch.from_numpy(embedding), sam.prompt_encoder.get_dense_pe(), sparse, dense
        )
    # The reference's prompt encoder pads a point-only prompt itself: the same padding point.
    _assert_close(masks.numpy(), iou.numpy(), ref_masks.numpy(), ref_iou.numpy())
