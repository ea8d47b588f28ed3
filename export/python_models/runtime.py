"""Helpers shared by the python-backend models (imported inside Triton's python stub)."""

import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def load(args):
    """(served model name, ONNX Runtime session on NAME/VERSION/model.onnx) from Triton's args."""
    config = json.loads(args["model_config"])
    path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
    return config["name"], session(path, config)


def session(path, config):
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
