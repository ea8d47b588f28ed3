"""The requests samtriton sends, as transport ``Call``s: one builder per operation of the
served models, shared by the sync and asyncio clients.

Session requests name their image: the transport routes them by that id and, for a request
that uses a stored embedding, knows what to send again when the server does not hold it
(``source``: the padded image with its sizes, or the image file's bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np

from . import contract as C
from .wire import Call, make_call


@dataclass(frozen=True, eq=False)
class ImageSource:
    """What the session model encodes for one image, and what is sent again when the server no
    longer holds its embedding: the padded image with its sizes, or an image file's bytes.

    Arguments:
      padded_image: the [1024, 1024, 3] uint8 square (``transforms.preprocess``).
      input_size: (height, width) of the resized image inside that square.
      original_size: (height, width) of the image as given.
      encoded_image: an image file's bytes (JPEG, PNG, ...), which the server decodes and
        preprocesses; instead of the three above.
    """

    padded_image: Optional[np.ndarray] = None
    input_size: Optional[Tuple[int, int]] = None
    original_size: Optional[Tuple[int, int]] = None
    encoded_image: Optional[bytes] = None

    @classmethod
    def from_file(cls, data: Union[bytes, bytearray]) -> "ImageSource":
        """The source of an image file's bytes."""
        return cls(encoded_image=bytes(data))

    @classmethod
    def of(cls, source: Union["ImageSource", Mapping[str, Any]]) -> "ImageSource":
        """``source`` as an ``ImageSource``; a mapping of its fields (the form this SDK took
        before) is converted."""
        return source if isinstance(source, ImageSource) else cls(**source)

    @cached_property
    def image_id(self) -> str:
        """The session image id of this source (``contract.image_id_for``), computed once."""
        return C.image_id_for(self.padded_image, self.input_size, self.original_size, self.encoded_image)


Source = ImageSource  # the name ``session_*``'s ``source`` arguments had


def encode(model: str, padded_images: np.ndarray, input_sizes: np.ndarray) -> Call:
    """[B, 1024, 1024, 3] uint8 + [B, 2] -> [B, 256, 64, 64] embeddings (NAME_encoder)."""
    size = len(padded_images) * int(np.prod(C.IMAGE_EMBEDDINGS.dims)) * 4
    return make_call(
        C.ENCODER,
        model,
        {C.IMAGE.name: padded_images, C.INPUT_SIZE.name: input_sizes},
        output_bytes={C.IMAGE_EMBEDDINGS.name: size},
    )


def decode(model: str, prompts: Dict[str, np.ndarray]) -> Call:
    """One embedding + K prompts -> all 4 masks' logits and IoU predictions (NAME_decoder)."""
    size = len(prompts[C.POINT_COORDS.name]) * C.NUM_MASK_OUTPUTS * C.LOW_RES_SIZE**2 * 4
    return make_call(C.DECODER, model, prompts, output_bytes={C.LOW_RES_MASKS.name: size})


def session_set(model: str, image_id: str, source: ImageSource) -> Call:
    """Encode an image on the server and keep its embedding there under ``image_id``."""
    tensors = {C.IMAGE_ID.name: np.array([image_id], dtype=object)}
    if source.encoded_image is not None:
        tensors[C.ENCODED_IMAGE.name] = np.array([bytes(source.encoded_image)], dtype=object)
    else:
        tensors[C.IMAGE.name] = cast(np.ndarray, source.padded_image)[None]
        tensors[C.INPUT_SIZE.name] = np.asarray([source.input_size], np.int64)
        tensors[C.ORIGINAL_SIZE.name] = np.asarray(source.original_size, np.int64)
    return make_call(C.SESSION, model, tensors, outputs=C.SESSION_SET_OUTPUTS, image_id=image_id)


def set_result(out: Dict[str, np.ndarray]) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """(input_size, original_size) from a ``session_set`` answer."""
    # Each is (height, width): the contract's dims for both are (2,).
    return (
        cast(Tuple[int, int], tuple(int(v) for v in out[C.INPUT_SIZE.name])),
        cast(Tuple[int, int], tuple(int(v) for v in out[C.ORIGINAL_SIZE.name])),
    )


def _on_stored(
    model: str,
    image_id: str,
    source: Optional[ImageSource],
    tensors: Dict[str, np.ndarray],
    outputs: Sequence[str],
    output_bytes: Optional[Dict[str, int]] = None,
) -> Call:
    tensors = dict(tensors, **{C.IMAGE_ID.name: np.array([image_id], dtype=object)})
    resend = session_set(model, image_id, source) if source is not None else None
    return make_call(
        C.SESSION, model, tensors, outputs=outputs, output_bytes=output_bytes, image_id=image_id, resend=resend
    )


def session_decode(
    model: str,
    image_id: str,
    prompts: Dict[str, np.ndarray],
    multimask_output: bool,
    float16: bool = True,
    source: Optional[ImageSource] = None,
) -> Call:
    """K prompts against the stored embedding -> ([K, C, 256, 256] logits, [K, C] IoU).

    Arguments:
      model: the deployment name.
      image_id: the stored image's id.
      prompts: the decoder's prompt tensors; ``mask_input`` / ``has_mask_input`` may be left
        out (no mask prompt).
      multimask_output: C = 3 masks per prompt, else 1.
      float16: logits as float16 (else float32).
      source: the image, sent again if the server does not hold it (None: ``ImageNotCached``).
    """
    logits = C.LOW_RES_MASKS_FP16 if float16 else C.SESSION_LOW_RES_MASKS
    k = len(prompts[C.POINT_COORDS.name])
    count = C.MULTIMASK_SLICE if multimask_output else C.SINGLE_MASK_SLICE
    size = k * (count.stop - count.start) * C.LOW_RES_SIZE**2 * np.dtype(logits.dtype).itemsize
    tensors = dict(prompts, **{C.MULTIMASK_OUTPUT.name: np.array([multimask_output])})
    return _on_stored(model, image_id, source, tensors, (logits.name, C.SESSION_IOU.name), {logits.name: size})


def decode_result(call: Call, out: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(low-res logits, IoU predictions) from a ``session_decode`` answer."""
    logits_name, iou_name = call.outputs
    return out[logits_name], out[iou_name]


def session_amg(
    model: str, image_id: str, tensors: Dict[str, np.ndarray], source: Optional[ImageSource] = None
) -> Call:
    """The AMG stage's request (``C.AMG``'s inputs but the embedding) against the stored
    embedding of ``image_id``: the kept masks' outputs, as ``C.AMG.outputs``."""
    return _on_stored(model, image_id, source, tensors, [spec.name for spec in C.AMG.outputs])


def session_embedding(model: str, image_id: str, source: Optional[ImageSource] = None) -> Call:
    """The stored [1, 256, 64, 64] float32 embedding of ``image_id``."""
    spec = C.DECODER_IMAGE_EMBEDDINGS
    return _on_stored(model, image_id, source, {}, (spec.name,), {spec.name: int(np.prod(spec.dims)) * 4})
