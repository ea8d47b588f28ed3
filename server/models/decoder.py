"""Triton python-backend model: SAM's prompt encoder + mask decoder ONNX graph on ONNX Runtime.

Generated repositories copy this file to NAME_decoder/1/model.py beside model.onnx. One
request carries one image embedding and K prompts; every request is validated against the
contract and a bad one gets a clear error without touching its neighbours.
"""

import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.server import lifecycle
from samtriton.server.runtime import load, respond_each, run_decoder
from samtriton.validation import check_decoder_inputs


class TritonPythonModel:
    def initialize(self, args):
        lifecycle.exit_with_server()
        self.name, self.session = load(args)
        self.input_names = [spec.name for spec in C.DECODER.inputs]
        self.output_names = [spec.name for spec in C.DECODER.outputs]

    def execute(self, requests):
        return respond_each(self.name, requests, self._one)

    def _one(self, request):
        feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
        check_decoder_inputs(*(feeds[name] for name in self.input_names))
        outputs = run_decoder(self.session, self.output_names, feeds)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(n, v) for n, v in zip(self.output_names, outputs)]
        )
