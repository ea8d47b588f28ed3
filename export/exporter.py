"""``samtriton export``: checkpoint -> ONNX graphs -> Triton model repository."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

from samtriton import contract as C

from .repository import RepositoryOptions, write_repository
from .tensorrt_engine import EngineOptions, build_engine, require_tensorrt


def export(model_type: str, repository: os.PathLike, checkpoint: Optional[os.PathLike] = None,
           options: Optional[RepositoryOptions] = None, allow_unverified: bool = False, log=print,
           engine: Optional[EngineOptions] = None) -> dict:
    """Export ``model_type`` from ``checkpoint`` and write the repository; returns written dirs."""
    if model_type not in C.MODEL_TYPES:
        raise ValueError(f"--model-type must be one of {list(C.MODEL_TYPES)}, got {model_type!r}")
    options = options or RepositoryOptions()
    if options.encoder_backend == "tensorrt":
        require_tensorrt()  # fail fast, before anything is loaded or written
        engine = engine or EngineOptions(max_batch=options.max_encoder_batch)
        options = dataclasses.replace(options, max_encoder_batch=engine.max_batch,
                                      preferred_batch_sizes=tuple(sorted({engine.opt_batch, engine.max_batch})))

    from .checkpoints import load_sam
    from .onnx_export import export_decoder, export_encoder

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
        plan = None
        if options.encoder_backend == "tensorrt":
            plan = build_engine(encoder, Path(tmp) / "encoder" / "model.plan", engine, log=log)
            metadata["tensorrt"] = json.loads(Path(str(plan) + ".json").read_text())
        written = write_repository(Path(repository), encoder, decoder, options, metadata=metadata, encoder_plan=plan)
    for name, path in written.items():
        log(f"wrote {name}: {path}")
    return written
