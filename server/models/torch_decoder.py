"""Triton python-backend model: SAM's prompt encoder + mask decoder in PyTorch, on the
instance's device.

Generated repositories copy this file to NAME_decoder/1/model.py beside model.safetensors and
sam.json (``--decoder-backend torch``). One request carries one image embedding and K
prompts. Inputs are taken where Triton holds them (``FORCE_CPU_ONLY_INPUT_TENSORS: no``): the
ensemble's embedding comes from the encoder in GPU memory and stays there; outputs leave as
DLPack tensors. The decoder runs in fp32.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.server import lifecycle
from samtriton.server import torch_runtime as T
from samtriton.server.runtime import respond_each
from samtriton.validation import check_mask_prompts, check_points


class TritonPythonModel:
    def initialize(self, args):
        lifecycle.exit_with_server()
        config, self.device, sam = T.load_instance(args)
        self.name = config["name"]
        self.decoder = T.TorchDecoder(sam, self.device)

    def execute(self, requests):
        return respond_each(self.name, requests, self._one)

    def _one(self, request):
        tensors = {
            spec.name: T.to_torch(pb_utils.get_input_tensor_by_name(request, spec.name)) for spec in C.DECODER.inputs
        }
        embedding = tensors[C.DECODER_IMAGE_EMBEDDINGS.name]
        T.check_embedding(embedding)
        # The prompts are small: checked on the host, with the client's own checks.
        prompts = {
            name: np.asarray(tensor.cpu())
            for name, tensor in tensors.items()
            if name != C.DECODER_IMAGE_EMBEDDINGS.name
        }
        k = check_points(prompts[C.POINT_COORDS.name], prompts[C.POINT_LABELS.name])
        check_mask_prompts(prompts[C.MASK_INPUT.name], prompts[C.HAS_MASK_INPUT.name], k)
        low_res, iou = self.decoder(embedding, *(tensors[spec.name] for spec in C.DECODER.inputs[1:]))
        T.synchronize(self.device)  # Triton reads the outputs outside PyTorch's stream
        return pb_utils.InferenceResponse(
            output_tensors=[
                T.to_triton(pb_utils, C.LOW_RES_MASKS.name, low_res),
                T.to_triton(pb_utils, C.IOU_PREDICTIONS.name, iou),
            ]
        )
