"""Helpers shared by the python-backend models (imported inside Triton's python stub)."""

import functools
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.errors import InvalidInput
from samtriton.server import config as model_config
from samtriton.server.config import StageConfig
from samtriton.server.metrics import timed_call


def load_config(args):
    """(served name, ``StageConfig``) of the model Triton is initializing."""
    config = json.loads(args["model_config"])
    return config["name"], model_config.read(config)


def load(args):
    """(served model name, ONNX Runtime session on NAME/VERSION/model.onnx) from Triton's args."""
    name, settings = load_config(args)
    path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
    return name, onnx_session(path, settings)


def onnx_session(path, settings: StageConfig):
    """An ONNX Runtime CPU session with the model's ``ort_intra_op_threads`` (see
    ``samtriton.server.config``) and, unless ``ort_allow_spinning``, no spinning threads:
    they shave microseconds on an idle many-core GPU host, and take the cores other models
    (and co-located clients) need on a small CPU host."""
    import onnxruntime as ort  # here: the torch backends' stages import this module without it

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.ort_allow_spinning else "0")
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def decoder_graph_path(args, decoder_name, filename):
    """A file of the decoder model's version directory, beside the calling model's."""
    return os.path.normpath(os.path.join(args["model_repository"], os.pardir, decoder_name, "1", filename))


class ModelError(Exception):
    """An error answered with a Triton error code (``C.ERROR_CODE_*``): the client maps the
    code onto its exceptions."""

    def __init__(self, message, code=C.ERROR_CODE_INTERNAL):
        super().__init__(message)
        self.code = code


def error_code(exc):
    """The Triton error code for an exception raised while serving a request."""
    if isinstance(exc, ModelError):
        return exc.code
    if isinstance(exc, InvalidInput):
        return C.ERROR_CODE_INVALID_INPUT
    return C.ERROR_CODE_INTERNAL


def error_response(model_name, exc):
    """A per-request error response, its code chosen from the exception; unexpected
    exceptions are answered as INTERNAL with their type, and the model keeps serving."""
    text = str(exc) if isinstance(exc, (ModelError, InvalidInput)) else f"{type(exc).__name__}: {exc}"
    code = getattr(pb_utils.TritonError, error_code(exc))
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"{model_name}: {text}", code))


def respond_each(model_name, requests, handle):
    """``handle(request)`` for each request; any exception becomes that request's error."""
    responses = []
    for request in requests:
        try:
            responses.append(timed_call(model_name, 1, handle, request))  # samtriton_request_seconds
        except Exception as exc:  # noqa: BLE001 - one bad request must not fail its neighbours
            responses.append(error_response(model_name, exc))
    return responses


def cpu_outputs():
    """BLS outputs in CPU memory: a TensorRT or ONNX Runtime CUDA model hands its outputs back
    in GPU memory otherwise, where as_numpy() raises (python_backend request_executor.cc).
    (The stub adds these names to pb_utils after the model's module is imported.)"""
    return pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)


def call_model(model_name, inputs, output_names, caller):
    """A BLS request to ``model_name``; returns {output name: numpy array} in CPU memory.
    A failure of the called model is the caller's UNAVAILABLE (the client fails over) when
    that model is missing or unavailable, else it keeps the called model's message."""
    response = pb_utils.InferenceRequest(
        model_name=model_name,
        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
        requested_output_names=list(output_names),
        preferred_memory=cpu_outputs(),
    ).exec()
    if response.has_error():
        raise call_error(model_name, response.error(), caller)
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in output_names}


def call_error(model_name, error, caller):
    """The exception for a failed BLS call to ``model_name``: UNAVAILABLE (the client fails
    over) when that model is missing or unavailable, InvalidInput for its INVALID_ARG, else
    INTERNAL with the called model's message."""
    code = error.code() if hasattr(error, "code") else None
    # A called model that is missing or not ready: the caller is unavailable here, and the
    # client fails over (its message does not decide: the server's readiness does).
    if code in (pb_utils.TritonError.NOT_FOUND, pb_utils.TritonError.UNAVAILABLE) or not pb_utils.is_model_ready(
        model_name
    ):
        return ModelError(f"{caller} could not use {model_name}: {error.message()}", C.ERROR_CODE_UNAVAILABLE)
    if code == pb_utils.TritonError.INVALID_ARG:
        return InvalidInput(error.message())
    return ModelError(f"{model_name}: {error.message()}", C.ERROR_CODE_INTERNAL)


