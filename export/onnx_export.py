"""SAM / MobileSAM -> two ONNX graphs named by the contract.

- Encoder: uint8 NHWC image (resized, padded) + its (h, w) -> image embeddings, with SAM's
  pixel normalization and padding folded into the graph and a dynamic batch axis.
- Decoder: prompt encoder + mask decoder for ONE embedding and K prompts, returning all 4
  low-resolution masks and IoU predictions; upscaling is left to the client.
- Beside the decoder, ``amg_decoder.onnx``: the same decoder for point prompts without a
  mask input, reordered for automatic mask generation's batches (export/amg_decoder.py).
"""

from __future__ import annotations

import copy
import os
import types
from pathlib import Path

import torch
from torch import nn

from samtriton import contract as C

OPSET = 17
# ONNX protobufs cap at 2 GB; ViT-H's encoder is 2.5 GB and must keep weights outside.
PROTOBUF_LIMIT = 2 * 1024**3


class EncoderWithPreprocess(nn.Module):
    """``Sam.preprocess`` + ``image_encoder`` on the contract's uint8 input."""

    def __init__(self, sam):
        super().__init__()
        self.image_encoder = sam.image_encoder
        # The model's own normalization: a Hugging Face fine-tune may carry other statistics.
        mean = getattr(sam, "pixel_mean", torch.tensor(C.PIXEL_MEAN))
        std = getattr(sam, "pixel_std", torch.tensor(C.PIXEL_STD))
        self.register_buffer("pixel_mean", mean.detach().float().reshape(1, 3, 1, 1).clone(), persistent=False)
        self.register_buffer("pixel_std", std.detach().float().reshape(1, 3, 1, 1).clone(), persistent=False)

    def forward(self, image: torch.Tensor, input_size: torch.Tensor) -> torch.Tensor:
        # Cast before anything else: TensorRT's ONNX parser accepts uint8 only as a network
        # input or output, so a Transpose on the uint8 image fails the parse.
        x = image.float().permute(0, 3, 1, 2)
        x = (x - self.pixel_mean) / self.pixel_std
        # Sam.preprocess pads *after* normalizing, so the padding must be exactly zero.
        positions = torch.arange(C.IMAGE_SIZE, device=image.device)
        rows = positions[None, :] < input_size[:, 0:1]
        cols = positions[None, :] < input_size[:, 1:2]
        valid = rows[:, None, :, None] & cols[:, None, None, :]
        x = torch.where(valid, x, torch.zeros_like(x))
        return self.image_encoder(x)


class PromptDecoder(nn.Module):
    """Prompt encoder + mask decoder for one embedding and K prompts (SAM's ONNX prompt form)."""

    def __init__(self, sam):
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder

    def _embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        encoder = self.prompt_encoder
        point_coords = (point_coords + 0.5) / C.IMAGE_SIZE
        embedding = encoder.pe_layer._pe_encoding(point_coords)
        labels = point_labels.unsqueeze(-1).expand_as(embedding)
        embedding = embedding * (labels != C.LABEL_PAD)
        embedding = embedding + encoder.not_a_point_embed.weight * (labels == C.LABEL_PAD)
        for i in range(encoder.num_point_embeddings):
            embedding = embedding + encoder.point_embeddings[i].weight * (labels == i)
        return embedding

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        embedding = has_mask * self.prompt_encoder.mask_downscaling(mask_input)
        return embedding + (1 - has_mask) * self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        return self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )


def _patch_tinyvit_batch_axis(image_encoder) -> None:
    """TinyViT's PatchMerging reads the batch as ``len(x)``, which the tracer freezes to a
    constant: batch 2 then fails at run time. Read it from ``x.shape[0]`` instead.
    Patches ``image_encoder`` in place: pass a copy, never the caller's model."""
    from mobile_sam.modeling.tiny_vit_sam import PatchMerging

    def forward(self, x):
        if x.ndim == 3:
            height, width = self.input_resolution
            x = x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)

    for module in image_encoder.modules():
        if isinstance(module, PatchMerging):
            module.forward = types.MethodType(forward, module)


def _by_name(specs, name):
    return next(s for s in specs if s.name == name)


def _names(specs):
    return [s.name for s in specs]


def _dynamic_axes(model_spec):
    axes = {}
    for spec in model_spec.inputs + model_spec.outputs:
        shape = model_spec.full_shape(spec)
        dynamic = {i: f"{spec.name}_dim{i}" for i, d in enumerate(shape) if d == -1}
        if model_spec.batching:
            dynamic[0] = "batch"
        if dynamic:
            axes[spec.name] = dynamic
    return axes


