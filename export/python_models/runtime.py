"""Helpers shared by the python-backend models (imported inside Triton's python stub)."""

import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def load(args):
    """(served model name, ONNX Runtime session on NAME/VERSION/model.onnx) from Triton's args."""
    config = json.loads(args["model_config"])
    options = ort.SessionOptions()
    threads = config.get("parameters", {}).get("ort_intra_op_threads", {}).get("string_value", "0")
    options.intra_op_num_threads = int(threads)
    path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
    return config["name"], ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def error_response(model_name, exc):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"{model_name}: {exc}"))
