"""The wire contract: tensor names, dtypes and shapes of every served model.

This module is the one place that defines them. The exporter names its ONNX inputs and
outputs from here, the repository writer builds each ``config.pbtxt`` from here, the
python-backend models read and write tensors by these names, and the client builds its
requests from here. numpy only.

Shapes use -1 for a dynamic dimension. ``dims`` are the per-request dims Triton sees; for a
batching model (``max_batch_size > 0``) Triton prepends the batch dimension.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

# SAM's fixed geometry: the encoder sees a square of IMAGE_SIZE pixels, the embedding is
# EMBED_DIM x EMBED_SIZE x EMBED_SIZE, low-resolution masks are LOW_RES_SIZE square.
IMAGE_SIZE = 1024
EMBED_DIM = 256
EMBED_SIZE = 64
LOW_RES_SIZE = 256
# The decoder predicts 4 masks per prompt: index 0 is SAM's single-mask output, 1..3 its
# multimask outputs. SamPredictor returns [0:1] or [1:4]; the client does the same slice.
NUM_MASK_OUTPUTS = 4
SINGLE_MASK_SLICE = slice(0, 1)
MULTIMASK_SLICE = slice(1, 4)

# Point labels, as in SAM's own ONNX export: 0 background, 1 foreground, 2 and 3 the
# top-left and bottom-right box corners, -1 the padding point.
LABEL_PAD = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3
VALID_LABELS = (LABEL_PAD, LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT)

# SAM's pixel normalization (ImageNet mean / std on 0..255), folded into the encoder graph.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

TRITON_DTYPES = {
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.bool_): "TYPE_BOOL",
    np.dtype(np.object_): "TYPE_STRING",
}
WIRE_DTYPES = {  # tritonclient's datatype strings
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float16): "FP16",
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.object_): "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a served model.

    Arguments:
      name: the tensor's name in config.pbtxt and on the wire.
      dtype: its numpy scalar type.
      dims: its shape (without the batch axis of a batching model; -1: any size).
      doc: what it holds.
      optional: a request may leave it out.
    """

    name: str
    dtype: DTypeLike  # a scalar type (np.float32, ...): read through np.dtype()
    dims: Tuple[int, ...]
    doc: str = ""
    optional: bool = False  # a request may leave it out (config.pbtxt ``optional: true``)

    @property
    def config_dtype(self) -> str:
        """The ``data_type`` enum name used in config.pbtxt."""
        return TRITON_DTYPES[np.dtype(self.dtype)]

    @property
    def wire_dtype(self) -> str:
        """The datatype string tritonclient's InferInput takes."""
        return WIRE_DTYPES[np.dtype(self.dtype)]


@dataclass(frozen=True)
class ModelSpec:
    """One served model: its inputs, outputs and whether Triton batches it."""

    suffix: str  # the served name is f"{name}{suffix}"
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    batching: bool  # True: dims exclude the batch axis and max_batch_size > 0

    def served_name(self, name: str) -> str:
        """The name Triton serves this model under for deployment ``name``."""
        return f"{name}{self.suffix}"

    def input(self, name: str) -> TensorSpec:
        """The input called ``name``."""
        return _by_name(self.inputs, name)

    def full_shape(self, spec: TensorSpec) -> Tuple[int, ...]:
        """The shape of the tensor as the ONNX graph sees it (batch axis included)."""
        return ((-1,) + spec.dims) if self.batching else spec.dims


