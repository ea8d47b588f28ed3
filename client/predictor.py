"""``SamPredictor`` over Triton gRPC, with segment-anything's API and results.

Switch from ``segment_anything.SamPredictor(sam)`` to ``samtriton.SamPredictor(url, model=...)``
and keep calling ``set_image`` / ``predict``: inputs, output shapes, dtypes and meaning are
the reference's. The image is encoded on the server (``NAME_encoder``); prompts are decoded
there too (``NAME_decoder``); upscaling and thresholding happen here, in numpy.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import calls
from . import contract as C
from .errors import InvalidInput
from .transport import Transport, TransportOptions, make_call, parse_urls
from .transforms import (ImageLike, ResizeLongestSide, decode_image, encoded_image_size, postprocess_masks,
                         preprocess, to_rgb_uint8)
from .validation import check_decoder_inputs

logger = logging.getLogger("samtriton")

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3


class TritonSam:
    """Typed access to the served models of one deployment ``model``, on one or more Triton
    endpoints.

    ``url`` is "host:port", a comma-separated list of them, or a list. Requests that name an
    image (the session model's) go to the endpoint that image ranks first under rendezvous
    hashing, among those that are up; other requests rotate over the endpoints. A request
    that finds an endpoint unreachable (or without the model) goes at once to the next one,
    and that endpoint is skipped for ``down_seconds`` (each failure is logged on the
    "samtriton" logger and kept in ``endpoint_failures``). Every call has a deadline
    (``timeout`` seconds); when every endpoint is unreachable the call is retried with
    exponential backoff and jitter, at most ``retries`` times and never past its deadline,
    then ``ServerUnavailable`` is raised. All calls are idempotent, so retrying is safe.
    See ``samtriton.transport``.
    """

    def __init__(self, url: Union[str, Sequence[str]] = DEFAULT_URL, model: str = C.DEFAULT_MODEL_NAME,
                 timeout: float = DEFAULT_TIMEOUT_S, headers: Optional[Dict[str, str]] = None,
                 retries: int = DEFAULT_RETRIES, backoff: float = 0.2, down_seconds: float = 5.0,
                 shared_memory: bool = False, **client_kwargs):
        self.urls = parse_urls(url)
        self.model = model
        self.options = TransportOptions(timeout, headers, retries, backoff, down_seconds)
        self.transport = Transport(self.urls, self.options, shared_memory=shared_memory, **client_kwargs)

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    @property
    def timeout(self) -> float:
        return self.options.timeout

    @property
    def endpoint_failures(self) -> List[Tuple[str, str]]:
        """(url, reason) of each failed attempt, oldest first."""
        return self.transport.endpoints.failures

    @property
    def bytes_sent(self) -> int:
        """Bytes of tensors that crossed the wire (shared-memory tensors are not counted)."""
        return self.transport.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.transport.bytes_received

    def endpoint_for(self, image_id: str) -> str:
        """The endpoint that requests for ``image_id`` go to now (its first choice that is up)."""
        return self.transport.endpoints.order(image_id)[0]

    def admin(self, url: Optional[str] = None):
        """A tritonclient for configuration and statistics queries (first endpoint by default)."""
        return self.transport.admin(url or self.urls[0])

    def endpoint_ready(self, url: str) -> bool:
        return self.transport.endpoint_ready(url, self.model)

    def is_ready(self) -> bool:
        """True when at least one endpoint is live with all of the deployment's models READY."""
        return any(self.endpoint_ready(u) for u in self.urls)

    def infer(self, spec: C.ModelSpec, tensors: Dict[str, np.ndarray], outputs: Optional[Sequence[str]] = None,
              output_bytes: Optional[Dict[str, int]] = None) -> Dict[str, np.ndarray]:
        """One stateless request to ``spec``'s model: ``tensors`` by input name (optional
        inputs may be left out), ``outputs`` the names wanted (default all). ``output_bytes``
        bounds the size of outputs that may come back through shared memory."""
        return self.transport.call(make_call(spec, self.model, tensors, outputs, output_bytes))

    def encode(self, padded_images: np.ndarray, input_sizes: np.ndarray) -> np.ndarray:
        """[B, 1024, 1024, 3] uint8 + [B, 2] -> [B, 256, 64, 64] embeddings."""
        return self.transport.call(calls.encode(self.model, padded_images, input_sizes))[C.IMAGE_EMBEDDINGS.name]

    def decode(self, prompts: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """One embedding + K prompts -> ([K, 4, 256, 256] logits, [K, 4] IoU predictions)."""
        check_decoder_inputs(*(prompts[s.name] for s in C.DECODER.inputs))
        out = self.transport.call(calls.decode(self.model, prompts))
        return out[C.LOW_RES_MASKS.name], out[C.IOU_PREDICTIONS.name]

    def segment(self, padded_image: np.ndarray, input_size: Tuple[int, int],
                prompts: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """Image + K prompts through the ensemble in one call."""
        tensors = dict(prompts)
        tensors[C.IMAGE.name] = padded_image[None]
        tensors[C.INPUT_SIZE.name] = np.asarray([input_size], dtype=np.int64)
        check_decoder_inputs(np.zeros(C.DECODER_IMAGE_EMBEDDINGS.dims, np.float32),
                             *(prompts[s.name] for s in C.DECODER.inputs[1:]))
        out = self.infer(C.ENSEMBLE, tensors)
        return out[C.LOW_RES_MASKS.name], out[C.IOU_PREDICTIONS.name]

    # --- session model: embeddings kept on the server under an image id ------------------
    def session_set(self, image_id: str, padded_image: Optional[np.ndarray] = None,
                    input_size: Optional[Tuple[int, int]] = None, original_size: Optional[Tuple[int, int]] = None,
                    encoded_image: Optional[bytes] = None) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """Encode an image on the server and keep its embedding there under ``image_id``.

        Either the padded image (+ its input and original sizes) or the image file's bytes
        (decoded and preprocessed by the server). Returns (input_size, original_size)."""
        source = dict(padded_image=padded_image, input_size=input_size, original_size=original_size,
                      encoded_image=encoded_image)
        return calls.set_result(self.transport.call(calls.session_set(self.model, image_id, source)))

    def session_decode(self, image_id: str, prompts: Dict[str, np.ndarray], multimask_output: bool,
                       float16: bool = True, source: Optional[calls.Source] = None) -> Tuple[np.ndarray, np.ndarray]:
        """K prompts against the stored embedding -> ([K, C, 256, 256] logits, [K, C] IoU),
        C = 3 with ``multimask_output`` else 1; logits as float16 unless ``float16=False``.
        With ``source`` (the ``session_set`` arguments) the image is sent again if the
        server does not hold it; without, that raises ``ImageNotCached``."""
        call = calls.session_decode(self.model, image_id, prompts, multimask_output, float16, source)
        return calls.decode_result(call, self.transport.call(call))

    def session_amg(self, image_id: str, tensors: Dict[str, np.ndarray],
                    source: Optional[calls.Source] = None) -> Dict[str, np.ndarray]:
        """The AMG stage's request (``C.AMG``'s inputs but the embedding) against the stored
        embedding of ``image_id``: the kept masks' outputs, as ``C.AMG.outputs``."""
        return self.transport.call(calls.session_amg(self.model, image_id, tensors, source))

    def session_embedding(self, image_id: str, source: Optional[calls.Source] = None) -> np.ndarray:
        """The stored [1, 256, 64, 64] float32 embedding of ``image_id``."""
        out = self.transport.call(calls.session_embedding(self.model, image_id, source))
        return out[C.DECODER_IMAGE_EMBEDDINGS.name]

    def close(self) -> None:
        self.transport.close()


class SamPredictor:
    """segment-anything's ``SamPredictor``, served by Triton.

    Arguments:
      url: the Triton gRPC endpoint "host:port", or several (a list, or comma-separated):
        an image's requests go to the replica it hashes to (rendezvous hashing over the
        endpoints that are up), so its embedding is computed once and its clicks find it;
        when that replica goes down, the next one in the image's ranking takes over.
      model: the deployment name given to ``samtriton export --name`` (default "sam").
      timeout: seconds each call may take.
      headers: extra gRPC metadata sent with every call (e.g. an auth token).
      retries: how often a call that finds the server UNAVAILABLE is retried (with backoff).
      client_kwargs: passed to ``tritonclient.grpc.InferenceServerClient``: ``ssl=True``,
        ``root_certificates``, ``private_key``, ``certificate_chain`` (paths) for TLS.
    """

    def __init__(self, url: Union[str, Sequence[str]] = DEFAULT_URL, model: str = C.DEFAULT_MODEL_NAME,
                 timeout: float = DEFAULT_TIMEOUT_S, headers: Optional[Dict[str, str]] = None,
                 retries: int = DEFAULT_RETRIES, session: bool = True, shared_memory: bool = False,
                 **client_kwargs):
        self.backend = TritonSam(url, model, timeout=timeout, headers=headers, retries=retries,
                                 shared_memory=shared_memory, **client_kwargs)
        self.session = session
        self.transform = ResizeLongestSide(C.IMAGE_SIZE)
        self.reset_image()

    # --- image ---------------------------------------------------------------------------
    def set_image(self, image: ImageLike, image_format: str = "RGB") -> None:
        """Encode ``image`` on the server for the following ``predict`` calls.

        ``image``: HWC uint8 array in ``image_format`` ("RGB" or "BGR"), a PIL image or a path.
        Grayscale (HxW) is replicated to 3 channels, RGBA drops alpha, uint16 is scaled to
        uint8 by 255/65535 (see ``transforms.to_rgb_uint8``). In session mode the embedding
        stays on the server; otherwise it is returned and kept here.
        """
        rgb = to_rgb_uint8(image, image_format)
        padded, input_size = preprocess(rgb, self.transform)
        original_size = tuple(rgb.shape[:2])
        self.reset_image()
        if self.session:
            self._image_source = dict(padded_image=padded, input_size=input_size, original_size=original_size)
            image_id = C.image_id_for(**self._image_source)
            self.backend.session_set(image_id, **self._image_source)
            self.image_id = image_id
        else:
            self.features = self.backend.encode(padded[None], np.asarray([input_size], dtype=np.int64))
        self.original_size = original_size
        self.input_size = input_size
        self.is_image_set = True

    def set_image_file(self, image_file: Union[bytes, str, "os.PathLike"]) -> None:
        """Like ``set_image``, for an image file (path or bytes: JPEG, PNG, ...). In session mode
        the file's bytes are sent as they are and the server decodes and preprocesses them
        exactly as ``set_image`` would here: a JPEG is ~10x fewer bytes than the padded image."""
        data = image_file if isinstance(image_file, (bytes, bytearray)) else _read_file(image_file)
        if not self.session:
            return self.set_image(decode_image(data))
        encoded_image_size(data)  # a clear error here for a file the server could not read either
        self.reset_image()
        self._image_source = dict(encoded_image=bytes(data))
        image_id = C.image_id_for(**self._image_source)
        self.input_size, self.original_size = self.backend.session_set(image_id, **self._image_source)
        self.image_id = image_id
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The [1, 256, 64, 64] float32 embedding of the current image."""
        self._require_image()
        if self.session:
            return self.backend.session_embedding(self.image_id, self._image_source)
        return self.features

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self.image_id = None
        self._image_source = None
        self.original_size = None
        self.input_size = None

    # --- prompts -------------------------------------------------------------------------
    def predict(self, point_coords: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
                box: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
                multimask_output: bool = True, return_logits: bool = False):
        """One prompt, as ``segment_anything.SamPredictor.predict``.

        point_coords: Nx2 (x, y) pixels of the original image; point_labels: N of 1
        (foreground) / 0 (background); box: (x0, y0, x1, y1); mask_input: 1x256x256 logits
        from a previous call. Returns masks (CxHxW bool, or float logits with
        ``return_logits``), scores (C,) and low-res logits (Cx256x256), C = 3 or 1.
        """
        prompt = _single_prompt(point_coords, point_labels, box, mask_input)
        out = self._predict(*prompt, multimask_output, return_logits)
        return tuple(x[0] for x in out)

    def predict_batch(self, point_coords: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
                      boxes: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
                      multimask_output: bool = True, return_logits: bool = False):
        """K prompts on the current image in ONE request (``predict_torch`` in original pixels).

        point_coords: KxNx2; point_labels: KxN; boxes: Kx4; mask_input: Kx1x256x256. Returns
        masks KxCxHxW, scores KxC, low-res logits KxCx256x256.
        """
        points = labels = box_array = masks = None
        if point_coords is not None or point_labels is not None:
            points = _as_points(point_coords, "point_coords", batched=True)
            labels = _as_labels(point_labels, points.shape[1], "point_labels", batched=True, count=len(points))
        if boxes is not None:
            box_array = _as_boxes(boxes, "boxes", batched=True)
        count = len(points) if points is not None else (len(box_array) if box_array is not None else 0)
        if points is not None and box_array is not None and len(box_array) != count:
            raise InvalidInput(f"boxes: expected {count} boxes to match point_coords, got {len(box_array)}")
        if mask_input is not None:
            masks = _as_mask_input(mask_input, count, "mask_input", batched=True)
        return self._predict(points, labels, box_array, masks, multimask_output, return_logits)

    def segment_image(self, image: ImageLike, image_format: str = "RGB", point_coords=None, point_labels=None,
                      box=None, mask_input=None, multimask_output: bool = True, return_logits: bool = False):
        """``set_image`` + ``predict`` in one call through the ensemble; keeps no state."""
        rgb = to_rgb_uint8(image, image_format)
        padded, input_size = preprocess(rgb, self.transform)
        original_size = tuple(rgb.shape[:2])
        prompts = self._prompt_tensors(*_single_prompt(point_coords, point_labels, box, mask_input), original_size)
        low_res, iou = self.backend.segment(padded, input_size, prompts)
        selected = C.MULTIMASK_SLICE if multimask_output else C.SINGLE_MASK_SLICE
        out = self._postprocess(low_res, iou, selected, return_logits, input_size, original_size)
        return tuple(x[0] for x in out)

    def _predict(self, points, labels, boxes, masks, multimask_output, return_logits):
        self._require_image()
        prompts = self._prompt_tensors(points, labels, boxes, masks, self.original_size)
        if self.session:
            if masks is None:  # the server fills in "no mask prompt": 256 KiB per prompt not sent
                del prompts[C.MASK_INPUT.name], prompts[C.HAS_MASK_INPUT.name]
            # float16 logits unless the caller wants logits: the masks (logits > 0) are the same.
            low_res, iou = self.backend.session_decode(self.image_id, prompts, multimask_output,
                                                       float16=not return_logits, source=self._image_source)
            return self._postprocess(low_res.astype(np.float32), iou, None, return_logits, self.input_size,
                                     self.original_size)
        prompts[C.DECODER_IMAGE_EMBEDDINGS.name] = self.features
        low_res, iou = self.backend.decode(prompts)
        selected = C.MULTIMASK_SLICE if multimask_output else C.SINGLE_MASK_SLICE
        return self._postprocess(low_res, iou, selected, return_logits, self.input_size, self.original_size)

    def _prompt_tensors(self, points, labels, boxes, masks, original_size) -> Dict[str, np.ndarray]:
        return prompt_tensors(self.transform, points, labels, boxes, masks, original_size)

    @staticmethod
    def _postprocess(low_res, iou, selected, return_logits, input_size, original_size):
        """``selected``: the mask slice to keep, or None when the server already sliced."""
        if selected is not None:
            low_res, iou = low_res[:, selected], iou[:, selected]
        low_res, scores = np.ascontiguousarray(low_res), np.ascontiguousarray(iou)
        masks = postprocess_masks(low_res, input_size, original_size)
        if not return_logits:
            masks = masks > 0.0
        return masks, scores, low_res

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise InvalidInput("An image must be set with .set_image(...) before mask prediction.")

    @property
    def model(self) -> str:
        return self.backend.model

    def is_ready(self) -> bool:
        """True when the server and this deployment's three models are ready."""
        return self.backend.is_ready()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def prompt_tensors(transform: ResizeLongestSide, points, labels, boxes, masks, original_size) -> Dict[str, np.ndarray]:
    """Original-pixel prompts -> the decoder's tensors (SAM's ONNX prompt form)."""
    if points is None and boxes is None:
        raise InvalidInput("point_coords / box: give at least one point or a box")
    coords, label_parts = [], []
    count = len(points) if points is not None else len(boxes)
    if points is not None:
        coords.append(transform.apply_coords(points, original_size))
        label_parts.append(labels.astype(np.float64))
    if boxes is not None:
        coords.append(transform.apply_boxes(boxes, original_size).reshape(-1, 2, 2))
        label_parts.append(np.tile([[C.LABEL_BOX_TOP_LEFT, C.LABEL_BOX_BOTTOM_RIGHT]], (count, 1)))
    else:
        # Without a box SAM appends one padding point (label -1).
        coords.append(np.zeros((count, 1, 2)))
        label_parts.append(np.full((count, 1), C.LABEL_PAD))
    if masks is None:
        mask_tensor = np.zeros((count, 1, C.LOW_RES_SIZE, C.LOW_RES_SIZE), np.float32)
        has_mask = np.zeros(count, np.float32)
    else:
        mask_tensor, has_mask = masks.astype(np.float32), np.ones(count, np.float32)
    return {
        C.POINT_COORDS.name: np.concatenate(coords, axis=1).astype(np.float32),
        C.POINT_LABELS.name: np.concatenate(label_parts, axis=1).astype(np.float32),
        C.MASK_INPUT.name: mask_tensor,
        C.HAS_MASK_INPUT.name: has_mask,
    }


def _read_file(path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidInput(f"image_file: cannot read {os.fspath(path)!r} ({exc})") from None


# --- input checks: each names the field and its expected form ----------------------------

def _single_prompt(point_coords, point_labels, box, mask_input):
    """``predict``'s arguments checked and given a leading prompt axis of 1."""
    points = labels = boxes = masks = None
    if point_coords is not None or point_labels is not None:
        points = _as_points(point_coords, "point_coords", batched=False)[None]
        labels = _as_labels(point_labels, points.shape[1], "point_labels", batched=False)[None]
    if box is not None:
        boxes = _as_boxes(box, "box", batched=False)[None]
    if mask_input is not None:
        masks = _as_mask_input(mask_input, 1, "mask_input", batched=False)[None]
    return points, labels, boxes, masks


def _numeric(value, field: str, expected: str) -> np.ndarray:
    if value is None:
        raise InvalidInput(f"{field}: required, expected {expected}")
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise InvalidInput(f"{field}: expected {expected} ({exc})") from None
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InvalidInput(f"{field}: expected {expected} of numbers, got dtype {array.dtype}")
    if array.dtype == np.bool_ or np.iscomplexobj(array):
        raise InvalidInput(f"{field}: expected {expected} of real numbers, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise InvalidInput(f"{field}: contains NaN or infinite values; expected finite {expected}")
    return array


def _as_points(value, field: str, batched: bool) -> np.ndarray:
    expected = "an array of shape KxNx2 (x, y)" if batched else "an array of shape Nx2 (x, y)"
    array = _numeric(value, field, expected)
    ndim = 3 if batched else 2
    if array.ndim != ndim or array.shape[-1] != 2 or array.shape[-2] < 1 or (batched and array.shape[0] < 1):
        raise InvalidInput(f"{field}: expected {expected}, got shape {list(array.shape)}")
    if array.shape[-2] > C.MAX_POINTS_PER_PROMPT - 2:
        raise InvalidInput(f"{field}: at most {C.MAX_POINTS_PER_PROMPT - 2} points per prompt, got {array.shape[-2]}")
    return array.astype(np.float64)


def _as_labels(value, n_points: int, field: str, batched: bool, count: int = 1) -> np.ndarray:
    expected = f"an array of shape {count}x{n_points}" if batched else f"an array of {n_points} labels"
    if value is None:
        raise InvalidInput(f"{field}: point_labels must be supplied with point_coords ({expected}, 1 = foreground, "
                           "0 = background)")
    array = _numeric(value, field, expected)
    shape = (count, n_points) if batched else (n_points,)
    if array.shape != shape:
        raise InvalidInput(f"{field}: expected {expected}, got shape {list(array.shape)}")
    if not np.all(np.isin(array, (C.LABEL_BACKGROUND, C.LABEL_FOREGROUND))):
        raise InvalidInput(f"{field}: labels must be 1 (foreground) or 0 (background), got {np.unique(array).tolist()}")
    return array


def _as_boxes(value, field: str, batched: bool) -> np.ndarray:
    expected = "an array of shape Kx4 (x0, y0, x1, y1)" if batched else "4 numbers (x0, y0, x1, y1)"
    array = _numeric(value, field, expected)
    if batched:
        ok = array.ndim == 2 and array.shape[1] == 4 and array.shape[0] >= 1
    else:
        ok = array.shape in ((4,), (1, 4))
        array = array.reshape(-1)[:4] if ok else array
    if not ok:
        raise InvalidInput(f"{field}: expected {expected}, got shape {list(array.shape)}")
    array = array.reshape(-1, 4).astype(np.float64)
    bad = (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
    if bad.any():
        raise InvalidInput(f"{field}: expected x1 >= x0 and y1 >= y0, got {array[bad][0].tolist()}")
    return array if batched else array[0]


def _as_mask_input(value, count: int, field: str, batched: bool) -> np.ndarray:
    size = C.LOW_RES_SIZE
    expected = f"an array of shape {count}x1x{size}x{size}" if batched else f"an array of shape 1x{size}x{size}"
    array = _numeric(value, field, expected)
    shape = (count, 1, size, size) if batched else (1, size, size)
    if array.shape != shape:
        raise InvalidInput(f"{field}: expected {expected} (low-res logits from a previous call), "
                           f"got shape {list(array.shape)}")
    return array.astype(np.float32)


__all__: Sequence[str] = ("SamPredictor", "TritonSam")
