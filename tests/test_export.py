"""ONNX graphs vs the PyTorch reference on real weights."""

import numpy as np
import onnx
import onnxruntime as ort
import torch

from samtriton import contract as C
from samtriton.transforms import preprocess


def test_graph_io_matches_contract(onnx_files):
    for path, spec in zip(onnx_files, (C.ENCODER, C.DECODER)):
        graph = onnx.load(str(path), load_external_data=False).graph
        for values, specs in ((graph.input, spec.inputs), (graph.output, spec.outputs)):
            assert [v.name for v in values] == [s.name for s in specs]
            for value, s in zip(values, specs):
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                assert dims == list(spec.full_shape(s)), s.name
                assert onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type) == s.dtype


def test_encoder_matches_pytorch_and_batches(onnx_files, reference_predictor, images):
    session = ort.InferenceSession(str(onnx_files[0]), providers=["CPUExecutionProvider"])
    padded, sizes, references = [], [], []
    for name in ("astronaut", "retina_crop"):
        image = images[name]
        reference_predictor.set_image(image)
        references.append(reference_predictor.get_image_embedding().numpy()[0])
        array, size = preprocess(image)
        padded.append(array)
        sizes.append(size)
    batch = session.run(None, {"image": np.stack(padded), "input_size": np.array(sizes, np.int64)})[0]
    assert batch.shape == (2, 256, 64, 64)
    for got, ref in zip(batch, references):
        diff = np.abs(got - ref).max()
        print(f"\nencoder max abs diff {diff:.2e}")
        assert diff <= 1e-3


def test_model_stays_in_eval_mode_after_export(export_sam, onnx_files):
    assert not any(m.training for m in export_sam.modules())


def _foreign_forwards(model):
    """Modules whose ``forward`` is not their own package's: one set on the instance (a
    patch), or a class ``forward`` defined outside mobile_sam / segment_anything / torch."""
    import inspect
    from pathlib import Path

    import mobile_sam
    import segment_anything

    homes = [Path(package.__file__).resolve().parent for package in (mobile_sam, segment_anything, torch)]
    foreign = []
    for name, module in model.named_modules():
        if "forward" in vars(module):
            foreign.append((name, type(module).__name__, "forward set on the instance"))
            continue
        source = Path(inspect.getsourcefile(type(module).forward)).resolve()
        if not any(source.is_relative_to(home) for home in homes):
            foreign.append((name, type(module).__name__, str(source)))
    return foreign


def test_reference_is_mobile_sams_own_and_export_leaves_models_untouched(reference_sam, export_sam, onnx_files):
    """Parity is measured against an untouched reference: a separately loaded model, every
    module running mobile_sam's (or torch's) own forward, after the export has run. The
    exported model itself is left as it was too (the TinyViT patch goes on a copy)."""
    assert reference_sam is not export_sam
    assert reference_sam.image_encoder is not export_sam.image_encoder
    assert type(reference_sam).__module__ == "mobile_sam.modeling.sam"
    for model in (reference_sam, export_sam):
        assert len(list(model.modules())) > 300
        assert _foreign_forwards(model) == []


def test_decoder_matches_pytorch_mask_decoder(onnx_files, reference_sam):
    session = ort.InferenceSession(str(onnx_files[1]), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    embedding = rng.normal(0, 0.5, (1, 256, 64, 64)).astype(np.float32)
    coords = rng.uniform(0, 1024, (4, 3, 2)).astype(np.float32)
    coords[2, 1:] = np.sort(coords[2, 1:], axis=0)  # a valid box in row 2
    # Rows: two points (+ SAM's padding point), same with a mask, point + box, two points + mask.
    labels = np.array([[1, 0, -1], [0, 1, -1], [1, 2, 3], [1, 1, -1]], np.float32)
    mask_input = rng.normal(0, 3, (4, 1, 256, 256)).astype(np.float32)
    has_mask = np.array([0, 1, 0, 1], np.float32)
    low_res, iou = session.run(
        None,
        {
            "image_embeddings": embedding,
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": mask_input,
            "has_mask_input": has_mask,
        },
    )
    for k in range(4):
        with torch.no_grad():
            n_points = 1 if labels[k, 1] == 2 else 2
            points = (torch.from_numpy(coords[k : k + 1, :n_points]), torch.from_numpy(labels[k : k + 1, :n_points]))
            boxes = torch.from_numpy(coords[k, 1:].reshape(1, 4)) if labels[k, 1] == 2 else None
            masks = torch.from_numpy(mask_input[k : k + 1]) if has_mask[k] else None
            sparse, dense = reference_sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
            ref_masks, ref_iou = reference_sam.mask_decoder.predict_masks(
                torch.from_numpy(embedding), reference_sam.prompt_encoder.get_dense_pe(), sparse, dense
            )
        assert np.abs(low_res[k] - ref_masks[0].numpy()).max() < 1e-3
        assert np.abs(iou[k] - ref_iou[0].numpy()).max() < 1e-4


def test_mobilesam_encoder_has_no_uint8_intermediate(onnx_files):
    """TensorRT's ONNX parser takes UINT8 only as a network input or output."""
    from export_graphs import uint8_intermediates

    # ViT-B's graph: tests/test_vit_models.py checks the one it exports (no second export).
    assert uint8_intermediates(onnx_files[0]) == []


def test_tensorrt_repository_keeps_encoder_external_data(export_sam, onnx_files, images, tmp_path, monkeypatch):
    """The ViT-H path (weights beside the graph), on MobileSAM with a lowered limit: the
    encoder.onnx kept beside the engine for rebuilds still loads, with its weights."""
    from samtriton.export import onnx_export
    from samtriton.export.repository import RepositoryOptions, write_repository

    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1024)
    encoder = onnx_export.export_encoder(export_sam, tmp_path / "export" / "model.onnx")
    assert (tmp_path / "export" / "model.onnx.data").exists()
    repo = tmp_path / "repo"
    written = write_repository(repo, encoder, onnx_files[1], RepositoryOptions(name="seg", encoder_backend="tensorrt"))
    kept = written["seg_encoder"] / "encoder.onnx"
    padded, size = preprocess(images["chelsea"])
    feeds = {"image": padded[None], "input_size": np.array([size], np.int64)}
    got = ort.InferenceSession(str(kept), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    want = ort.InferenceSession(str(onnx_files[0]), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