def trace_to_onnx(module: nn.Module, args, path: Path, input_names, output_names, dynamic_axes) -> Path:
    """Trace ``module`` on ``args`` into an ONNX file at ``path`` (opset ``OPSET``, constants
    folded), with the given input/output names and dynamic axes; ``module`` is left in eval mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter honours dynamic_axes for both graphs
            )
    finally:
        module.eval()  # export can leave modules in training mode (TinyViT has BatchNorm)
    return path


def _export(module: nn.Module, args, path: Path, model_spec, large: bool) -> Path:
    inputs, outputs = _names(model_spec.inputs), _names(model_spec.outputs)
    trace_to_onnx(module, args, path, inputs, outputs, _dynamic_axes(model_spec))
    if large:
        _move_weights_to_external_data(path)
    _stamp_contract_shapes(path, model_spec)
    return path


def _stamp_contract_shapes(path: Path, model_spec) -> None:
    """Write the contract's static dims onto the graph's inputs and outputs (the tracer
    leaves computed output dims symbolic), so every consumer sees the same shapes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dynamic = _dynamic_axes(model_spec)
    for value in list(model.graph.input) + list(model.graph.output):
        spec = _by_name(model_spec.inputs + model_spec.outputs, value.name)
        dims = value.type.tensor_type.shape.dim
        for i, size in enumerate(model_spec.full_shape(spec)):
            if size == -1:
                dims[i].dim_param = dynamic[spec.name][i]
            else:
                dims[i].dim_value = size
    onnx.save_model(model, str(path))


def _move_weights_to_external_data(path: Path) -> None:
    """All weights into one ``NAME.data`` file beside the graph. Past 2 GB the exporter has
    already written one file per tensor: those are removed once merged (ViT-H: 2.5 GB)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    location = path.name + ".data"
    before = onnx.load(str(path), load_external_data=False)
    per_tensor = {
        entry.value
        for tensor in before.graph.initializer
        if uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    } - {location}
    del before
    model = onnx.load(str(path))
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
        convert_attribute=True,
    )
    for name in per_tensor:
        (path.parent / name).unlink(missing_ok=True)


def is_tinyvit(sam) -> bool:
    return type(sam.image_encoder).__name__ == "TinyViT"


def export_encoder(sam, path: os.PathLike) -> Path:
    path = Path(path)
    module = EncoderWithPreprocess(sam).eval()
    if is_tinyvit(sam):
        # The patch goes on a copy: the caller's model (often the reference a test compares
        # with) keeps mobile_sam's own forward.
        module.image_encoder = copy.deepcopy(sam.image_encoder)
        _patch_tinyvit_batch_axis(module.image_encoder)
    image = torch.zeros((1,) + C.IMAGE.dims, dtype=torch.uint8)
    input_size = torch.tensor([[C.IMAGE_SIZE, C.IMAGE_SIZE]], dtype=torch.int64)
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    large = n_bytes > PROTOBUF_LIMIT * 0.9
    return _export(module, (image, input_size), path, C.ENCODER, large)


def export_decoder(sam, path: os.PathLike) -> Path:
    """The decoder's graph at ``path``, and the AMG point-batch decoder beside it
    (``contract.AMG_DECODER_FILE``)."""
    module = PromptDecoder(sam).eval()
    k, n = 2, 3
    args = (
        torch.zeros(C.DECODER_IMAGE_EMBEDDINGS.dims, dtype=torch.float32),
        torch.randint(0, C.IMAGE_SIZE, (k, n, 2)).float(),
        torch.tensor([[1.0, 0.0, -1.0]] * k),
        torch.zeros((k, 1, C.LOW_RES_SIZE, C.LOW_RES_SIZE)),
        torch.zeros((k,)),
    )
    path = _export(module, args, Path(path), C.DECODER, large=False)
    export_amg_decoder(module, path.parent / C.AMG_DECODER_FILE)
    return path


def export_amg_decoder(prompt_decoder: PromptDecoder, path: os.PathLike) -> Path:
    from samtriton.export.amg_decoder import AmgPromptDecoder

    module = AmgPromptDecoder(prompt_decoder).eval()
    k, n = 2, 2
    args = (
        torch.zeros(C.DECODER_IMAGE_EMBEDDINGS.dims, dtype=torch.float32),
        torch.randint(0, C.IMAGE_SIZE, (k, n, 2)).float(),
        torch.tensor([[1.0, -1.0]] * k),
    )
    return _export(module, args, Path(path), C.AMG_DECODER, large=False)