def _by_name(specs: Tuple[TensorSpec, ...], name: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(name)


# --- Encoder: the resized, padded image -> image embeddings ------------------------------
IMAGE = TensorSpec(
    "image",
    np.uint8,
    (IMAGE_SIZE, IMAGE_SIZE, 3),
    "RGB, layout HWC (NHWC with the batch axis): the image resized so its long side is "
    "1024 (PIL bilinear, as segment-anything), placed top-left, the rest zero.",
)
INPUT_SIZE = TensorSpec(
    "input_size",
    np.int64,
    (2,),
    "(height, width) of the resized image inside the 1024 square; the encoder zeroes the "
    "padding after normalization, as Sam.preprocess does.",
)
IMAGE_EMBEDDINGS = TensorSpec("image_embeddings", np.float32, (EMBED_DIM, EMBED_SIZE, EMBED_SIZE))

ENCODER = ModelSpec(suffix="_encoder", inputs=(IMAGE, INPUT_SIZE), outputs=(IMAGE_EMBEDDINGS,), batching=True)

# --- Decoder: ONE image embedding + K prompts -> 4 low-res masks and IoU scores each -----
DECODER_IMAGE_EMBEDDINGS = TensorSpec(
    "image_embeddings", np.float32, (1, EMBED_DIM, EMBED_SIZE, EMBED_SIZE), "one image"
)
POINT_COORDS = TensorSpec(
    "point_coords",
    np.float32,
    (-1, -1, 2),
    "K prompts x N points x (x, y) in the 1024 frame (ResizeLongestSide.apply_coords).",
)
POINT_LABELS = TensorSpec("point_labels", np.float32, (-1, -1), "K x N labels from VALID_LABELS")
MASK_INPUT = TensorSpec(
    "mask_input", np.float32, (-1, 1, LOW_RES_SIZE, LOW_RES_SIZE), "K low-res logits; zeros if none"
)
HAS_MASK_INPUT = TensorSpec("has_mask_input", np.float32, (-1,), "K flags: 1 uses mask_input, 0 ignores it")
LOW_RES_MASKS = TensorSpec("low_res_masks", np.float32, (-1, NUM_MASK_OUTPUTS, LOW_RES_SIZE, LOW_RES_SIZE))
IOU_PREDICTIONS = TensorSpec("iou_predictions", np.float32, (-1, NUM_MASK_OUTPUTS))

DECODER = ModelSpec(
    suffix="_decoder",
    inputs=(DECODER_IMAGE_EMBEDDINGS, POINT_COORDS, POINT_LABELS, MASK_INPUT, HAS_MASK_INPUT),
    outputs=(LOW_RES_MASKS, IOU_PREDICTIONS),
    batching=False,  # one embedding + K prompts has no common batch axis
)

# The decoder for automatic mask generation's point batches (export/amg_decoder.py): point
# prompts without a mask input, the decoder's outputs, reordered for the CPU. Its graph lies
# beside the decoder's (NAME_decoder/1/AMG_DECODER_FILE); the session stage runs it in its
# stub next to the python decoder. Not a served model of its own.
AMG_DECODER = ModelSpec(
    suffix="_amg_decoder",
    inputs=(DECODER_IMAGE_EMBEDDINGS, POINT_COORDS, POINT_LABELS),
    outputs=(LOW_RES_MASKS, IOU_PREDICTIONS),
    batching=False,
)
AMG_DECODER_FILE = "amg_decoder.onnx"

# --- Ensemble: image + prompts -> masks in one call ---------------------------------------
# Not batching: the encoder (a batching member) is called with batch 1, which is why the
# ensemble's image carries an explicit leading 1.
ENSEMBLE = ModelSpec(
    suffix="",
    inputs=(
        TensorSpec(IMAGE.name, IMAGE.dtype, (1,) + IMAGE.dims, IMAGE.doc),
        TensorSpec(INPUT_SIZE.name, INPUT_SIZE.dtype, (1,) + INPUT_SIZE.dims, INPUT_SIZE.doc),
        POINT_COORDS,
        POINT_LABELS,
        MASK_INPUT,
        HAS_MASK_INPUT,
    ),
    outputs=(LOW_RES_MASKS, IOU_PREDICTIONS),
    batching=False,
)

# How the ensemble wires its members: (member spec, {member tensor: ensemble tensor}).
ENSEMBLE_STEPS = (
    (ENCODER, {IMAGE.name: IMAGE.name, INPUT_SIZE.name: INPUT_SIZE.name}, {IMAGE_EMBEDDINGS.name: "_embedding"}),
    (
        DECODER,
        {
            DECODER_IMAGE_EMBEDDINGS.name: "_embedding",
            POINT_COORDS.name: POINT_COORDS.name,
            POINT_LABELS.name: POINT_LABELS.name,
            MASK_INPUT.name: MASK_INPUT.name,
            HAS_MASK_INPUT.name: HAS_MASK_INPUT.name,
        },
        {LOW_RES_MASKS.name: LOW_RES_MASKS.name, IOU_PREDICTIONS.name: IOU_PREDICTIONS.name},
    ),
)

# --- AMG stage: decoder + SamAutomaticMaskGenerator's per-batch filtering, on the server ---
# One embedding + K single-point prompts in; only the masks that pass the IoU and stability
# thresholds come back, as bits at the crop's size, instead of 3 float32 256x256 maps per
# point (about 800 MB per image at points_per_side=32). Calls NAME_decoder through BLS.
CROP_SIZE = TensorSpec("crop_size", np.int64, (2,), "(height, width) of the image (or crop) encoded")
AMG_THRESHOLDS = TensorSpec(
    "amg_thresholds", np.float32, (3,), "pred_iou_thresh, stability_score_thresh, stability_score_offset"
)
KEPT_INDEX = TensorSpec("kept_index", np.int64, (-1,), "indices into the K x 3 multimask outputs, prompt-major")
KEPT_IOU = TensorSpec("kept_iou_predictions", np.float32, (-1,))
KEPT_STABILITY = TensorSpec("kept_stability_scores", np.float32, (-1,))
KEPT_MASKS = TensorSpec("kept_masks_packed", np.uint8, (-1, -1), "np.packbits of each H x W mask (logits > 0)")

AMG = ModelSpec(
    suffix="_amg",
    inputs=(DECODER_IMAGE_EMBEDDINGS, POINT_COORDS, POINT_LABELS, INPUT_SIZE, CROP_SIZE, AMG_THRESHOLDS),
    outputs=(KEPT_INDEX, KEPT_IOU, KEPT_STABILITY, KEPT_MASKS),
    batching=False,
)

# The AMG filter alone (server/amg_filter/graph.py): the decoder's outputs for a batch in, the kept
# masks out. Served as its own model only where the decoder runs on a GPU (onnxruntime);
# with the python decoder the AMG and session stages filter in numpy, in their stubs.
AMG_FILTER = ModelSpec(
    suffix="_amg_filter",
    inputs=(LOW_RES_MASKS, IOU_PREDICTIONS, INPUT_SIZE, CROP_SIZE, AMG_THRESHOLDS),
    outputs=(KEPT_INDEX, KEPT_IOU, KEPT_STABILITY, KEPT_MASKS),
    batching=False,
)


# --- Session: the embedding stays on the server ------------------------------------------
# A python-backend model holds embeddings in an LRU cache (bounded in bytes) under an image
# id. A request that carries an image (raw, or JPEG/PNG bytes) encodes it (through BLS to
# NAME_encoder) and stores it; a request that carries prompts decodes them (through BLS to
# NAME_decoder) against the stored embedding; one request may do both. A predict on an id
# the server does not hold fails with UNKNOWN_IMAGE_ID_MESSAGE; the client then re-sends
# the image and retries. What comes back is chosen by the requested outputs: float16 logits
# by default, float32 when the caller asks for logits, only the 1 or 3 masks wanted.
# With crop_size + amg_thresholds, point prompts get the AMG stage's filtering and outputs
# (kept masks as bits), so automatic mask generation sends no embeddings either.
def _optional(spec: TensorSpec, dims=None) -> TensorSpec:
    return replace(spec, optional=True, dims=spec.dims if dims is None else dims)


IMAGE_ID = TensorSpec("image_id", np.object_, (1,), "the client's id for the image: a content hash")
ENCODED_IMAGE = TensorSpec(
    "encoded_image",
    np.object_,
    (1,),
    "the image file's bytes (JPEG, PNG, ...); the server decodes and preprocesses it as the client would",
    optional=True,
)
MULTIMASK_OUTPUT = TensorSpec(
    "multimask_output", np.bool_, (1,), "True: masks 1..3 (SamPredictor's multimask), False: mask 0", optional=True
)
ORIGINAL_SIZE = TensorSpec("original_size", np.int64, (2,), "(height, width) of the image before resizing")
SESSION_LOW_RES_MASKS = TensorSpec(LOW_RES_MASKS.name, np.float32, (-1, -1, LOW_RES_SIZE, LOW_RES_SIZE))
LOW_RES_MASKS_FP16 = TensorSpec(
    "low_res_masks_fp16",
    np.float16,
    (-1, -1, LOW_RES_SIZE, LOW_RES_SIZE),
    "the same logits as float16: half the bytes, for callers that threshold them",
)
SESSION_IOU = TensorSpec(IOU_PREDICTIONS.name, np.float32, (-1, -1))

SESSION = ModelSpec(
    suffix="_session",
    inputs=(
        IMAGE_ID,
        _optional(IMAGE, (1,) + IMAGE.dims),
        _optional(INPUT_SIZE, (1,) + INPUT_SIZE.dims),
        _optional(ORIGINAL_SIZE),
        ENCODED_IMAGE,
        _optional(POINT_COORDS),
        _optional(POINT_LABELS),
        _optional(MASK_INPUT),
        _optional(HAS_MASK_INPUT),
        MULTIMASK_OUTPUT,
        _optional(CROP_SIZE),
        _optional(AMG_THRESHOLDS),
    ),
    outputs=(
        SESSION_LOW_RES_MASKS,
        LOW_RES_MASKS_FP16,
        SESSION_IOU,
        INPUT_SIZE,
        ORIGINAL_SIZE,
        DECODER_IMAGE_EMBEDDINGS,
        KEPT_INDEX,
        KEPT_IOU,
        KEPT_STABILITY,
        KEPT_MASKS,
    ),
    batching=False,
)
SESSION_SET_OUTPUTS = (INPUT_SIZE.name, ORIGINAL_SIZE.name)


def image_id_for(
    padded_image: Optional[np.ndarray] = None,
    input_size=None,
    original_size=None,
    encoded_image: Optional[bytes] = None,
) -> str:
    """The session image id: a hash of what is encoded (the padded image and its sizes, or
    the file's bytes). The server recomputes it and refuses a mismatch, so an id cannot be
    bound to another image, and the same image set by any client finds its embedding there."""
    digest = hashlib.blake2b(digest_size=IMAGE_ID_LENGTH // 2)
    if encoded_image is not None:
        digest.update(b"file:")
        digest.update(encoded_image)
    else:
        digest.update(b"raw:")
        digest.update(np.ascontiguousarray(padded_image, np.uint8).data)
        digest.update(np.asarray(tuple(input_size) + tuple(original_size), np.int64).data)
    return digest.hexdigest()


UNKNOWN_IMAGE_ID_MESSAGE = "unknown image_id"
# gRPC metadata every request that names an image carries: the key a layer-7 proxy hashes on
# (nginx: hash $http_samtriton_image_id consistent) to keep an image's requests on one replica.
IMAGE_ID_HEADER = "samtriton-image-id"
# Triton error codes the python models answer with (pb_utils.TritonError.<code>); the client
# maps the gRPC status they become, never the message text.
ERROR_CODE_INVALID_INPUT = "INVALID_ARG"  # -> INVALID_ARGUMENT: InvalidInput
ERROR_CODE_UNKNOWN_IMAGE = "NOT_FOUND"  # -> NOT_FOUND: ImageNotCached (re-send the image)
ERROR_CODE_UNAVAILABLE = "UNAVAILABLE"  # -> UNAVAILABLE: a model this one calls is not there; fail over
ERROR_CODE_INTERNAL = "INTERNAL"  # -> INTERNAL: ServerError
# The session cache's directory for one server (``samtriton serve --session-cache-dir``):
# read by the session model from its environment; servers share a directory only if told to.
SESSION_CACHE_DIR_ENV = "SAMTRITON_SESSION_CACHE_DIR"
IMAGE_ID_LENGTH = 32
IMAGE_ID_PATTERN = re.compile(f"[0-9a-f]{{{IMAGE_ID_LENGTH}}}")
MAX_ENCODED_IMAGE_BYTES = 64 * 1024 * 1024
DEFAULT_SESSION_CACHE_MIB = 1024

MODEL_SPECS = (ENCODER, DECODER, ENSEMBLE, AMG, SESSION)

# Limits, in this one place. Prompt limits are applied by client and server alike; the
# image side by the client (the server only ever sees the 1024 square).
MAX_ENCODER_BATCH = 8
MAX_PROMPTS_PER_REQUEST = 256
MAX_POINTS_PER_PROMPT = 64
MAX_IMAGE_SIDE = 16384
# One request's tensors, in bytes: the largest request the shape limits allow (256 prompts
# with mask inputs, 68 MiB) fits. tritonserver has no message-size flag; the server's shape limits bound it.
MAX_REQUEST_BYTES = 80 * 1024 * 1024
# Automatic mask generation: prompts x crop pixels per request (64 points on a 4.2 MP crop,
# 16 on a 4096 x 4096 one). It bounds the work and the response (at most 3 masks a prompt,
# 1 bit a pixel: 96 MiB); the client splits its point batches to fit.
MAX_AMG_PROMPT_PIXELS = 2**28
# Working memory of the AMG filter per request, by default (model parameter amg_filter_mib):
# the filter runs over chunks of masks that fit it, whatever the prompts and crop size. On a
# GPU each chunk is a call, and small chunks cost several times larger ones (docs/benchmarks.md),
# so GPU repositories get more.
DEFAULT_AMG_FILTER_MIB = 256
DEFAULT_AMG_FILTER_MIB_GPU = 2048

MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "vit_t")
DEFAULT_MODEL_NAME = "sam"

# The version of this wire contract (tensor names, dtypes and shapes, the AMG outputs, the
# session protocol), "MAJOR.MINOR", written into every exported model's config as the
# parameter CONTRACT_VERSION_PARAMETER. A change a client of the previous version cannot
# follow raises MAJOR; an addition it can ignore raises MINOR. Clients use only replicas of
# their own MAJOR. A config without the parameter was exported before versions were
# recorded: UNVERSIONED_CONTRACT.
CONTRACT_VERSION = "1.0"
CONTRACT_VERSION_PARAMETER = "samtriton_contract_version"
UNVERSIONED_CONTRACT = "1.0"
