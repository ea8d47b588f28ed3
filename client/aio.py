"""asyncio client on ``tritonclient.grpc.aio``: many images in flight from one thread.

    async with AsyncSamPredictor("127.0.0.1:8001", model="sam") as sam:
        image = await sam.set_image(array)                 # an ImageHandle; state is per handle
        masks, scores, logits = await sam.predict(image, point_coords=..., point_labels=...)
        results = await sam.map(images, prompts, concurrency=8)

``segment_many`` is the same ``map`` for synchronous code. Requests use the session model:
the embedding stays on the server, each image is sent once, and while N images are in flight
the session model's instances send their encodes to the encoder together, so Triton's dynamic
batcher can batch them. Inputs, outputs and errors are ``SamPredictor``'s.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from . import contract as C
from .errors import ImageNotCached, InvalidInput, ServerUnavailable
from .predictor import (DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, DEFAULT_URL, SamPredictor, _read_file, _single_prompt,
                        _translate, prompt_tensors, request_arrays)
from .transforms import ImageLike, ResizeLongestSide, encoded_image_size, preprocess, to_rgb_uint8


@dataclass(frozen=True)
class ImageHandle:
    """An image whose embedding the server holds (``set_image`` / ``set_image_file``)."""

    image_id: str
    input_size: Tuple[int, int]
    original_size: Tuple[int, int]
    source: Dict[str, Any]  # what to send again if the server has evicted it


class AsyncSamPredictor:
    """``SamPredictor`` for asyncio: the same arguments, results and errors, one endpoint."""

    def __init__(self, url: str = DEFAULT_URL, model: str = C.DEFAULT_MODEL_NAME, timeout: float = DEFAULT_TIMEOUT_S,
                 headers: Optional[Dict[str, str]] = None, retries: int = DEFAULT_RETRIES, backoff: float = 0.2,
                 **client_kwargs):
        if timeout <= 0:
            raise InvalidInput(f"timeout: expected a positive number of seconds, got {timeout!r}")
        self.url, self.model, self.timeout, self.headers = url, model, timeout, headers
        self.retries, self.backoff = retries, backoff
        self.client = grpcaio.InferenceServerClient(url, **client_kwargs)
        self.transform = ResizeLongestSide(C.IMAGE_SIZE)

    async def infer(self, spec: C.ModelSpec, tensors: Dict[str, np.ndarray],
                    outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        model_name = spec.served_name(self.model)
        arrays = request_arrays(spec, model_name, tensors)
        inputs = []
        for name, array in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), C.WIRE_DTYPES[array.dtype])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        wanted = list(outputs) if outputs else [s.name for s in spec.outputs]
        requested = [grpcclient.InferRequestedOutput(name) for name in wanted]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        for attempt in range(self.retries + 1):
            try:
                result = await self.client.infer(model_name, inputs, outputs=requested, headers=self.headers,
                                                 client_timeout=max(deadline - loop.time(), 0.001))
                return {name: result.as_numpy(name) for name in wanted}
            except InferenceServerException as exc:
                error = _translate(exc, model_name, self.url, self.timeout)
            pause = self.backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
            if not isinstance(error, ServerUnavailable) or loop.time() + pause >= deadline:
                break
            await asyncio.sleep(pause)
        raise error

    # --- images ----------------------------------------------------------------------------
    async def set_image(self, image: ImageLike, image_format: str = "RGB") -> ImageHandle:
        """Encode ``image`` on the server; returns the handle ``predict`` takes."""
        def prepare():
            rgb = to_rgb_uint8(image, image_format)
            padded, input_size = preprocess(rgb, self.transform)
            return dict(padded_image=padded, input_size=input_size, original_size=tuple(rgb.shape[:2]))

        source = await asyncio.to_thread(prepare)  # PIL resize: keep the event loop free
        image_id = C.image_id_for(**source)
        await self._session_set(image_id, source)
        return ImageHandle(image_id, source["input_size"], source["original_size"], source)

    async def set_image_file(self, image_file: Union[bytes, str]) -> ImageHandle:
        """An image file's bytes (or path), decoded and preprocessed by the server."""
        data = bytes(image_file) if isinstance(image_file, (bytes, bytearray)) else _read_file(image_file)
        encoded_image_size(data)
        source = dict(encoded_image=data)
        image_id = C.image_id_for(**source)
        input_size, original_size = await self._session_set(image_id, source)
        return ImageHandle(image_id, input_size, original_size, source)

    async def _session_set(self, image_id: str, source: Dict[str, Any]):
        tensors = {C.IMAGE_ID.name: np.array([image_id], dtype=object)}
        if "encoded_image" in source:
            tensors[C.ENCODED_IMAGE.name] = np.array([source["encoded_image"]], dtype=object)
        else:
            tensors[C.IMAGE.name] = source["padded_image"][None]
            tensors[C.INPUT_SIZE.name] = np.asarray([source["input_size"]], np.int64)
            tensors[C.ORIGINAL_SIZE.name] = np.asarray(source["original_size"], np.int64)
        out = await self.infer(C.SESSION, tensors, outputs=C.SESSION_SET_OUTPUTS)
        return tuple(int(v) for v in out[C.INPUT_SIZE.name]), tuple(int(v) for v in out[C.ORIGINAL_SIZE.name])

    # --- prompts ---------------------------------------------------------------------------
    async def predict(self, image: ImageHandle, point_coords=None, point_labels=None, box=None, mask_input=None,
                      multimask_output: bool = True, return_logits: bool = False):
        """One prompt on ``image``, as ``SamPredictor.predict``: (masks, scores, low-res logits)."""
        if not isinstance(image, ImageHandle):
            raise InvalidInput(f"image: expected the ImageHandle set_image returned, got {type(image).__name__}")
        points, labels, boxes, masks = _single_prompt(point_coords, point_labels, box, mask_input)
        tensors = prompt_tensors(self.transform, points, labels, boxes, masks, image.original_size)
        if masks is None:
            del tensors[C.MASK_INPUT.name], tensors[C.HAS_MASK_INPUT.name]
        tensors[C.IMAGE_ID.name] = np.array([image.image_id], dtype=object)
        tensors[C.MULTIMASK_OUTPUT.name] = np.array([multimask_output])
        logits = C.SESSION_LOW_RES_MASKS if return_logits else C.LOW_RES_MASKS_FP16
        outputs = (logits.name, C.SESSION_IOU.name)
        try:
            out = await self.infer(C.SESSION, tensors, outputs)
        except ImageNotCached:
            await self._session_set(image.image_id, image.source)
            out = await self.infer(C.SESSION, tensors, outputs)
        result = await asyncio.to_thread(SamPredictor._postprocess, out[logits.name].astype(np.float32),
                                         out[C.SESSION_IOU.name], None, return_logits, image.input_size,
                                         image.original_size)
        return tuple(x[0] for x in result)

    async def segment(self, image: ImageLike, **predict_kwargs):
        """``set_image`` + ``predict``: (masks, scores, low-res logits)."""
        handle = await (self.set_image_file(image) if isinstance(image, (bytes, bytearray))
                        else self.set_image(image))
        return await self.predict(handle, **predict_kwargs)

    async def map(self, images: Sequence[ImageLike], prompts: Optional[Sequence[Dict[str, Any]]] = None,
                  concurrency: int = 8, **predict_kwargs) -> List[tuple]:
        """``segment`` for every image, keeping ``concurrency`` images in flight; results in
        input order. ``prompts``: one dict of ``predict`` arguments per image, or None to use
        ``predict_kwargs`` as every image's prompt."""
        if concurrency < 1:
            raise InvalidInput(f"concurrency: expected a positive number, got {concurrency!r}")
        if prompts is not None and len(prompts) != len(images):
            raise InvalidInput(f"prompts: expected one per image ({len(images)}), got {len(prompts)}")
        gate = asyncio.Semaphore(concurrency)

        async def one(index):
            async with gate:
                kwargs = dict(predict_kwargs, **(prompts[index] if prompts is not None else {}))
                return await self.segment(images[index], **kwargs)

        return list(await asyncio.gather(*(one(i) for i in range(len(images)))))

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


def segment_many(url: str, images: Sequence[ImageLike], prompts: Optional[Sequence[Dict[str, Any]]] = None,
                 concurrency: int = 8, model: str = C.DEFAULT_MODEL_NAME, timeout: float = DEFAULT_TIMEOUT_S,
                 **predict_kwargs) -> List[tuple]:
    """Synchronous ``AsyncSamPredictor.map``: segments every image, ``concurrency`` in flight."""
    async def run():
        async with AsyncSamPredictor(url, model=model, timeout=timeout) as sam:
            return await sam.map(images, prompts, concurrency=concurrency, **predict_kwargs)

    return asyncio.run(run())
