"""The session and AMG stages' work beside a ``torch`` decoder, on the stage's own device.

With ``--decoder-backend torch`` the session stage (session.py) and the stateless AMG stage
(amg.py) run the decoder in their own stub, on the device of their instance, instead of
calling NAME_decoder: a BLS hop costs more than a click's decoding. The session stage also
keeps its embeddings in device memory (``torch_runtime.DeviceEmbeddings``, parameter
``device_cache_mib``) in front of the host cache its instances share, gets new embeddings from
NAME_encoder as DLPack tensors in device memory, and for automatic mask generation upscales,
scores and packs on the device (``amg_filter.device``): only the kept masks' bits, and
a click's few low-resolution masks, leave it.
"""

import os

import torch
import triton_python_backend_utils as pb_utils

from samtriton import contract as C
from samtriton.server import torch_runtime as T
from samtriton.server.config import StageConfig
from samtriton.server.runtime import call_error, decoder_graph_path


class TorchStage:
    """A stage's decoder, device embeddings and AMG filter on the instance's device.

    Args:
        args: Triton's ``initialize`` arguments of the stage's instance.
        settings: the stage's ``StageConfig`` (``device_cache_mib``).
        decoder_name: the served decoder's name; its version directory holds the weights.
    """

    def __init__(self, args, settings: StageConfig, decoder_name):
        self.device = T.device_of(args)
        directory = os.path.dirname(decoder_graph_path(args, decoder_name, T.WEIGHTS_FILE))
        sam, _ = T.load_sam(directory, self.device)
        self.decoder = T.TorchDecoder(sam, self.device)
        del sam
        self.embeddings = T.DeviceEmbeddings(settings.device_cache_mib * 2**20)

    def to_device(self, embedding) -> torch.Tensor:
        return T.as_device_tensor(embedding, self.device)

    def encode(self, encoder_name, image, input_size, caller) -> torch.Tensor:
        """NAME_encoder's embedding of one preprocessed image, in this device's memory (DLPack)."""
        response = pb_utils.InferenceRequest(
            model_name=encoder_name,
            inputs=[pb_utils.Tensor(C.IMAGE.name, image), pb_utils.Tensor(C.INPUT_SIZE.name, input_size)],
            requested_output_names=[C.IMAGE_EMBEDDINGS.name],
            preferred_memory=T.preferred_memory(pb_utils, self.device),
        ).exec()
        if response.has_error():
            raise call_error(encoder_name, response.error(), caller)
        tensor = pb_utils.get_output_tensor_by_name(response, C.IMAGE_EMBEDDINGS.name)
        # DLPack hands over Triton's buffer: clone into memory this instance owns.
        return T.to_torch(tensor).to(self.device).clone()

    def decode(self, embedding, coords, labels, mask_input, has_mask, multimask):
        """A click's (low_res_masks, iou_predictions) as host arrays: only the masks asked for
        (SAM's single mask or its three multimask outputs) leave the device."""
        low_res, iou = self.decoder(embedding, coords, labels, mask_input, has_mask)
        if multimask is not None:
            selected = C.MULTIMASK_SLICE if bool(multimask[0]) else C.SINGLE_MASK_SLICE
            low_res, iou = low_res[:, selected], iou[:, selected]
        return low_res.contiguous().cpu().numpy(), iou.contiguous().cpu().numpy()

    def decode_points(self, embedding, coords, labels):
        """Automatic mask generation's point batch: (low_res, iou) kept on the device."""
        return self.decoder(embedding, coords, labels)
