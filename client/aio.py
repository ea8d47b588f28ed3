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
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import numpy as np

from . import calls
from . import contract as C
from .errors import InvalidInput
from .options import DEFAULT_TIMEOUT_S
from .prompts import image_source, masks_from_logits, prompt_tensors, read_image_file, single_prompt
from .transforms import ImageLike, ResizeLongestSide, encoded_image_size
from .transport import AsyncTransport, Deployment, make_call


@dataclass(frozen=True)
class ImageHandle:
    """An image whose embedding the server holds (``set_image`` / ``set_image_file``)."""

    image_id: str
    input_size: Tuple[int, int]
    original_size: Tuple[int, int]
    source: calls.ImageSource  # what to send again if the server has evicted it


class AsyncSamPredictor(Deployment):
    """``SamPredictor`` for asyncio: the same arguments, results and errors, the same
    connection options (``samtriton.options.ConnectionOptions``: ``shared_memory`` and
    ``admin_key`` included) and byte counters (``bytes_sent``, ``bytes_received``). Endpoint
    choice and fail-over are the blocking client's: ``samtriton.transport``'s docstring.

    Arguments: ``samtriton.transport.Deployment``'s (``url``, ``model`` and the connection
    options).
    """

    transport_class = AsyncTransport
    transform = ResizeLongestSide(C.IMAGE_SIZE)

    def endpoint_for(self, image: "ImageHandle") -> str:
        """The endpoint that requests for ``image`` go to now."""
        return self.transport.endpoints.order(image.image_id)[0]

    async def infer(
        self, spec: C.ModelSpec, tensors: Dict[str, np.ndarray], outputs: Optional[Sequence[str]] = None
    ) -> Dict[str, np.ndarray]:
        """One stateless request to ``spec``'s model (see ``TritonSam.infer``)."""
        return await self.transport.call(make_call(spec, self.model, tensors, outputs))

    # --- images ----------------------------------------------------------------------------
    async def set_image(self, image: ImageLike, image_format: str = "RGB") -> ImageHandle:
        """Encode ``image`` on the server; returns the handle ``predict`` takes.

        Arguments: ``SamPredictor.set_image``'s.
        """
        # PIL resize: keep the event loop free
        source = await asyncio.to_thread(image_source, image, image_format, self.transform)
        await self._session_set(source)
        input_size, original_size = cast(
            Tuple[Tuple[int, int], Tuple[int, int]], (source.input_size, source.original_size)
        )
        return ImageHandle(source.image_id, input_size, original_size, source)

    async def set_image_file(self, image_file: Union[bytes, bytearray, str, "os.PathLike"]) -> ImageHandle:
        """An image file, decoded and preprocessed by the server; returns the handle ``predict`` takes.

        Arguments:
          image_file: the file's path, or its bytes (JPEG, PNG, ...).
        """
        data = bytes(image_file) if isinstance(image_file, (bytes, bytearray)) else read_image_file(image_file)
        encoded_image_size(data)
        source = calls.ImageSource.from_file(data)
        input_size, original_size = await self._session_set(source)
        return ImageHandle(source.image_id, input_size, original_size, source)

    async def _session_set(self, source: calls.ImageSource) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        return calls.set_result(await self.transport.call(calls.session_set(self.model, source.image_id, source)))

    # --- prompts ---------------------------------------------------------------------------
    async def predict(
        self, image: ImageHandle,
        point_coords=None, point_labels=None, box=None, mask_input=None,
        multimask_output: bool = True, return_logits: bool = False,
    ):  # fmt: skip
        """One prompt on ``image``, as ``SamPredictor.predict``: (masks, scores, low-res logits).

        Arguments:
          image: the ``ImageHandle`` that ``set_image`` / ``set_image_file`` returned.
          point_coords, point_labels, box, mask_input, multimask_output, return_logits:
            ``SamPredictor.predict``'s.
        """
        if not isinstance(image, ImageHandle):
            raise InvalidInput(f"image: expected the ImageHandle set_image returned, got {type(image).__name__}")
        points, labels, boxes, masks = single_prompt(point_coords, point_labels, box, mask_input)
        tensors = prompt_tensors(
            self.transform, points, labels, boxes, masks, image.original_size, fill_absent_mask=False
        )
        call = calls.session_decode(
            self.model, image.image_id, tensors, multimask_output, float16=not return_logits, source=image.source
        )
        low_res, iou = calls.decode_result(call, await self.transport.call(call))
        result = await asyncio.to_thread(
            masks_from_logits, low_res, iou, None, return_logits, image.input_size, image.original_size
        )
        return tuple(x[0] for x in result)

    async def segment(self, image: Union[ImageLike, bytes, bytearray], **predict_kwargs):
        """``set_image`` + ``predict``: (masks, scores, low-res logits).

        Arguments:
          image: an image as ``set_image`` takes it, or an image file's bytes.
          predict_kwargs: ``predict``'s prompt arguments.
        """
        handle = await (self.set_image_file(image) if isinstance(image, (bytes, bytearray)) else self.set_image(image))
        return await self.predict(handle, **predict_kwargs)

    async def map(
        self,
        images: Sequence[ImageLike],
        prompts: Optional[Sequence[Dict[str, Any]]] = None,
        concurrency: int = 8,
        **predict_kwargs,
    ) -> List[tuple]:
        """``segment`` for every image, keeping ``concurrency`` images in flight; results in
        input order.

        Arguments:
          images: the images (arrays, PIL images, paths, or an image file's bytes).
          prompts: one dict of ``predict`` arguments per image, or None to use
            ``predict_kwargs`` as every image's prompt.
          concurrency: images in flight at once.
          predict_kwargs: ``predict`` arguments for every image.
        """
        if concurrency < 1:
            raise InvalidInput(f"concurrency: expected a positive number, got {concurrency!r}")
        if prompts is not None and len(prompts) != len(images):
            raise InvalidInput(f"prompts: expected one per image ({len(images)}), got {len(prompts)}")
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int) -> tuple:
            async with gate:
                kwargs = dict(predict_kwargs, **(prompts[index] if prompts is not None else {}))
                return await self.segment(images[index], **kwargs)

        return list(await asyncio.gather(*(one(i) for i in range(len(images)))))

    async def close(self) -> None:
        """Closes the channels (shared-memory regions are unregistered and freed)."""
        await self.transport.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


def segment_many(
    url: Union[str, Sequence[str]],
    images: Sequence[ImageLike],
    prompts: Optional[Sequence[Dict[str, Any]]] = None,
    concurrency: int = 8,
    model: str = C.DEFAULT_MODEL_NAME,
    timeout: float = DEFAULT_TIMEOUT_S,
    **predict_kwargs,
) -> List[tuple]:
    """Synchronous ``AsyncSamPredictor.map``: segments every image, ``concurrency`` in flight.

    Arguments:
      url: the endpoint(s), as ``AsyncSamPredictor`` takes them.
      images, prompts, concurrency, predict_kwargs: ``AsyncSamPredictor.map``'s.
      model: the deployment name.
      timeout: each call's deadline, seconds.
    """

    async def run() -> List[tuple]:
        async with AsyncSamPredictor(url, model=model, timeout=timeout) as sam:
            return await sam.map(images, prompts, concurrency=concurrency, **predict_kwargs)

    return asyncio.run(run())
