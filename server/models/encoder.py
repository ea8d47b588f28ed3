"""Triton python-backend model: the SAM image encoder ONNX graph on ONNX Runtime.

Generated repositories copy this file to NAME_encoder/1/model.py beside model.onnx. The
model is batching: requests gathered by the dynamic batcher run as one ONNX Runtime call;
a request that fails validation gets its own error and the others still run.
"""

import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.server import lifecycle
from samtriton.server.runtime import load, respond_encoder_batch


class TritonPythonModel:
    def initialize(self, args):
        lifecycle.exit_with_server()
        self.name, self.session = load(args)

    def execute(self, requests):
        return respond_encoder_batch(self.name, requests, self._run, pb_utils.Tensor)

    def _run(self, images, input_sizes):
        feeds = {C.IMAGE.name: images, C.INPUT_SIZE.name: input_sizes}
        return self.session.run([C.IMAGE_EMBEDDINGS.name], feeds)[0]
