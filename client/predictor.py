"""``SamPredictor`` over Triton gRPC, with segment-anything's API and results.

Switch from ``segment_anything.SamPredictor(sam)`` to ``samtriton.SamPredictor(url, model=...)``
and keep calling ``set_image`` / ``predict``: inputs, output shapes, dtypes and meaning are
the reference's. The image is encoded on the server (``NAME_encoder``); prompts are decoded
there too (``NAME_decoder``); upscaling and thresholding happen here, in numpy.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np

from . import calls
from . import contract as C
from .errors import InvalidInput
from .options import DEFAULT_URL, check_names
from .prompts import batch_prompt, image_source, masks_from_logits, prompt_tensors, read_image_file, single_prompt
from .transforms import ImageLike, ResizeLongestSide, decode_image, encoded_image_size
from .transport import Deployment, Transport, make_call
from .validation import check_decoder_inputs

logger = logging.getLogger("samtriton")

# What to send again when a server no longer holds an image: an ImageSource, or (as before it
# existed) a mapping of its fields.
SourceLike = Union[calls.ImageSource, Mapping[str, Any], None]


class TritonSam(Deployment):
    """Typed access to the served models of one deployment ``model``, on one or more Triton
    endpoints: what ``SamPredictor`` (its ``client``), ``SamAutomaticMaskGenerator`` and the
    benchmarks call.

    Arguments: ``samtriton.transport.Deployment``'s (``url``, ``model`` and the connection
    options of ``samtriton.options.ConnectionOptions``). Endpoint choice, fail-over, retries
    and re-sending an evicted image: ``samtriton.transport``'s docstring, the one description.
    ``bytes_sent`` / ``bytes_received`` count the tensor bytes that crossed the wire.
    """

    transport_class = Transport

    def endpoint_for(self, image_id: str) -> str:
        """The endpoint that requests for ``image_id`` go to now (its first choice that is up)."""
        return self.transport.endpoints.order(image_id)[0]

    def admin(self, url: Optional[str] = None):
        """A tritonclient for configuration and statistics queries (first endpoint by default)."""
        return self.transport.admin(url or self.urls[0])

    def endpoint_ready(self, url: str) -> bool:
        """``url`` is live with every served model of the deployment READY."""
        return self.transport.endpoint_ready(url, self.model)

    def is_ready(self) -> bool:
        """True when at least one endpoint is ready: live, with every served model of the
        deployment (``contract.MODEL_SPECS``) READY."""
        return any(self.endpoint_ready(u) for u in self.urls)

    def infer(
        self,
        spec: C.ModelSpec,
        tensors: Dict[str, np.ndarray],
        outputs: Optional[Sequence[str]] = None,
        output_bytes: Optional[Dict[str, int]] = None,
    ) -> Dict[str, np.ndarray]:
        """One stateless request to ``spec``'s model; its outputs by name.

        Arguments:
          spec: the served model's contract (``contract.ENCODER``, ...).
          tensors: the inputs by name (optional inputs may be left out).
          outputs: the output names wanted (default all).
          output_bytes: the most bytes each output may take, for outputs that may come back
            through shared memory.
        """
        return self.transport.call(make_call(spec, self.model, tensors, outputs, output_bytes))

    def encode(self, padded_images: np.ndarray, input_sizes: np.ndarray) -> np.ndarray:
        """[B, 1024, 1024, 3] uint8 + [B, 2] -> [B, 256, 64, 64] embeddings."""
        return self.transport.call(calls.encode(self.model, padded_images, input_sizes))[C.IMAGE_EMBEDDINGS.name]

    def decode(self, prompts: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """One embedding + K prompts -> ([K, 4, 256, 256] logits, [K, 4] IoU predictions)."""
        check_decoder_inputs(*(prompts[s.name] for s in C.DECODER.inputs))
        out = self.transport.call(calls.decode(self.model, prompts))
        return out[C.LOW_RES_MASKS.name], out[C.IOU_PREDICTIONS.name]

    def segment(
        self, padded_image: np.ndarray, input_size: Tuple[int, int], prompts: Dict[str, np.ndarray]
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Image + K prompts through the ensemble in one call -> (low-res logits, IoU predictions).

        Arguments:
          padded_image: the [1024, 1024, 3] uint8 square.
          input_size: (h, w) of the resized image inside it.
          prompts: the decoder's prompt tensors (``prompts.prompt_tensors``).
        """
        tensors = dict(prompts)
        tensors[C.IMAGE.name] = padded_image[None]
        tensors[C.INPUT_SIZE.name] = np.asarray([input_size], dtype=np.int64)
        check_decoder_inputs(
            np.zeros(C.DECODER_IMAGE_EMBEDDINGS.dims, np.float32), *(prompts[s.name] for s in C.DECODER.inputs[1:])
        )
        out = self.infer(C.ENSEMBLE, tensors)
        return out[C.LOW_RES_MASKS.name], out[C.IOU_PREDICTIONS.name]

    # --- session model: embeddings kept on the server under an image id ------------------
    def session_set(
        self,
        image_id: str,
        padded_image: Optional[np.ndarray] = None,
        input_size: Optional[Tuple[int, int]] = None,
        original_size: Optional[Tuple[int, int]] = None,
        encoded_image: Optional[bytes] = None,
    ) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """Encode an image on the server and keep its embedding there under ``image_id``;
        returns (input_size, original_size).

        Arguments:
          image_id: the image's id (``calls.ImageSource.image_id``).
          padded_image, input_size, original_size: the padded image and its sizes, or
          encoded_image: the image file's bytes (decoded and preprocessed by the server).
        """
        source = calls.ImageSource(padded_image, input_size, original_size, encoded_image)
        return calls.set_result(self.transport.call(calls.session_set(self.model, image_id, source)))

    def session_decode(
        self,
        image_id: str,
        prompts: Dict[str, np.ndarray],
        multimask_output: bool,
        float16: bool = True,
        source: SourceLike = None,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """K prompts against the stored embedding -> ([K, C, 256, 256] logits, [K, C] IoU).

        Arguments:
          image_id: the stored image's id.
          prompts: the decoder's prompt tensors.
          multimask_output: C = 3 masks per prompt, else 1.
          float16: logits as float16 (else float32).
          source: the image (a ``calls.ImageSource``, or a mapping of its fields), sent again
            if the server does not hold it; without, that raises ``ImageNotCached``.
        """
        call = calls.session_decode(self.model, image_id, prompts, multimask_output, float16, _source(source))
        return calls.decode_result(call, self.transport.call(call))

    def session_amg(
        self, image_id: str, tensors: Dict[str, np.ndarray], source: SourceLike = None
    ) -> Dict[str, np.ndarray]:
        """The AMG stage's request (``C.AMG``'s inputs but the embedding) against the stored
        embedding of ``image_id``: the kept masks' outputs, as ``C.AMG.outputs``."""
        return self.transport.call(calls.session_amg(self.model, image_id, tensors, _source(source)))

    def session_embedding(self, image_id: str, source: SourceLike = None) -> np.ndarray:
        """The stored [1, 256, 64, 64] float32 embedding of ``image_id``."""
        out = self.transport.call(calls.session_embedding(self.model, image_id, _source(source)))
        return out[C.DECODER_IMAGE_EMBEDDINGS.name]

    def close(self) -> None:
        """Closes the channels (shared-memory regions are unregistered and freed)."""
        self.transport.close()


def _source(source: SourceLike) -> Optional[calls.ImageSource]:
    """``source`` as an ``ImageSource`` (a mapping of its fields is still taken)."""
    return None if source is None else calls.ImageSource.of(source)


class SamPredictor:
    """segment-anything's ``SamPredictor``, served by Triton.

    Arguments:
      url: the Triton gRPC endpoint "host:port", or several (a list, or comma-separated);
        how an image's requests pick a replica and fail over: ``samtriton.transport``'s
        docstring.
      model: the deployment name given to ``samtriton export --name`` (default "sam").
      session: keep the image's embedding on the server (the session model: the image is
        sent once, clicks send only prompts); False sends the embedding back with each
        prompt (stateless: any replica serves any request).
      connection: the connection options, keywords only: the fields of
        ``samtriton.options.ConnectionOptions`` (timeout, headers, retries, backoff,
        down_seconds, shared_memory, admin_key, and tritonclient's TLS arguments), the same for
        ``TritonSam`` and ``AsyncSamPredictor``. An unknown option is a ``TypeError`` naming it.

    ``client`` is its ``TritonSam``: typed access to the deployment's models (what
    ``SamAutomaticMaskGenerator`` and the benchmarks use).
    """

    # The current image (``reset_image``: none). ``features``: its embedding, stateless mode
    # only; ``image_id`` and ``_image_source`` (what to send again): session mode only.
    features: Optional[np.ndarray]
    image_id: Optional[str]
    _image_source: Optional[calls.ImageSource]
    original_size: Optional[Tuple[int, int]]
    input_size: Optional[Tuple[int, int]]

    def __init__(
        self,
        url: Union[str, Sequence[str]] = DEFAULT_URL,
        model: str = C.DEFAULT_MODEL_NAME,
        *,
        session: bool = True,
        **connection,
    ):
        check_names("SamPredictor", connection)
        self.client = TritonSam(url, model, **connection)
        self.session = session
        self.transform = ResizeLongestSide(C.IMAGE_SIZE)
        self.reset_image()

    # --- image ---------------------------------------------------------------------------
    def set_image(self, image: ImageLike, image_format: str = "RGB") -> None:
        """Encode ``image`` on the server for the following ``predict`` calls. In session mode
        the embedding stays on the server; otherwise it is returned and kept here.

        Arguments:
          image: HWC uint8 array in ``image_format``, a PIL image or a path. Grayscale (HxW)
            is replicated to 3 channels, RGBA drops alpha, uint16 is scaled to uint8 by
            255/65535 (see ``transforms.to_rgb_uint8``).
          image_format: "RGB" or "BGR".
        """
        source = image_source(image, image_format, self.transform)
        self.reset_image()
        if self.session:
            self._image_source = source
            self.client.session_set(source.image_id, source.padded_image, source.input_size, source.original_size)
            self.image_id = source.image_id
        else:
            self.features = self.client.encode(
                cast(np.ndarray, source.padded_image)[None], np.asarray([source.input_size], dtype=np.int64)
            )
        self.original_size = source.original_size
        self.input_size = source.input_size
        self.is_image_set = True

    def set_image_file(self, image_file: Union[bytes, str, "os.PathLike"]) -> None:
        """Like ``set_image``, for an image file. In session mode the file's bytes are sent as
        they are and the server decodes and preprocesses them exactly as ``set_image`` would
        here: a JPEG is ~10x fewer bytes than the padded image.

        Arguments:
          image_file: the file's path, or its bytes (JPEG, PNG, ...).
        """
        data = image_file if isinstance(image_file, (bytes, bytearray)) else read_image_file(image_file)
        if not self.session:
            return self.set_image(decode_image(data))
        encoded_image_size(data)  # a clear error here for a file the server could not read either
        self.reset_image()
        self._image_source = source = calls.ImageSource.from_file(data)
        self.input_size, self.original_size = self.client.session_set(
            source.image_id, encoded_image=source.encoded_image
        )
        self.image_id = source.image_id
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The [1, 256, 64, 64] float32 embedding of the current image."""
        self._require_image()
        # With an image set, session mode has its id and stateless mode its embedding.
        if self.session:
            return self.client.session_embedding(cast(str, self.image_id), self._image_source)
        return cast(np.ndarray, self.features)

    def reset_image(self) -> None:
        """Forget the current image (its embedding, id, sizes), as the reference does."""
        self.is_image_set = False
        self.features = self.image_id = self._image_source = None
        self.original_size = self.input_size = None

    # --- prompts -------------------------------------------------------------------------
    # The prompt methods' arguments are the reference's, in its order, grouped by role.
    def predict(
        self, point_coords: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True, return_logits: bool = False,
    ):  # fmt: skip
        """One prompt, as ``segment_anything.SamPredictor.predict``.

        Arguments:
          point_coords: Nx2 (x, y) pixels of the original image.
          point_labels: N labels, 1 (foreground) or 0 (background).
          box: (x0, y0, x1, y1) pixels of the original image.
          mask_input: 1x256x256 low-res logits from a previous call.
          multimask_output: three masks (C = 3), else one (C = 1).
          return_logits: float logits instead of boolean masks.

        Returns:
          masks (CxHxW), scores (C,) and low-res logits (Cx256x256).
        """
        prompt = single_prompt(point_coords, point_labels, box, mask_input)
        out = self._predict(*prompt, multimask_output, return_logits)
        return tuple(x[0] for x in out)

    def predict_batch(
        self, point_coords: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
        boxes: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True, return_logits: bool = False,
    ):  # fmt: skip
        """K prompts on the current image in ONE request (``predict_torch`` in original pixels).

        Arguments:
          point_coords: KxNx2; point_labels: KxN; boxes: Kx4; mask_input: Kx1x256x256; the
            others: ``predict``'s.

        Returns:
          masks KxCxHxW, scores KxC, low-res logits KxCx256x256.
        """
        prompt = batch_prompt(point_coords, point_labels, boxes, mask_input)
        return self._predict(*prompt, multimask_output, return_logits)

    def segment_image(
        self, image: ImageLike, image_format: str = "RGB",
        point_coords=None, point_labels=None, box=None, mask_input=None,
        multimask_output: bool = True, return_logits: bool = False,
    ):  # fmt: skip
        """``set_image`` + ``predict`` in one call through the ensemble; keeps no state.

        Arguments: ``set_image``'s, then ``predict``'s.
        """
        source = image_source(image, image_format, self.transform)
        prompts = prompt_tensors(
            self.transform, *single_prompt(point_coords, point_labels, box, mask_input), source.original_size
        )
        input_size = cast(Tuple[int, int], source.input_size)
        low_res, iou = self.client.segment(cast(np.ndarray, source.padded_image), input_size, prompts)
        selected = C.MULTIMASK_SLICE if multimask_output else C.SINGLE_MASK_SLICE
        out = masks_from_logits(low_res, iou, selected, return_logits, input_size, source.original_size)
        return tuple(x[0] for x in out)

    def _predict(
        self,
        points: Optional[np.ndarray],
        labels: Optional[np.ndarray],
        boxes: Optional[np.ndarray],
        masks: Optional[np.ndarray],
        multimask_output: bool,
        return_logits: bool,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._require_image()
        # The session model fills in an absent mask prompt; the stateless decoder needs it sent.
        prompts = prompt_tensors(
            self.transform, points, labels, boxes, masks, self.original_size, fill_absent_mask=not self.session
        )
        if self.session:
            # float16 logits unless the caller wants logits: the masks (logits > 0) are the same.
            low_res, iou = self.client.session_decode(
                cast(str, self.image_id),
                prompts,
                multimask_output,
                float16=not return_logits,
                source=self._image_source,
            )
            return masks_from_logits(low_res, iou, None, return_logits, self.input_size, self.original_size)
        prompts[C.DECODER_IMAGE_EMBEDDINGS.name] = cast(np.ndarray, self.features)
        low_res, iou = self.client.decode(prompts)
        selected = C.MULTIMASK_SLICE if multimask_output else C.SINGLE_MASK_SLICE
        return masks_from_logits(low_res, iou, selected, return_logits, self.input_size, self.original_size)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise InvalidInput("An image must be set with .set_image(...) before mask prediction.")

    @property
    def model(self) -> str:
        """The deployment name."""
        return self.client.model

    @property
    def backend(self) -> TritonSam:
        """The old name of ``client``, kept working for existing callers; use ``client``."""
        return self.client

    def is_ready(self) -> bool:
        """``TritonSam.is_ready``: an endpoint is live with every served model of the deployment
        READY (``samtriton.transport``'s docstring)."""
        return self.client.is_ready()

    def close(self) -> None:
        """Closes the client's channels."""
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__: Sequence[str] = ("SamPredictor", "TritonSam")
