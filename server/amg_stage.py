"""Automatic mask generation's work on one point batch, shared by the session model (on a
stored embedding) and the stateless AMG model (the embedding in the request): check the
request, decode the points where this stage's decoder runs, filter (``amg_filter``), and time
both (``AmgTimes``: the samtriton_amg_*_seconds metrics).

Where the decoder runs for a stage: PyTorch on the stage's device beside the torch decoder
(``torch_stage``); the AMG decoder graph (export/amg_decoder.py) under ONNX Runtime in the
stub beside the python decoder; else NAME_decoder through BLS (no mask input).
"""

from __future__ import annotations

import numpy as np

from samtriton import contract as C
from samtriton.server.amg_filter import AmgFilter
from samtriton.server.config import StageConfig
from samtriton.server.runtime import AmgTimes, decode_prompts, in_process_amg_decoder, run_amg_decoder
from samtriton.validation import check_amg_inputs, check_decoder_inputs, check_point_prompts, check_points


class AmgStage:
    """One stage's AMG batches.

    Args:
        args: Triton's ``initialize`` arguments of the stage's instance.
        name: the stage's served name.
        settings: its ``StageConfig``.
        decoder_name: the served decoder (its graphs, or the model called through BLS).
        torch_stage: the stage's ``TorchStage`` beside a torch decoder, else None.
    """

    def __init__(self, args, name: str, settings: StageConfig, decoder_name: str, torch_stage=None):
        self.name, self.decoder_name, self.torch = name, decoder_name, torch_stage
        self.onnx_decoder = None if torch_stage is not None else in_process_amg_decoder(args, settings, decoder_name)
        self.filter = AmgFilter(name, settings)
        self.times = AmgTimes(name)

    def __call__(self, embedding, coords, labels, input_size, crop_size, thresholds, stored: bool = False):
        """``contract.AMG``'s outputs for K point prompts on ``embedding`` (numpy, or a device
        tensor the session stage holds; ``stored``: the stage's own, not checked again)."""
        if self.torch is not None:
            k = check_points(coords, labels) if stored else check_point_prompts(embedding, coords, labels)
            embedding = self.torch.to_device(embedding)
            decode = lambda: self.torch.decode_points(embedding, coords, labels)  # noqa: E731
        elif self.onnx_decoder is not None:
            k = check_point_prompts(embedding, coords, labels)
            decode = lambda: run_amg_decoder(self.onnx_decoder, embedding, coords, labels)  # noqa: E731
        else:
            k = len(coords) if coords.ndim == 3 else 0
            feeds = [
                embedding,
                coords,
                labels,
                np.zeros((k, 1, C.LOW_RES_SIZE, C.LOW_RES_SIZE), np.float32),
                np.zeros(k, np.float32),
            ]
            check_decoder_inputs(*feeds)
            decode = lambda: decode_prompts(feeds, None, self.decoder_name, self.name)  # noqa: E731
        check_amg_inputs(input_size, crop_size, thresholds, prompts=k)
        return self.times.run(decode, lambda low_res, iou: self.filter(low_res, iou, input_size, crop_size, thresholds))
