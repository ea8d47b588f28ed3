"""``SamPredictor`` over Triton gRPC, with segment-anything's API and results.

Switch from ``segment_anything.SamPredictor(sam)`` to ``samtriton.SamPredictor(url, model=...)``
and keep calling ``set_image`` / ``predict``: inputs, output shapes, dtypes and meaning are
the reference's. The image is encoded on the server (``NAME_encoder``); prompts are decoded
there too (``NAME_decoder``); upscaling and thresholding happen here, in numpy.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from . import contract as C
from .errors import InvalidInput, ModelNotReady, RequestTimeout, ServerError, ServerUnavailable
from .transforms import ImageLike, ResizeLongestSide, postprocess_masks, preprocess, to_rgb_uint8
from .validation import check_decoder_inputs

logger = logging.getLogger("samtriton")

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3


class TritonSam:
    """Typed access to the three served models of one deployment ``model``, on one or more
    Triton endpoints.

    ``url`` is "host:port", a comma-separated list of them, or a list. Requests go round-robin
    over the endpoints that are up; a request that finds one UNAVAILABLE is retried at once
    on the next, and that endpoint is skipped for ``down_seconds`` (each failure is logged on
    the "samtriton" logger and kept in ``endpoint_failures``). Every call has a deadline
    (``timeout`` seconds). When every endpoint is down the call is retried with exponential
    backoff and jitter, at most ``retries`` times and never past its deadline; then
    ``ServerUnavailable`` is raised. All calls are idempotent, so retrying is safe.
    """

    def __init__(self, url: Union[str, Sequence[str]] = DEFAULT_URL, model: str = C.DEFAULT_MODEL_NAME,
                 timeout: float = DEFAULT_TIMEOUT_S, headers: Optional[Dict[str, str]] = None,
                 retries: int = DEFAULT_RETRIES, backoff: float = 0.2, down_seconds: float = 5.0, **client_kwargs):
        if timeout <= 0:
            raise InvalidInput(f"timeout: expected a positive number of seconds, got {timeout!r}")
        urls = [u.strip() for u in (url.split(",") if isinstance(url, str) else url) if u.strip()]
        if not urls:
            raise InvalidInput(f"url: expected 'host:port' or a list of them, got {url!r}")
        self.urls, self.model, self.timeout, self.headers = urls, model, timeout, headers
        self.retries, self.backoff, self.down_seconds = retries, backoff, down_seconds
        self._client_kwargs = client_kwargs
        self.clients = {u: grpcclient.InferenceServerClient(u, **client_kwargs) for u in urls}
        self.endpoint_failures: List[Tuple[str, str]] = []  # (url, reason), oldest first
        self._down_until = {u: 0.0 for u in urls}
        self._turn = itertools.count()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def reconnect(self, url: Optional[str] = None) -> None:
        """Fresh gRPC channels: a channel that saw its server die waits out gRPC's own
        reconnect backoff (up to minutes); a new one connects as soon as the server is back."""
        for u in [url] if url else self.urls:
            old, self.clients[u] = self.clients[u], grpcclient.InferenceServerClient(u, **self._client_kwargs)
            old.close()

    def endpoint_ready(self, url: str) -> bool:
        client = self.clients[url]
        try:
            return client.is_server_ready(headers=self.headers, client_timeout=self.timeout) and all(
                client.is_model_ready(spec.served_name(self.model), headers=self.headers, client_timeout=self.timeout)
                for spec in C.MODEL_SPECS)
        except InferenceServerException:
            return False

    def is_ready(self) -> bool:
        """True when at least one endpoint is live with all three models READY."""
        return any(self.endpoint_ready(u) for u in self.urls)

    def _endpoint_order(self) -> List[str]:
        with self._lock:
            start = next(self._turn) % len(self.urls)
        rotated = self.urls[start:] + self.urls[:start]
        now = time.monotonic()
        return sorted(rotated, key=lambda u: self._down_until[u] > now)  # up first, order kept

    def _mark_down(self, url: str, error: Exception) -> None:
        with self._lock:
            self._down_until[url] = time.monotonic() + self.down_seconds
            self.endpoint_failures.append((url, str(error)))
        self.reconnect(url)
        if len(self.urls) > 1:
            logger.warning("samtriton: endpoint %s failed (%s); retrying on another endpoint", url, error)

    def infer(self, spec: C.ModelSpec, tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        model_name = spec.served_name(self.model)
        size = sum(np.asarray(tensors[s.name]).size * np.dtype(s.dtype).itemsize for s in spec.inputs)
        if size > C.MAX_REQUEST_BYTES:
            raise InvalidInput(f"request to {model_name}: {size / 2**20:.1f} MiB of tensors; the limit is "
                               f"{C.MAX_REQUEST_BYTES / 2**20:.0f} MiB (send fewer prompts or images per call)")
        inputs = []
        for input_spec in spec.inputs:
            array = np.ascontiguousarray(tensors[input_spec.name], dtype=input_spec.dtype)
            tensor = grpcclient.InferInput(input_spec.name, list(array.shape), input_spec.wire_dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(s.name) for s in spec.outputs]
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            for url in self._endpoint_order():
                remaining = deadline - time.monotonic()
                try:
                    result = self.clients[url].infer(model_name, inputs, outputs=outputs, headers=self.headers,
                                                     client_timeout=max(remaining, 0.001))
                    return {s.name: result.as_numpy(s.name) for s in spec.outputs}
                except InferenceServerException as exc:
                    error = _translate(exc, model_name, url, self.timeout)
                if not isinstance(error, ServerUnavailable):
                    raise error
                self._mark_down(url, error)
            pause = self.backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
            if attempt >= self.retries or time.monotonic() + pause >= deadline:
                raise error
            time.sleep(pause)
            attempt += 1

    def encode(self, padded_images: np.ndarray, input_sizes: np.ndarray) -> np.ndarray:
        """[B, 1024, 1024, 3] uint8 + [B, 2] -> [B, 256, 64, 64] embeddings."""
        out = self.infer(C.ENCODER, {C.IMAGE.name: padded_images, C.INPUT_SIZE.name: input_sizes})
        return out[C.IMAGE_EMBEDDINGS.name]

    def decode(self, prompts: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """One embedding + K prompts -> ([K, 4, 256, 256] logits, [K, 4] IoU predictions)."""
        check_decoder_inputs(*(prompts[s.name] for s in C.DECODER.inputs))
        out = self.infer(C.DECODER, prompts)
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

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def _translate(exc: InferenceServerException, model_name: str, url: str, timeout: float) -> Exception:
    """A tritonclient error -> samtriton's exception, with no gRPC traceback attached."""
    message = exc.message() or str(exc)
    status = exc.status() or ""
    lowered = message.lower()
    if "UNAVAILABLE" in status or "failed to connect" in lowered or "connection refused" in lowered \
            or "socket closed" in lowered or "connection reset" in lowered:
        return ServerUnavailable(f"{url} is unavailable for {model_name} ({message.strip()}); check that the "
                                 "server is running and reachable")
    if "DEADLINE_EXCEEDED" in status or "deadline exceeded" in lowered:
        return RequestTimeout(f"{model_name} at {url} did not answer within {timeout:g} s; raise timeout= or "
                              "check the server's load")
    if "not ready" in lowered or "unknown model" in lowered or "not found" in lowered or "unavailable model" in lowered:
        return ModelNotReady(f"{model_name} at {url} is not ready ({message.strip()}); load it (explicit model "
                             "control) or check the deployment name")
    if "INVALID_ARG" in status or "expected" in lowered:
        return InvalidInput(f"{model_name} at {url} rejected the request: {message}")
    return ServerError(f"{model_name} at {url}: {status} {message}".strip())