def respond_encoder_batch(model_name, requests, run, output_tensor):
    """The batching encoder's responses: each request's ``image`` + ``input_size`` checked
    (a bad one fails alone), ``run(images, input_sizes)`` once for the whole batch (numpy
    arrays in, embeddings out; its error fails every request of the batch, timed as
    ``samtriton_request_seconds``), and ``output_tensor(name, rows)`` per request's rows."""
    from samtriton.validation import check_encoder_inputs

    responses = [None] * len(requests)
    images, sizes, owners = [], [], []
    for i, request in enumerate(requests):
        try:
            image = pb_utils.get_input_tensor_by_name(request, C.IMAGE.name).as_numpy()
            input_size = pb_utils.get_input_tensor_by_name(request, C.INPUT_SIZE.name).as_numpy()
            check_encoder_inputs(image, input_size)
        except Exception as exc:  # noqa: BLE001 - this request fails alone
            responses[i] = error_response(model_name, exc)
            continue
        images.append(image)
        sizes.append(input_size)
        owners.append((i, len(image)))
    if not images:
        return responses
    try:
        embeddings = timed_call(model_name, len(owners), run, np.concatenate(images), np.concatenate(sizes))
    except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
        for i, _ in owners:
            responses[i] = error_response(model_name, exc)
        return responses
    start = 0
    for i, count in owners:
        tensor = output_tensor(C.IMAGE_EMBEDDINGS.name, embeddings[start : start + count])
        responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
        start += count
    return responses


# Prompts above which a decoder run returns its arena memory afterwards: a click keeps the
# arena's speed, while one 256-prompt request does not leave GBs held by every instance.
LARGE_DECODER_RUN = 8


@functools.lru_cache(maxsize=1)
def _shrink_arena():
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def run_decoder(session, output_names, feeds):
    prompts = len(feeds[C.POINT_COORDS.name])
    return session.run(output_names, feeds, _shrink_arena() if prompts > LARGE_DECODER_RUN else None)


def decode_prompts(feeds, local_decoder, decoder_name, caller):
    """The decoder on ``feeds`` (C.DECODER's inputs, in order) -> (low_res, iou): in this
    process with ``local_decoder`` (an ONNX Runtime session), else through a BLS call to
    ``decoder_name`` on behalf of ``caller``."""
    named = {spec.name: value for spec, value in zip(C.DECODER.inputs, feeds)}
    output_names = [spec.name for spec in C.DECODER.outputs]
    if local_decoder is not None:
        low_res, iou = run_decoder(local_decoder, output_names, named)
        return low_res, iou
    decoded = call_model(decoder_name, named, output_names, caller)
    return decoded[C.LOW_RES_MASKS.name], decoded[C.IOU_PREDICTIONS.name]


class AmgTimes:
    """Seconds a stage's automatic mask generation spends decoding and filtering, exported as
    Triton metrics (counters ``samtriton_amg_decode_seconds`` and ``samtriton_amg_filter_seconds``,
    label ``model``; every instance adds to the same counter): with Triton's own
    ``nv_inference_compute_infer_duration_us`` they tell what share of the server's AMG time
    the filtering takes. Without metrics (``--allow-metrics=false``) they count nothing."""

    NAMES = ("samtriton_amg_decode_seconds", "samtriton_amg_filter_seconds")

    def __init__(self, model_name):
        self.counters = None
        try:
            self.families = [
                pb_utils.MetricFamily(
                    name=name, description=f"seconds spent {what} in AMG batches", kind=pb_utils.MetricFamily.COUNTER
                )
                for name, what in zip(self.NAMES, ("decoding", "filtering"))
            ]
            self.counters = [family.Metric(labels={"model": model_name}) for family in self.families]
        except Exception:  # noqa: BLE001 - metrics off, or a backend without custom metrics
            self.counters = None

    def run(self, decode, filter_batch):
        """``filter_batch(*decode())``, each timed into its counter."""
        start = time.perf_counter()
        decoded = decode()
        middle = time.perf_counter()
        result = filter_batch(*decoded)
        if self.counters is not None:
            self.counters[0].increment(middle - start)
            self.counters[1].increment(time.perf_counter() - middle)
        return result


def in_process_amg_decoder(args, settings: StageConfig, decoder_name):
    """An ONNX Runtime session on the AMG decoder graph (export/amg_decoder.py) written beside
    the python decoder's, for a stage that runs the decoder in its own stub; else None."""
    if settings.decoder_in_process != "true":
        return None
    path = decoder_graph_path(args, decoder_name, C.AMG_DECODER_FILE)
    return onnx_session(path, settings) if os.path.exists(path) else None


def run_amg_decoder(session, embedding, coords, labels):
    """(low_res_masks, iou_predictions) of K point prompts (no mask input) on one embedding."""
    return run_decoder(
        session,
        [spec.name for spec in C.AMG_DECODER.outputs],
        {spec.name: value for spec, value in zip(C.AMG_DECODER.inputs, (embedding, coords, labels))},
    )
