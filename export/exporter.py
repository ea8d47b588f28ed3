"""``samtriton export``: checkpoint -> ONNX graphs -> Triton model repository."""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path
from typing import Optional

from samtriton import contract as C

from .repository import RepositoryOptions, write_repository


class TensorRTUnavailable(RuntimeError):
    pass


TENSORRT_NOT_YET = (
    "--encoder-backend tensorrt: building the TensorRT engine is not part of this release yet. "
    "The repository gets a tensorrt_plan config and the encoder ONNX (NAME_encoder/encoder.onnx); "
    "build NAME_encoder/1/model.plan from it on the serving GPU, inside the Triton container release "
    "that will serve it, e.g.: trtexec --onnx=encoder.onnx --saveEngine=1/model.plan "
    "--minShapes=image:1x1024x1024x3,input_size:1x2 --optShapes=image:4x1024x1024x3,input_size:4x2 "
    "--maxShapes=image:8x1024x1024x3,input_size:8x2 --fp16 (keep LayerNorm/Softmax in FP32)."
)


def export(model_type: str, repository: os.PathLike, checkpoint: Optional[os.PathLike] = None,
           options: Optional[RepositoryOptions] = None, allow_unverified: bool = False, log=print) -> dict:
    """Export ``model_type`` from ``checkpoint`` and write the repository; returns written dirs."""
    from .checkpoints import load_sam
    from .onnx_export import export_decoder, export_encoder

    if model_type not in C.MODEL_TYPES:
        raise ValueError(f"--model-type must be one of {list(C.MODEL_TYPES)}, got {model_type!r}")
    options = options or RepositoryOptions()
    log(f"loading {model_type} from {checkpoint or 'the official checkpoint'}")
    sam = load_sam(model_type, checkpoint, allow_unverified=allow_unverified)
    with tempfile.TemporaryDirectory(prefix="samtriton-export-") as tmp:
        log("exporting the image encoder to ONNX")
        encoder = export_encoder(sam, Path(tmp) / "encoder" / "model.onnx")
        log("exporting the prompt encoder + mask decoder to ONNX")
        decoder = export_decoder(sam, Path(tmp) / "decoder" / "model.onnx")
        metadata = {
            "model_type": model_type,
            "checkpoint": str(checkpoint) if checkpoint else "official",
            "encoder_backend": options.encoder_backend,
            "decoder_backend": options.decoder_backend,
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        written = write_repository(Path(repository), encoder, decoder, options, metadata=metadata)
    if options.encoder_backend == "tensorrt":
        log(TENSORRT_NOT_YET)
    for name, path in written.items():
        log(f"wrote {name}: {path}")
    return written