class SamPredictor:
    """segment-anything's ``SamPredictor``, served by Triton.

    Arguments:
      url: the Triton gRPC endpoint "host:port", or several (a list, or comma-separated):
        requests are spread over the healthy ones and fail over when one goes down.
      model: the deployment name given to ``samtriton export --name`` (default "sam").
      timeout: seconds each call may take.
      headers: extra gRPC metadata sent with every call (e.g. an auth token).
      retries: how often a call that finds the server UNAVAILABLE is retried (with backoff).
      client_kwargs: passed to ``tritonclient.grpc.InferenceServerClient``: ``ssl=True``,
        ``root_certificates``, ``private_key``, ``certificate_chain`` (paths) for TLS.
    """

    def __init__(self, url: Union[str, Sequence[str]] = DEFAULT_URL, model: str = C.DEFAULT_MODEL_NAME,
                 timeout: float = DEFAULT_TIMEOUT_S, headers: Optional[Dict[str, str]] = None,
                 retries: int = DEFAULT_RETRIES, **client_kwargs):
        self.backend = TritonSam(url, model, timeout=timeout, headers=headers, retries=retries, **client_kwargs)
        self.transform = ResizeLongestSide(C.IMAGE_SIZE)
        self.reset_image()

    # --- image ---------------------------------------------------------------------------
    def set_image(self, image: ImageLike, image_format: str = "RGB") -> None:
        """Encode ``image`` on the server and keep its embedding for ``predict``.

        ``image``: HWC uint8 array in ``image_format`` ("RGB" or "BGR"), a PIL image or a path.
        Grayscale (HxW) is replicated to 3 channels, RGBA drops alpha, uint16 is scaled to
        uint8 by 255/65535 (see ``transforms.to_rgb_uint8``).
        """
        rgb = to_rgb_uint8(image, image_format)
        padded, input_size = preprocess(rgb, self.transform)
        self.reset_image()
        self.features = self.backend.encode(padded[None], np.asarray([input_size], dtype=np.int64))
        self.original_size = tuple(rgb.shape[:2])
        self.input_size = input_size
        self.is_image_set = True

    def get_image_embedding(self) -> np.ndarray:
        """The [1, 256, 64, 64] float32 embedding of the current image."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
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
        out = self._postprocess(low_res, iou, multimask_output, return_logits, input_size, original_size)
        return tuple(x[0] for x in out)

    def _predict(self, points, labels, boxes, masks, multimask_output, return_logits):
        self._require_image()
        prompts = self._prompt_tensors(points, labels, boxes, masks, self.original_size)
        prompts[C.DECODER_IMAGE_EMBEDDINGS.name] = self.features
        low_res, iou = self.backend.decode(prompts)
        return self._postprocess(low_res, iou, multimask_output, return_logits, self.input_size, self.original_size)

    def _prompt_tensors(self, points, labels, boxes, masks, original_size) -> Dict[str, np.ndarray]:
        """Original-pixel prompts -> the decoder's tensors (SAM's ONNX prompt form)."""
        if points is None and boxes is None:
            raise InvalidInput("point_coords / box: give at least one point or a box")
        coords, label_parts = [], []
        count = len(points) if points is not None else len(boxes)
        if points is not None:
            coords.append(self.transform.apply_coords(points, original_size))
            label_parts.append(labels.astype(np.float64))
        if boxes is not None:
            coords.append(self.transform.apply_boxes(boxes, original_size).reshape(-1, 2, 2))
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

    @staticmethod
    def _postprocess(low_res, iou, multimask_output, return_logits, input_size, original_size):
        selected = C.MULTIMASK_SLICE if multimask_output else C.SINGLE_MASK_SLICE
        low_res = np.ascontiguousarray(low_res[:, selected])
        scores = np.ascontiguousarray(iou[:, selected])
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
