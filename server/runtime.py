"""Helpers shared by the python-backend models (imported inside Triton's python stub)."""

import functools
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.errors import InvalidInput
from samtriton.server.metrics import timed_call


def load(args):
    """(served model name, ONNX Runtime session on NAME/VERSION/model.onnx) from Triton's args."""
    config = json.loads(args["model_config"])
    path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
    return config["name"], onnx_session(path, config)


def onnx_session(path, config):
    """An ONNX Runtime CPU session with the model's ``ort_intra_op_threads`` (0: one per CPU
    this process may run on; ONNX Runtime's own default, physical cores, measured 1.6x
    slower for the decoder inside the stub on a 2-core machine)."""
    import onnxruntime as ort  # here: the torch backends' stages import this module without it

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads(config)
    # Spinning worker threads shave microseconds on an idle many-core GPU host; on a small CPU
    # host they take the cores other models (and co-located clients) need. Off unless asked.
    spinning = config.get("parameters", {}).get("ort_allow_spinning", {}).get("string_value", "0")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning == "1" else "0")
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def intra_op_threads(config):
    """The model's ``ort_intra_op_threads``, or one per CPU this process may run on."""
    threads = int(config.get("parameters", {}).get("ort_intra_op_threads", {}).get("string_value", "0"))
    return threads or len(os.sched_getaffinity(0))


def decoder_in_process(config):
    """Whether a stage runs the decoder's graphs in its own stub (the python decoder, on CPU)."""
    return config.get("parameters", {}).get("decoder_in_process", {}).get("string_value") == "true"


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
        model_name=model_name, inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
        requested_output_names=list(output_names), preferred_memory=cpu_outputs()).exec()
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
    if code in (pb_utils.TritonError.NOT_FOUND, pb_utils.TritonError.UNAVAILABLE) \
            or not pb_utils.is_model_ready(model_name):
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
        tensor = output_tensor(C.IMAGE_EMBEDDINGS.name, embeddings[start:start + count])
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
            self.families = [pb_utils.MetricFamily(name=name, description=f"seconds spent {what} in AMG batches",
                                                   kind=pb_utils.MetricFamily.COUNTER)
                             for name, what in zip(self.NAMES, ("decoding", "filtering"))]
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


def in_process_amg_decoder(args, config, decoder_name):
    """An ONNX Runtime session on the AMG decoder graph (export/amg_decoder.py) written beside
    the python decoder's, for a stage that runs the decoder in its own stub; else None."""
    if not decoder_in_process(config):
        return None
    path = decoder_graph_path(args, decoder_name, C.AMG_DECODER_FILE)
    return onnx_session(path, config) if os.path.exists(path) else None


def run_amg_decoder(session, embedding, coords, labels):
    """(low_res_masks, iou_predictions) of K point prompts (no mask input) on one embedding."""
    return run_decoder(session, [spec.name for spec in C.AMG_DECODER.outputs],
                       {spec.name: value for spec, value in zip(C.AMG_DECODER.inputs, (embedding, coords, labels))})


class AmgFilter:
    """Automatic mask generation's filtering of one point batch, in bounded memory: at most
    ``amg_filter_mib`` of working memory (model parameter), whatever the prompts x crop pixels.
    Where the decoder runs on a GPU (model parameter ``amg_filter_model``), the graph of
    ``samtriton.export.amg_filter`` does it there through BLS, over chunks of prompts whose
    masks fit, and only kept masks come back, in bits. Beside the python decoder on a CPU,
    numpy does it here (``samtriton.amg.kept_mask_outputs``), upscaling only the windows at
    the masks' edges: on CPU far faster than the graph under ONNX Runtime, which upscales
    every pixel."""

    def __init__(self, config):
        parameters = config.get("parameters", {})
        self.caller = config["name"]
        self.budget = int(parameters.get("amg_filter_mib", {}).get(
            "string_value", C.DEFAULT_AMG_FILTER_MIB)) * 2**20
        self.model = parameters.get("amg_filter_model", {}).get("string_value") or None
        # As many threads as the decoder's ONNX Runtime session: the filter follows it on the same cores.
        self.threads = intra_op_threads(config)
        self.output_names = [spec.name for spec in C.AMG_FILTER.outputs]

    def __call__(self, low_res, iou, input_size, crop_size, thresholds):
        """``contract.AMG``'s outputs for the batch (kept index into the K x 3 multimask outputs)."""
        from samtriton.amg import kept_mask_outputs, prompt_chunks

        if self.model is None:
            return kept_mask_outputs(low_res, iou, input_size, crop_size, thresholds, work_bytes=self.budget,
                                     threads=self.threads)
        parts = []
        for start, stop in prompt_chunks(iou, crop_size, thresholds, self.budget):
            feeds = {C.LOW_RES_MASKS.name: np.ascontiguousarray(low_res[start:stop]),
                     C.IOU_PREDICTIONS.name: np.ascontiguousarray(iou[start:stop]),
                     C.INPUT_SIZE.name: np.asarray(input_size, np.int64).reshape(2),
                     C.CROP_SIZE.name: np.asarray(crop_size, np.int64).reshape(2),
                     C.AMG_THRESHOLDS.name: np.asarray(thresholds, np.float32).reshape(3)}
            out = call_model(self.model, feeds, self.output_names, self.caller)
            out[C.KEPT_INDEX.name] = out[C.KEPT_INDEX.name] + 3 * start
            parts.append(out)
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}
