"""Triton python-backend model: the session stage. Image embeddings stay on the server.

Generated repositories copy this file to NAME_session/1/model.py. Its instances share an LRU
cache of embeddings, bounded in bytes (parameter ``session_cache_mib``), keyed by the
image's content hash. A request carrying an image (raw ``image`` + ``input_size``, or
``encoded_image`` bytes decoded and preprocessed here) encodes it through BLS to
NAME_encoder and stores it; a request carrying prompts decodes them against the stored
embedding (the decoder's ONNX graph run here for the python decoder, else BLS to
NAME_decoder). So an interactive click sends a few hundred
bytes instead of the 4 MiB embedding. The outputs computed are the ones requested. With
``crop_size`` + ``amg_thresholds`` it does the AMG stage's filtering (see amg.py) on the
stored embedding, for automatic mask generation without embeddings on the wire.
"""

import os

import numpy as np
import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.errors import InvalidInput
from samtriton.server import lifecycle, metrics
from samtriton.server.amg_stage import AmgStage
from samtriton.server.embedding_cache import EmbeddingCache, cache_directory, default_root, sweep_orphans
from samtriton.server.runtime import (
    ModelError,
    call_model,
    decode_prompts,
    decoder_graph_path,
    load_config,
    onnx_session,
    respond_each,
)
from samtriton.transforms import decode_image, preprocess
from samtriton.validation import (
    check_array,
    check_decoder_inputs,
    check_encoder_inputs,
    check_mask_prompts,
    check_points,
)


