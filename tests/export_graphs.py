"""Exported encoder graphs for the GPU-path tests, and what their tensors' dtypes are.

``random_weight_encoder("vit_b", ...)`` exports segment_anything's ViT-B with random
weights (its builder without a checkpoint) once per test run, whichever test module asks
first: ~25 s on 2 cores. It is written with ONNX external data (the ViT-H path, forced by a
lowered limit), so reading its graph without the weights is cheap.
"""

import onnx
import pytest

_EXPORTED = {}


def random_weight_encoder(model_type, tmp_path_factory):
    if model_type not in _EXPORTED:
        import torch

        from samtriton.export import onnx_export
        from samtriton.export.compat import ensure_reference_imports

        ensure_reference_imports()
        from segment_anything import sam_model_registry

        torch.manual_seed(0)
        sam = sam_model_registry[model_type]().eval()
        path = tmp_path_factory.mktemp(f"{model_type}_random") / "model.onnx"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(onnx_export, "PROTOBUF_LIMIT", 1024)
            _EXPORTED[model_type] = onnx_export.export_encoder(sam, path)
    return _EXPORTED[model_type]


def tensor_types(path):
    """{tensor name: ONNX elem type} for every graph input, initializer and node output."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    graph = model.graph
    types = {
        v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output) + list(graph.value_info)
    }
    types.update({t.name: t.data_type for t in graph.initializer})
    return graph, types


def uint8_intermediates(path):
    """(op, tensor) of every UINT8 tensor a node of the graph at ``path`` outputs (TensorRT's
    ONNX parser takes UINT8 only as a network input or output)."""
    graph, types = tensor_types(path)
    inputs = {v.name for v in graph.input}
    return [
        (node.op_type, name)
        for node in graph.node
        for name in node.output
        if types.get(name) == onnx.TensorProto.UINT8 and name not in inputs
    ]
