"""Triton python-backend model: the SAM image encoder ONNX graph on ONNX Runtime.

Generated repositories copy this file to NAME_encoder/1/model.py beside model.onnx. The
model is batching: requests gathered by the dynamic batcher run as one ONNX Runtime call;
a request that fails validation gets its own error and the others still run.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.export.python_models import lifecycle, metrics
from samtriton.export.python_models.runtime import error_response, load
from samtriton.validation import check_encoder_inputs


class TritonPythonModel:
    def initialize(self, args):
        lifecycle.exit_with_server()
        self.name, self.session = load(args)

    def execute(self, requests):
        responses = [None] * len(requests)
        images, sizes, owners = [], [], []
        for i, request in enumerate(requests):
            try:
                image = pb_utils.get_input_tensor_by_name(request, C.IMAGE.name).as_numpy()
                input_size = pb_utils.get_input_tensor_by_name(request, C.INPUT_SIZE.name).as_numpy()
                check_encoder_inputs(image, input_size)
            except Exception as exc:  # noqa: BLE001 - this request fails alone
                responses[i] = error_response(self.name, exc)
                continue
            images.append(image)
            sizes.append(input_size)
            owners.append((i, len(image)))
        if images:
            try:
                embeddings = metrics.timed_call(self.name, len(owners), self._run, images, sizes)
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
                for i, _ in owners:
                    responses[i] = error_response(self.name, exc)
                return responses
            start = 0
            for i, count in owners:
                tensor = pb_utils.Tensor(C.IMAGE_EMBEDDINGS.name, embeddings[start:start + count])
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
                start += count
        return responses

    def _run(self, images, sizes):
        feeds = {C.IMAGE.name: np.concatenate(images), C.INPUT_SIZE.name: np.concatenate(sizes)}
        return self.session.run([C.IMAGE_EMBEDDINGS.name], feeds)[0]
