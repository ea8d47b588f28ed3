"""Triton python-backend model: the AMG stage (decoder + SamAutomaticMaskGenerator's
per-batch filtering), so only kept masks leave the server, as packed bits.

Generated repositories copy this file to NAME_amg/1/model.py. It calls NAME_decoder through
BLS, so it works with any decoder backend (python here, onnxruntime on GPUs); beside the
python decoder it runs the AMG decoder graph (export/amg_decoder.py) in its own stub instead,
as the session stage does; beside the torch decoder it runs the decoder and the filter in
PyTorch on its instance's device (torch_stage.py).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.server import lifecycle
from samtriton.server.runtime import (AmgFilter, AmgTimes, call_model, in_process_amg_decoder,
                                                    respond_each, run_amg_decoder)
from samtriton.server.torch_stage import is_torch_stage
from samtriton.validation import check_amg_inputs, check_decoder_inputs, check_point_prompts


class TritonPythonModel:
    def initialize(self, args):
        lifecycle.exit_with_server()
        config = json.loads(args["model_config"])
        self.name = config["name"]
        base = self.name[: -len(C.AMG.suffix)]
        self.decoder = C.DECODER.served_name(base)
        self.amg_filter = AmgFilter(config)
        self.amg_decoder = in_process_amg_decoder(args, config, self.decoder)
        self.amg_times = AmgTimes(self.name)
        self.torch = None
        if is_torch_stage(config):  # the torch decoder and the filter on this instance's device
            from samtriton.server.torch_stage import TorchStage

            self.torch = TorchStage(args, config, self.decoder)

    def execute(self, requests):
        return respond_each(self.name, requests, self._one)

    def _one(self, request):
        get = lambda spec: pb_utils.get_input_tensor_by_name(request, spec.name).as_numpy()  # noqa: E731
        embedding, coords, labels = get(C.DECODER_IMAGE_EMBEDDINGS), get(C.POINT_COORDS), get(C.POINT_LABELS)
        input_size, crop_size, thresholds = get(C.INPUT_SIZE), get(C.CROP_SIZE), get(C.AMG_THRESHOLDS)
        if self.torch is not None:
            k = check_point_prompts(embedding, coords, labels)
            check_amg_inputs(input_size, crop_size, thresholds, prompts=k)
            on_device = self.torch.to_device(embedding)
            outputs = self.amg_times.run(
                lambda: self.torch.decode_points(on_device, coords, labels),
                lambda low_res, iou: self.torch.filter(low_res, iou, input_size, crop_size, thresholds))
            return pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(spec.name, outputs[spec.name]) for spec in C.AMG.outputs])
        if self.amg_decoder is not None:
            k = check_point_prompts(embedding, coords, labels)
            check_amg_inputs(input_size, crop_size, thresholds, prompts=k)
            decode = lambda: run_amg_decoder(self.amg_decoder, embedding, coords, labels)  # noqa: E731
        else:
            k = len(coords)
            mask_input = np.zeros((k, 1, C.LOW_RES_SIZE, C.LOW_RES_SIZE), np.float32)
            has_mask = np.zeros(k, np.float32)
            check_decoder_inputs(embedding, coords, labels, mask_input, has_mask)
            check_amg_inputs(input_size, crop_size, thresholds, prompts=k)
            feeds = [embedding, coords, labels, mask_input, has_mask]

            def decode():
                decoded = call_model(self.decoder, {spec.name: value for spec, value in zip(C.DECODER.inputs, feeds)},
                                     [spec.name for spec in C.DECODER.outputs], self.name)
                return decoded[C.LOW_RES_MASKS.name], decoded[C.IOU_PREDICTIONS.name]
        outputs = self.amg_times.run(decode, lambda low_res, iou: self.amg_filter(low_res, iou, input_size, crop_size,
                                                                                   thresholds))
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(spec.name, outputs[spec.name]) for spec in C.AMG.outputs])
