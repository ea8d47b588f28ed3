"""A SAM's weights for the ``torch`` backends: ``model.safetensors`` + ``sam.json``.

The torch backends run segment-anything's (MobileSAM's) own modules inside the python
backend (server/torch_runtime.py). What they need from the export is the state
dict, as safetensors (no pickle on load), and how to build the modules it fits: the model
type, for a Hugging Face SamModel its checked config, and the model's pixel statistics (a
non-persistent buffer, absent from the state dict).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

WEIGHTS_FILE = "model.safetensors"
ARCHITECTURE_FILE = "sam.json"
# The encoder precision that keeps each architecture's masks right (the H100 run in
# docs/deployment.md): fp16-mixed for the ViT encoders, fp32 for MobileSAM, which reduced
# precision gets wrong.
DEFAULT_PRECISION = {
    "vit_t": "fp32",
    "vit_b": "fp16-mixed",
    "vit_l": "fp16-mixed",
    "vit_h": "fp16-mixed",
    "hf_sam": "fp16-mixed",
}


def architecture_of(
    sam,
    model_type: str,
    hf_config: Optional[dict] = None,
    preprocessor: Optional[dict] = None,
    precision: Optional[str] = None,
) -> dict:
    """What ``torch_runtime.build_sam`` needs to rebuild ``sam``'s modules.

    Args:
        sam: the loaded model (segment-anything's ``Sam``; MobileSAM's for vit_t).
        model_type: vit_b / vit_l / vit_h / vit_t, or ``hf_sam`` for a transformers SamModel.
        hf_config: the checked SamModel config (``samtriton.export.hf.read_config``), for hf_sam.
        preprocessor: the SamModel's image processor config, for hf_sam.
        precision: the encoder precision the export chose (informative; the model config's
            ``torch_precision`` parameter is what the server reads).
    """
    architecture = {
        "model_type": model_type,
        "pixel_mean": [float(v) for v in sam.pixel_mean.reshape(-1)],
        "pixel_std": [float(v) for v in sam.pixel_std.reshape(-1)],
    }
    if model_type == "hf_sam":
        if hf_config is None:
            raise ValueError("architecture_of: an hf_sam model needs its hf_config")
        architecture["hf_config"] = hf_config
        architecture["preprocessor"] = preprocessor
    if precision is not None:
        architecture["precision"] = precision
    return architecture


# The parts of a Sam each served model needs: the encoder model holds the image encoder's
# weights only, the decoder (and the stages running it) the prompt encoder's and mask decoder's.
ENCODER_PARTS = ("image_encoder",)
DECODER_PARTS = ("prompt_encoder", "mask_decoder")


def write_torch_weights(sam, architecture: dict, directory: os.PathLike, parts=ENCODER_PARTS + DECODER_PARTS) -> Path:
    """``model.safetensors`` (the state dict of ``sam``'s ``parts``, contiguous tensors) and
    ``sam.json`` in ``directory``; returns the weights' path."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().contiguous().cpu()
        for name, tensor in sam.state_dict().items()
        if name.split(".", 1)[0] in parts
    }
    path = directory / WEIGHTS_FILE
    save_file(state, str(path))
    (directory / ARCHITECTURE_FILE).write_text(json.dumps(architecture, indent=2, sort_keys=True) + "\n")
    return path