class TritonPythonModel:
    def initialize(self, args):
        lifecycle.exit_with_server()
        self.name, settings = load_config(args)
        base = self.name[: -len(C.SESSION.suffix)]
        self.encoder, self.decoder = C.ENCODER.served_name(base), C.DECODER.served_name(base)
        # The server's own directory unless one is given: the server's environment (samtriton
        # serve --session-cache-dir), then the model's config (samtriton export --session-cache-dir).
        directory = (
            os.environ.get(C.SESSION_CACHE_DIR_ENV)
            or settings.session_cache_dir
            or cache_directory(args["model_repository"], base)
        )
        self.cache = EmbeddingCache(directory, settings.session_cache_mib * 2**20, metrics.CacheMetrics(self.name))
        sweep_orphans(default_root(), keep={self.cache.directory})
        # With the python decoder, run its ONNX graph here: a BLS hop to another stub costs
        # as much as the decoder itself on CPU. Other decoder backends are called via BLS.
        # Automatic mask generation's point batches (no mask input) take the decoder reordered
        # for them (export/amg_decoder.py) where the export wrote it: about half the work.
        self.local_decoder = None
        if settings.decoder_in_process == "true":
            self.local_decoder = onnx_session(decoder_graph_path(args, self.decoder, "model.onnx"), settings)
        # With the torch decoder: the decoder, the embeddings in use and AMG's filter on this
        # instance's device (torch_stage.py); the host cache still serves the other instances.
        self.torch = None
        if settings.decoder_in_process == "torch":
            from samtriton.server.torch_stage import TorchStage

            self.torch = TorchStage(args, settings, self.decoder)
        self.amg = AmgStage(args, self.name, settings, self.decoder, self.torch)

    def finalize(self):
        self.cache.close()  # the directory goes when no live instance or server uses it

    def execute(self, requests):
        return respond_each(self.name, requests, self._one)

    def _one(self, request):
        def get(spec):
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            return None if tensor is None else tensor.as_numpy()

        image_id = _image_id(get(C.IMAGE_ID))
        wanted = set(request.requested_output_names())
        image, input_size, encoded = get(C.IMAGE), get(C.INPUT_SIZE), get(C.ENCODED_IMAGE)
        original_size, coords = get(C.ORIGINAL_SIZE), get(C.POINT_COORDS)
        if (coords is None) != (get(C.POINT_LABELS) is None):
            raise InvalidInput("point_coords / point_labels: send both, or neither (no prompt)")
        if image is not None or input_size is not None or encoded is not None or original_size is not None:
            entry = self._set(image_id, image, input_size, original_size, encoded)
        else:
            entry = self._lookup(image_id)
        if entry is None:
            raise ModelError(
                f"{C.UNKNOWN_IMAGE_ID_MESSAGE} {image_id!r}: this server holds no embedding for it "
                "(never set here, or evicted); send the image again",
                C.ERROR_CODE_UNKNOWN_IMAGE,
            )
        embedding, input_size, original_size = entry
        outputs = {C.INPUT_SIZE.name: input_size, C.ORIGINAL_SIZE.name: original_size}
        if C.DECODER_IMAGE_EMBEDDINGS.name in wanted:
            outputs[C.DECODER_IMAGE_EMBEDDINGS.name] = embedding if self.torch is None else embedding.cpu().numpy()
        thresholds, crop_size = get(C.AMG_THRESHOLDS), get(C.CROP_SIZE)
        if thresholds is not None or crop_size is not None:
            outputs.update(
                self._amg(
                    embedding,
                    input_size,
                    coords,
                    get(C.POINT_LABELS),
                    crop_size,
                    thresholds,
                    get(C.MASK_INPUT),
                    get(C.HAS_MASK_INPUT),
                    get(C.MULTIMASK_OUTPUT),
                )
            )
        elif coords is not None:
            low_res, iou = self._decode(
                embedding,
                coords,
                get(C.POINT_LABELS),
                get(C.MASK_INPUT),
                get(C.HAS_MASK_INPUT),
                get(C.MULTIMASK_OUTPUT),
            )
            outputs[C.SESSION_IOU.name] = iou
            if C.LOW_RES_MASKS_FP16.name in wanted:
                outputs[C.LOW_RES_MASKS_FP16.name] = low_res.astype(np.float16)
            if C.SESSION_LOW_RES_MASKS.name in wanted:
                outputs[C.SESSION_LOW_RES_MASKS.name] = low_res
        elif wanted & {C.SESSION_IOU.name, C.LOW_RES_MASKS_FP16.name, C.SESSION_LOW_RES_MASKS.name}:
            raise InvalidInput("point_coords: masks were requested but the request carries no prompts")
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items() if name in wanted]
        )

    def _set(self, image_id, image, input_size, original_size, encoded):
        if encoded is not None:
            if image is not None or input_size is not None or original_size is not None:
                raise InvalidInput(
                    "encoded_image: send either encoded_image or image + input_size + original_size, not both"
                )
            check_array(C.ENCODED_IMAGE.name, encoded, np.object_, 1)
            if encoded.shape != (1,):
                raise InvalidInput(f"encoded_image: expected shape [1] (one file), got {list(encoded.shape)}")
            _check_id(image_id, C.image_id_for(encoded_image=encoded[0]))
        else:
            if image is None or input_size is None or original_size is None:
                raise InvalidInput("image / input_size / original_size: send all three (or encoded_image alone)")
            check_encoder_inputs(image, input_size)
            if len(image) != 1:
                raise InvalidInput(f"image: expected shape [1, 1024, 1024, 3] (one image), got {list(image.shape)}")
            check_array(C.ORIGINAL_SIZE.name, original_size, np.int64, 1)
            if original_size.shape != (2,) or original_size.min() < 1 or original_size.max() > C.MAX_IMAGE_SIDE:
                raise InvalidInput(
                    f"original_size: expected (height, width) in 1..{C.MAX_IMAGE_SIDE}, got {original_size.tolist()}"
                )
            original_size = original_size.copy()
            _check_id(image_id, C.image_id_for(image[0], input_size[0], original_size))
        entry = self._lookup(image_id)  # the same image was encoded already (by this client or another)
        if entry is not None:
            return entry
        with self.cache.flight(image_id):  # N requests for one new image: one encode
            entry = self._lookup(image_id)
            if entry is None:
                entry = self._encode(image_id, image, input_size, original_size, encoded)
        return entry

    def _lookup(self, image_id):
        """The image's (embedding, input_size, original_size), or None: beside a torch decoder
        from this instance's device memory first, else from the host cache (then kept on the
        device for the next click)."""
        if self.torch is None:
            return self.cache.get(image_id)
        entry = self.torch.embeddings.get(image_id)
        if entry is None:
            entry = self.cache.get(image_id)
            if entry is not None:
                entry = self.torch.embeddings.put(image_id, self.torch.to_device(entry[0]), *entry[1:])
        return entry

    def _encode(self, image_id, image, input_size, original_size, encoded):
        if encoded is not None:
            rgb = decode_image(encoded[0])
            padded, size = preprocess(rgb)
            image, input_size = padded[None], np.asarray([size], np.int64)
            original_size = np.asarray(rgb.shape[:2], np.int64)
        if self.torch is not None:
            on_device = self.torch.encode(self.encoder, image, input_size, self.name)
            embedding = np.ascontiguousarray(on_device.cpu().numpy())
        else:
            out = call_model(
                self.encoder, {C.IMAGE.name: image, C.INPUT_SIZE.name: input_size}, [C.IMAGE_EMBEDDINGS.name], self.name
            )
            embedding = np.ascontiguousarray(out[C.IMAGE_EMBEDDINGS.name])
        try:
            entry = self.cache.put(image_id, embedding, input_size[0].copy(), original_size)
            if self.torch is not None:
                return self.torch.embeddings.put(image_id, on_device, *entry[1:])
            return entry
        except OSError as exc:
            raise ModelError(
                f"session cache {self.cache.directory}: cannot store the embedding ({exc}); give the "
                "cache more room (/dev/shm size) or lower session_cache_mib",
                C.ERROR_CODE_INTERNAL,
            ) from exc

    def _amg(self, embedding, input_size, coords, labels, crop_size, thresholds, mask_input, has_mask, multimask):
        """The AMG stage's work on the stored embedding: only the kept masks go back, as bits."""
        if coords is None or crop_size is None or thresholds is None:
            raise InvalidInput(
                "crop_size / amg_thresholds: automatic mask generation needs both, with point_coords + point_labels"
            )
        if mask_input is not None or has_mask is not None or multimask is not None:
            raise InvalidInput(
                "mask_input / has_mask_input / multimask_output: not used with amg_thresholds "
                "(AMG keeps the three multimask outputs of single-point prompts)"
            )
        return self.amg(embedding, coords, labels, input_size, crop_size, thresholds, stored=True)

    def _decode(self, embedding, coords, labels, mask_input, has_mask, multimask):
        k = coords.shape[0] if coords.ndim == 3 else 0
        if mask_input is None:
            mask_input = np.zeros((k, 1, C.LOW_RES_SIZE, C.LOW_RES_SIZE), np.float32)
            if has_mask is None:
                has_mask = np.zeros(k, np.float32)
        if has_mask is None:
            has_mask = np.ones(k, np.float32)
        feeds = (embedding, coords, labels, mask_input, has_mask)
        if self.torch is not None:  # the embedding is the cache's: only the prompts need checks
            check_mask_prompts(mask_input, has_mask, check_points(coords, labels))
            if multimask is not None:
                check_array(C.MULTIMASK_OUTPUT.name, multimask, np.bool_, 1)
            return self.torch.decode(*feeds, multimask)
        check_decoder_inputs(*feeds)
        low_res, iou = decode_prompts(feeds, self.local_decoder, self.decoder, self.name)
        if multimask is not None:
            check_array(C.MULTIMASK_OUTPUT.name, multimask, np.bool_, 1)
            selected = C.MULTIMASK_SLICE if bool(multimask[0]) else C.SINGLE_MASK_SLICE
            low_res, iou = low_res[:, selected], iou[:, selected]
        return np.ascontiguousarray(low_res), np.ascontiguousarray(iou)


def _check_id(image_id, expected):
    if image_id != expected:
        raise InvalidInput(
            f"image_id: expected {expected!r} (samtriton.contract.image_id_for of the image sent), got {image_id!r}"
        )


def _image_id(value):
    if value is None:
        raise InvalidInput("image_id: required, expected one string")
    check_array(C.IMAGE_ID.name, value, np.object_, 1)
    if value.shape != (1,):
        raise InvalidInput(f"image_id: expected shape [1], got {list(value.shape)}")
    raw = value[0]
    raw = raw if isinstance(raw, bytes) else str(raw).encode()
    text = raw.decode("ascii", "replace")
    if not C.IMAGE_ID_PATTERN.fullmatch(text):
        raise InvalidInput(
            f"image_id: expected {C.IMAGE_ID_LENGTH} lowercase hex digits "
            f"(samtriton.contract.image_id_for), got {text[:80]!r}"
        )
    return text
