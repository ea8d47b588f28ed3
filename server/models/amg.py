"""Triton python-backend model: the AMG stage (decoder + SamAutomaticMaskGenerator's
per-batch filtering), so only kept masks leave the server, as packed bits.

Generated repositories copy this file to NAME_amg/1/model.py. It calls NAME_decoder through
BLS, so it works with any decoder backend (python here, onnxruntime on GPUs); beside the
python decoder it runs the AMG decoder graph (export/amg_decoder.py) in its own stub instead,
as the session stage does; beside the torch decoder it runs the decoder and the filter in
PyTorch on its instance's device (torch_stage.py).
"""

import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.server import lifecycle
from samtriton.server.amg_stage import AmgStage
from samtriton.server.runtime import load_config, respond_each


class TritonPythonModel:
    def initialize(self, args):
        lifecycle.exit_with_server()
        self.name, settings = load_config(args)
        decoder = C.DECODER.served_name(self.name[: -len(C.AMG.suffix)])
        torch_stage = None
        if settings.decoder_in_process == "torch":  # the torch decoder and the filter on this instance's device
            from samtriton.server.torch_stage import TorchStage

            torch_stage = TorchStage(args, settings, decoder)
        self.amg = AmgStage(args, self.name, settings, decoder, torch_stage)

    def execute(self, requests):
        return respond_each(self.name, requests, self._one)

    def _one(self, request):
        get = lambda spec: pb_utils.get_input_tensor_by_name(request, spec.name).as_numpy()  # noqa: E731
        outputs = self.amg(
            *(
                get(spec)
                for spec in (
                    C.DECODER_IMAGE_EMBEDDINGS,
                    C.POINT_COORDS,
                    C.POINT_LABELS,
                    C.INPUT_SIZE,
                    C.CROP_SIZE,
                    C.AMG_THRESHOLDS,
                )
            )
        )
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(spec.name, outputs[spec.name]) for spec in C.AMG.outputs]
        )
