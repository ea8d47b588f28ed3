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


def export(
    model_type: Optional[str],
    repository: os.PathLike,
    checkpoint: Optional[os.PathLike] = None,
    options: Optional[RepositoryOptions] = None,
    allow_unverified: bool = False,
    log=print,
    engine: Optional[EngineOptions] = None,
    hf_model: Optional[str] = None,
    reference_decoder: bool = False,
    return_single_mask: bool = False,
) -> dict:
    """Export a SAM and write the repository; returns {served name or file: path written}.

    The model is ``model_type`` from ``checkpoint`` (segment-anything / MobileSAM state dict),
    or a Hugging Face SamModel: ``checkpoint`` a SamModel directory, or ``hf_model`` a hub id.
    ``reference_decoder`` also writes ``<repository>/NAME_reference_decoder.onnx`` with
    segment-anything's own ONNX interface (``return_single_mask`` as its export script)."""
    source = _source(model_type, checkpoint, hf_model)
    if return_single_mask and not reference_decoder:
        raise ValueError("--return-single-mask applies to --reference-decoder only")
    options = options or RepositoryOptions()
    if options.encoder_backend == "tensorrt":
        require_tensorrt()  # fail fast, before anything is loaded or written
        engine = engine or EngineOptions(max_batch=options.max_encoder_batch)
        options = dataclasses.replace(
            options,
            max_encoder_batch=engine.max_batch,
            preferred_batch_sizes=tuple(sorted({engine.opt_batch, engine.max_batch})),
        )

    from .onnx_export import export_decoder, export_encoder

    sam, metadata = _load(source, checkpoint, hf_model, allow_unverified, log)
    torch_model = None
    if "torch" in (options.encoder_backend, options.decoder_backend):
        from .torch_weights import DEFAULT_PRECISION, architecture_of

        model_type = metadata["model_type"]
        if options.torch_precision is None:
            options = dataclasses.replace(options, torch_precision=DEFAULT_PRECISION[model_type])
        architecture = architecture_of(
            sam,
            model_type,
            hf_config=metadata.pop("hf_config", None),
            preprocessor=metadata.pop("preprocessor", None),
            precision=options.torch_precision,
        )
        torch_model = (sam, architecture)
        metadata["torch"] = {
            "device": options.torch_device,
            "precision": options.torch_precision,
            "compile": options.torch_compile,
        }
    metadata.pop("hf_config", None)
    metadata.pop("preprocessor", None)
    with tempfile.TemporaryDirectory(prefix="samtriton-export-") as tmp:
        encoder = decoder = None
        if options.encoder_backend != "torch":
            log("exporting the image encoder to ONNX")
            encoder = export_encoder(sam, Path(tmp) / "encoder" / "model.onnx")
        if options.decoder_backend != "torch":
            log("exporting the prompt encoder + mask decoder to ONNX")
            decoder = export_decoder(sam, Path(tmp) / "decoder" / "model.onnx")
        metadata.update(
            {
                "encoder_backend": options.encoder_backend,
                "decoder_backend": options.decoder_backend,
                "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
        )
        plan = None
        if options.encoder_backend == "tensorrt":
            plan = build_engine(encoder, Path(tmp) / "encoder" / "model.plan", engine, log=log)
            metadata["tensorrt"] = json.loads(Path(str(plan) + ".json").read_text())
        written = write_repository(
            Path(repository), encoder, decoder, options, metadata=metadata, encoder_plan=plan, torch_model=torch_model
        )
    if reference_decoder:
        from .reference_decoder import export_reference_decoder

        log("exporting the decoder with segment-anything's ONNX interface")
        target = Path(repository) / f"{options.name}_reference_decoder.onnx"
        written[target.name] = export_reference_decoder(sam, target, return_single_mask=return_single_mask)
    for name, path in written.items():
        log(f"wrote {name}: {path}")
    return written


def _source(model_type: Optional[str], checkpoint, hf_model: Optional[str]) -> str:
    """ "hf" for a Hugging Face SamModel (hub id or directory), else the checked model type."""
    from .hf import is_hf_checkpoint

    if hf_model is not None:
        if checkpoint is not None:
            raise ValueError("give --checkpoint or --hf-model, not both")
        return "hf"
    if checkpoint is not None and is_hf_checkpoint(checkpoint):
        return "hf"  # the architecture comes from its config.json; --model-type is not needed
    if checkpoint is not None and Path(checkpoint).is_dir():
        raise ValueError(
            f"--checkpoint {checkpoint}: a directory must be a transformers SamModel "
            "(config.json with model_type 'sam', and model.safetensors or pytorch_model.bin)"
        )
    if model_type not in C.MODEL_TYPES:
        raise ValueError(
            f"--model-type must be one of {list(C.MODEL_TYPES)} for a segment-anything checkpoint, got {model_type!r}"
        )
    return model_type


def _load(source: str, checkpoint, hf_model: Optional[str], allow_unverified: bool, log):
    """(Sam in eval mode, the metadata naming where it came from)."""
    if source == "hf":
        from .hf import download_hf_model, load_hf_sam, read_config, read_preprocessor

        directory = download_hf_model(hf_model) if hf_model else Path(checkpoint)
        log(f"loading the transformers SamModel from {hf_model or directory}")
        vision = read_config(directory)["vision"]
        architecture = {
            k: vision[k]
            for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "window_size", "global_attn_indexes")
        }
        metadata = {
            "model_type": "hf_sam",
            "checkpoint": hf_model or str(directory),
            "architecture": architecture,
            # for the torch backends' sam.json (popped before the metadata is written)
            "hf_config": read_config(directory),
            "preprocessor": read_preprocessor(directory),
        }
        return load_hf_sam(directory), metadata
    from .checkpoints import load_sam

    log(f"loading {source} from {checkpoint or 'the official checkpoint'}")
    sam = load_sam(source, checkpoint, allow_unverified=allow_unverified)
    return sam, {"model_type": source, "checkpoint": str(checkpoint) if checkpoint else "official"}
