"""Triton python-backend model: the SAM image encoder in PyTorch, on the instance's device.

Generated repositories copy this file to NAME_encoder/1/model.py beside model.safetensors and
sam.json (``--encoder-backend torch``). KIND_GPU instances run on their GPU, KIND_CPU on the
CPU. Requests gathered by the dynamic batcher run as one batch; the embeddings leave as
DLPack tensors where they were made (GPU memory for a BLS caller on the GPU, copied to the
host by Triton for a gRPC client). Model parameters: ``torch_precision`` (fp32, tf32,
fp16-mixed, bf16), ``torch_compile`` (none or a torch.compile mode, warmed up at load over
the batch buckets), ``torch_fused_attention`` (true: scaled_dot_product_attention).
"""

from functools import partial

import torch
import triton_python_backend_utils as pb_utils

from samtriton.server import lifecycle
from samtriton.server import torch_runtime as T
from samtriton.server.config import read as read_config
from samtriton.server.runtime import respond_encoder_batch


class TritonPythonModel:
    def initialize(self, args):
        lifecycle.exit_with_server()
        config, self.device, sam = T.load_instance(args)
        self.name, settings = config["name"], read_config(config)
        self.encoder = T.TorchEncoder(
            sam,
            self.device,
            settings.torch_precision,
            compile_mode=settings.torch_compile,
            max_batch=max(1, int(config.get("max_batch_size", 1))),
            fused_attention=settings.torch_fused_attention,
        )
        if self.encoder.compile_seconds:
            pb_utils.Logger.log_info(
                f"{self.name}: compiled in {self.encoder.compile_seconds:.1f} s for batches {self.encoder.buckets}"
            )

    def execute(self, requests):
        return respond_encoder_batch(self.name, requests, self._run, partial(T.to_triton, pb_utils))

    def _run(self, images, input_sizes):
        embeddings = self.encoder(torch.from_numpy(images), torch.from_numpy(input_sizes))
        T.synchronize(self.device)  # Triton reads the outputs' memory outside PyTorch's stream
        return embeddings
