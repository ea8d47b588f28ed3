"""Helpers shared by the python-backend models (imported inside Triton's python stub)."""

import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from samtriton import contract as C


def load(args):
    """(served model name, ONNX Runtime session on NAME/VERSION/model.onnx) from Triton's args."""
    config = json.loads(args["model_config"])
    path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
    return config["name"], onnx_session(path, config)


def onnx_session(path, config):
    """An ONNX Runtime CPU session with the model's ``ort_intra_op_threads`` (0: one per CPU
    this process may run on; ONNX Runtime's own default, physical cores, measured 1.6x
    slower for the decoder inside the stub on a 2-core machine)."""
    options = ort.SessionOptions()
    threads = int(config.get("parameters", {}).get("ort_intra_op_threads", {}).get("string_value", "0"))
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    # Spinning worker threads shave microseconds on an idle many-core GPU host; on a small CPU
    # host they take the cores other models (and co-located clients) need. Off unless asked.
    spinning = config.get("parameters", {}).get("ort_allow_spinning", {}).get("string_value", "0")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning == "1" else "0")
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def error_response(model_name, exc):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"{model_name}: {exc}"))


# Prompts above which a decoder run returns its arena memory afterwards: a click keeps the
# arena's speed, while one 256-prompt request does not leave GBs held by every instance.
LARGE_DECODER_RUN = 8
_SHRINK = ort.RunOptions()
_SHRINK.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


def run_decoder(session, output_names, feeds):
    prompts = len(feeds[C.POINT_COORDS.name])
    return session.run(output_names, feeds, _SHRINK if prompts > LARGE_DECODER_RUN else None)
