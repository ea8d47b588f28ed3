"""Triton python-backend model: the SAM image encoder in PyTorch, on the instance's device.

Generated repositories copy this file to NAME_encoder/1/model.py beside model.safetensors and
sam.json (``--encoder-backend torch``). KIND_GPU instances run on their GPU, KIND_CPU on the
CPU. Requests gathered by the dynamic batcher run as one batch; the embeddings leave as
DLPack tensors where they were made (GPU memory for a BLS caller on the GPU, copied to the
host by Triton for a gRPC client). Model parameters: ``torch_precision`` (fp32, tf32,
fp16-mixed, bf16), ``torch_compile`` (none or a torch.compile mode, warmed up at load over
the batch buckets), ``torch_fused_attention`` (true: scaled_dot_product_attention).
"""

import json

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.export.python_models import torch_runtime as T
from samtriton.export.python_models.runtime import error_response
from samtriton.validation import check_encoder_inputs


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.device = T.device_of(args)
        sam, _ = T.load_sam(f"{args['model_repository']}/{args['model_version']}", self.device)
        self.encoder = T.TorchEncoder(
            sam, self.device, T.parameter(config, "torch_precision", "fp32"),
            compile_mode=T.parameter(config, "torch_compile", "none"),
            max_batch=max(1, int(config.get("max_batch_size", 1))),
            fused_attention=T.parameter(config, "torch_fused_attention", "true") == "true")
        if self.encoder.compile_seconds:
            pb_utils.Logger.log_info(f"{self.name}: compiled in {self.encoder.compile_seconds:.1f} s "
                                     f"for batches {self.encoder.buckets}")

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
            images.append(torch.from_numpy(image))
            sizes.append(torch.from_numpy(np.ascontiguousarray(input_size)))
            owners.append((i, len(image)))
        if images:
            try:
                embeddings = self.encoder(torch.cat(images), torch.cat(sizes))
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
                for i, _ in owners:
                    responses[i] = error_response(self.name, exc)
                return responses
            # Triton reads the outputs' memory outside PyTorch's stream: finish the kernels first.
            T.synchronize(self.device)
            start = 0
            for i, count in owners:
                tensor = T.to_triton(pb_utils, C.IMAGE_EMBEDDINGS.name, embeddings[start:start + count])
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
                start += count
        return responses
