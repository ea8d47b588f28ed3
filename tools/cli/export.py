"""``samtriton export``: checkpoint -> ONNX / TensorRT -> Triton model repository."""

from __future__ import annotations

import os
import sys

from samtriton import contract as C
from samtriton.export.repository import DECODER_BACKENDS, ENCODER_BACKENDS, TORCH_DEVICES
from samtriton.server.config import TORCH_COMPILE_MODES, TORCH_PRECISIONS


def add_parser(sub) -> None:
    parser = sub.add_parser("export", help="checkpoint -> ONNX / TensorRT -> Triton model repository")
    parser.add_argument(
        "--model-type",
        choices=C.MODEL_TYPES,
        help="architecture of a segment-anything / MobileSAM checkpoint (required for those; "
        "not for a transformers SamModel directory or --hf-model)",
    )
    parser.add_argument(
        "--checkpoint",
        help="a segment-anything / MobileSAM state dict (.pth / .pt), or a transformers SamModel "
        "directory (config.json + model.safetensors or pytorch_model.bin); default: download "
        "the official --model-type checkpoint (sha256-checked)",
    )
    parser.add_argument(
        "--hf-model",
        help="a transformers SamModel on the Hugging Face hub, e.g. "
        "facebook/sam-vit-base (downloaded with huggingface_hub; default: none)",
    )
    parser.add_argument("--repository", required=True, help="model repository directory to write into")
    parser.add_argument("--name", default=C.DEFAULT_MODEL_NAME, help="deployment name (default: %(default)s)")
    parser.add_argument(
        "--encoder-backend",
        default="python",
        choices=ENCODER_BACKENDS,
        help="Triton backend of the image encoder: python (ONNX Runtime in the python backend, "
        "the embedded server), torch (PyTorch in the python backend, on the GPU: the embedded "
        "server on a CUDA machine), onnxruntime or tensorrt (NVIDIA's Triton container)",
    )
    parser.add_argument(
        "--decoder-backend",
        default="python",
        choices=DECODER_BACKENDS,
        help="Triton backend of the prompt decoder (torch: the session and AMG stages decode "
        "and filter on the GPU too)",
    )
    parser.add_argument("--max-batch-size", type=int, default=C.MAX_ENCODER_BATCH, help="encoder max batch")
    parser.add_argument("--encoder-instances", type=int, default=1, help="encoder model instances")
    parser.add_argument("--decoder-instances", type=int, default=1, help="decoder model instances")
    parser.add_argument("--ort-threads", type=int, default=0, help="ONNX Runtime threads per python model (0: all)")
    parser.add_argument("--session-instances", type=int, default=2, help="session model instances (share one cache)")
    parser.add_argument(
        "--session-cache-mib",
        type=int,
        default=C.DEFAULT_SESSION_CACHE_MIB,
        help="embeddings the session model keeps on /dev/shm, in MiB (4 MiB per image)",
    )
    parser.add_argument(
        "--session-cache-dir",
        default="",
        help="the session cache's directory for every server of this repository on a host "
        "(default: each server its own under /dev/shm; servers given one directory share it)",
    )
    pt = parser.add_argument_group("PyTorch backends (--encoder-backend / --decoder-backend torch)")
    pt.add_argument(
        "--torch-device",
        default="cuda",
        choices=TORCH_DEVICES,
        help="where the torch models run: cuda (KIND_GPU instances) or cpu (default: %(default)s)",
    )
    pt.add_argument(
        "--torch-precision",
        default=None,
        choices=TORCH_PRECISIONS,
        help="the encoder's precision; fp16-mixed and bf16 are autocast (norms, softmax in fp32) "
        "(default: what keeps the architecture's masks right: fp32 for vit_t, fp16-mixed for "
        "the ViTs)",
    )
    pt.add_argument(
        "--torch-compile",
        default="none",
        choices=TORCH_COMPILE_MODES,
        help="torch.compile mode of the encoder, compiled and warmed up at load for each batch "
        "bucket (1, 2, 4, ... max) (default: %(default)s, eager)",
    )
    pt.add_argument(
        "--device-cache-mib",
        type=int,
        default=4096,
        help="device memory each session instance keeps embeddings in, MiB (default: %(default)s)",
    )
    trt = parser.add_argument_group("TensorRT engine (--encoder-backend tensorrt)")
    trt.add_argument(
        "--precision",
        default="fp16",
        choices=("fp16", "fp32"),
        help="fp16 keeps normalization/softmax layers in fp32 (default: %(default)s)",
    )
    trt.add_argument("--min-batch", type=int, default=1, help="smallest batch of the engine's profile")
    trt.add_argument("--opt-batch", type=int, default=None, help="default: 4, clamped into --min-batch..--max-batch")
    trt.add_argument("--max-batch", type=int, default=None, help="default: --max-batch-size")
    trt.add_argument("--workspace-gib", type=float, default=4.0, help="TensorRT builder workspace, GiB")
    trt.add_argument("--timing-cache", help="timing cache file, read if present and updated")
    parser.add_argument(
        "--allow-unverified",
        action="store_true",
        help="accept a --checkpoint whose sha256 is not the official one (e.g. fine-tuned weights)",
    )
    parser.add_argument(
        "--reference-decoder",
        action="store_true",
        help="also write REPOSITORY/NAME_reference_decoder.onnx with segment-anything's own ONNX "
        "decoder interface (its web demo's inputs; masks at orig_im_size) (default: off)",
    )
    parser.add_argument(
        "--return-single-mask",
        action="store_true",
        help="with --reference-decoder: one mask per call, as segment-anything's "
        "export script's --return-single-mask (default: all 4 masks)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from samtriton.export.exporter import export
    from samtriton.export.repository import RepositoryOptions
    from samtriton.export.tensorrt_engine import TensorRTUnavailable

    options = RepositoryOptions(
        name=args.name,
        encoder_backend=args.encoder_backend,
        decoder_backend=args.decoder_backend,
        max_encoder_batch=args.max_batch_size,
        encoder_instances=args.encoder_instances,
        decoder_instances=args.decoder_instances,
        ort_threads=args.ort_threads,
        session_instances=args.session_instances,
        session_cache_mib=args.session_cache_mib,
        session_cache_dir=os.path.abspath(args.session_cache_dir) if args.session_cache_dir else "",
        torch_device=args.torch_device,
        torch_precision=args.torch_precision,
        torch_compile=args.torch_compile,
        device_cache_mib=args.device_cache_mib,
    )
    engine = None
    if args.encoder_backend == "tensorrt":
        try:
            engine = engine_options(args)
        except ValueError as exc:
            print(f"samtriton export: {exc}", file=sys.stderr)
            return 2
    try:
        export(
            args.model_type,
            args.repository,
            checkpoint=args.checkpoint,
            options=options,
            allow_unverified=args.allow_unverified,
            engine=engine,
            hf_model=args.hf_model,
            reference_decoder=args.reference_decoder,
            return_single_mask=args.return_single_mask,
        )
    except (TensorRTUnavailable, ValueError, FileNotFoundError) as exc:  # bad arguments or files: one line
        print(f"samtriton export: {exc}", file=sys.stderr)
        return 2
    return 0


def engine_options(args):
    """The TensorRT build options of ``samtriton export`` arguments (ValueError when invalid)."""
    from samtriton.export.tensorrt_engine import EngineOptions

    return EngineOptions(
        precision=args.precision,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch or args.max_batch_size,
        workspace_gib=args.workspace_gib,
        timing_cache=args.timing_cache,
    )
