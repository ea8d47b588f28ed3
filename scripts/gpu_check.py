#!/usr/bin/env python3
"""GPU check of SAM encoders in reduced precision, in PyTorch, where no TensorRT is.

What a TensorRT fp16 engine risks, measured on the reference encoders themselves: for
MobileSAM (vit_t, real weights) and ViT-B / ViT-H (random weights from segment_anything's
builders: the architectures' numerics, not the trained weights'):

- fp16 and bf16 copies of the encoder against fp32 on the same device: the embedding's max
  absolute (and relative) difference, and the mask IoU of a fixed prompt set (9 points, 2
  boxes per image) decoded in fp32 from each embedding;
- fp16 overflow: forward hooks on every module, listing the modules whose fp32 outputs exceed
  65504 (fp16's largest value) and those whose reduced-precision outputs hold inf / NaN;
- the reference encoder's images/s at batch 1 and 8 in each precision.

It prints a markdown table and writes everything as JSON to ``--json``. TF32 is switched off,
so fp32 is fp32.

It imports only what a bare CUDA PyTorch machine has: torch, numpy (and the stdlib). No
TensorRT, tritonserver, tritonclient, Pillow or network. samtriton's modules come from this
checkout (``client/`` as ``samtriton``, ``export/`` as ``samtriton.export``) without running
the client package's ``__init__`` (which needs tritonclient), so neither ``pip install`` nor
PYTHONPATH is needed; the reference packages ``segment_anything`` and ``mobile_sam`` (pure
Python; torchvision / timm replaced by samtriton.export.compat's stand-ins where absent) and
MobileSAM's checkpoint are staged here and carried along (~45 MiB):

    # here, in the project's .venv (repository root): stage what the GPU machine lacks
    python scripts/gpu_check.py --stage out/gpu_stage
    # there, from the repository root with out/gpu_stage carried along:
    python scripts/gpu_check.py --stage-dir out/gpu_stage --json out/gpu_check.json
    # on CPU, the CI's run (tests/test_gpu_check.py), < 60 s: vit_t, one image, batch 1, bf16
    python scripts/gpu_check.py --device cpu --quick --checkpoint mobile_sam.pt --json out/gpu_check.json

Without --stage-dir, the reference packages must be importable and the images are synthetic
(numpy-drawn shapes). CPU fp16 kernels are emulated (~60 s per MobileSAM forward on our
2-core machine), so on CPU the default precision is bf16 only; --precisions overrides.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FP16_MAX = 65504.0
MODELS = ("vit_t", "vit_b", "vit_h")
LISTED = 12  # module names listed per finding


def import_samtriton() -> None:
    """Make ``samtriton`` / ``samtriton.export`` resolve to this checkout's client/ and export/
    without executing client/__init__.py, which imports the gRPC client."""
    for name, folder in (("samtriton", ROOT / "client"), ("samtriton.export", ROOT / "export")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    sys.modules["samtriton"].export = sys.modules["samtriton.export"]


# --- staging (on the machine with the project's environment) ------------------------------


def stage(out: Path, checkpoint: str | None) -> None:
    """Copy the reference packages, MobileSAM's checkpoint and three preprocessed photographs."""
    from skimage import data

    import_samtriton()
    from samtriton.export.checkpoints import official_checkpoint_path
    from samtriton.export.compat import ensure_reference_imports
    from samtriton.transforms import preprocess

    ensure_reference_imports()
    import mobile_sam
    import segment_anything

    out.mkdir(parents=True, exist_ok=True)
    for package in (segment_anything, mobile_sam):
        source = Path(package.__file__).parent
        target = out / "packages" / source.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(checkpoint or official_checkpoint_path("vit_t"), out / "mobile_sam.pt")
    padded, sizes = zip(*(preprocess(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee")))
    np.savez_compressed(out / "images.npz", padded=np.stack(padded), sizes=np.array(sizes, np.int64))
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"staged {out} ({total / 2**20:.1f} MiB)")


# --- inputs ---------------------------------------------------------------------------------


def synthetic_images(count: int):
    """Deterministic scenes (gradient, disk, rectangle, triangle, noise) already in the
    encoder's padded 1024 frame, with their valid (h, w)."""
    rng = np.random.default_rng(0)
    padded, sizes = [], []
    for index in range(count):
        h, w = (1024, 768) if index % 2 == 0 else (683, 1024)
        y, x = np.mgrid[:h, :w]
        image = np.stack([x * 200 // w, y * 200 // h, np.full_like(x, 60 + 40 * index)], -1).astype(np.int32)
        disk = (y - 0.35 * h) ** 2 + (x - 0.3 * w) ** 2 < (0.15 * min(h, w)) ** 2
        image[disk] = (230, 40, 40)
        image[int(0.55 * h) : int(0.85 * h), int(0.5 * w) : int(0.9 * w)] = (30, 200, 60)
        triangle = (y > 0.6 * h) & (x > 0.1 * w) & (x - 0.1 * w < (y - 0.6 * h))
        image[triangle & (x < 0.4 * w)] = (240, 220, 30)
        image += rng.integers(-12, 13, image.shape)
        frame = np.zeros((1024, 1024, 3), np.uint8)
        frame[:h, :w] = np.clip(image, 0, 255)
        padded.append(frame)
        sizes.append((h, w))
    return np.stack(padded), np.array(sizes, np.int64)


def prompt_set(size):
    """9 points on a 3x3 grid and 2 boxes inside the valid region, in the 1024 frame:
    coords [11, 2, 2], labels [11, 2] (a point is padded with label -1)."""
    h, w = (float(v) for v in size)
    coords, labels = [], []
    for fy in (0.25, 0.5, 0.75):
        for fx in (0.25, 0.5, 0.75):
            coords.append([[fx * w, fy * h], [0.0, 0.0]])
            labels.append([1.0, -1.0])
    for box in ((0.2, 0.2, 0.6, 0.6), (0.45, 0.5, 0.95, 0.9)):
        coords.append([[box[0] * w, box[1] * h], [box[2] * w, box[3] * h]])
        labels.append([2.0, 3.0])
    return np.array(coords, np.float32), np.array(labels, np.float32)


# --- models ---------------------------------------------------------------------------------


def load_model(model_type: str, device, checkpoint: str | None):
    import torch

    from samtriton.export.compat import ensure_reference_imports

    ensure_reference_imports()
    if model_type == "vit_t":
        from samtriton.export.checkpoints import load_sam

        if checkpoint is None:
            raise SystemExit("gpu_check: vit_t needs MobileSAM's checkpoint: --checkpoint or --stage-dir")
        return load_sam("vit_t", checkpoint).to(device).eval(), "real"
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: ViT-H's 630 M parameters in seconds
        sam = sam_model_registry[model_type]()
    return sam.eval(), "random"


def normalized(padded: np.ndarray, sizes: np.ndarray, device):
    """Sam.preprocess in fp32 on the uint8 padded frame (zero outside the valid region)."""
    import torch

    from samtriton import contract as C

    x = torch.from_numpy(padded).to(device).float().permute(0, 3, 1, 2)
    mean = torch.tensor(C.PIXEL_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(C.PIXEL_STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    for i, (h, w) in enumerate(sizes):
        x[i, :, int(h) :, :] = 0
        x[i, :, :, int(w) :] = 0
    return x


def _first_tensor(output):
    import torch

    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if torch.is_tensor(o)), None)
    return None


def watched_forward(encoder, x, check):
    """Run ``encoder(x)`` with a forward hook on every module; returns (output, names of the
    modules whose floating-point output satisfies ``check``, in execution order)."""
    import torch

    found, handles = [], []
    for name, module in encoder.named_modules():

        def hook(_module, _inputs, output, name=name or "(encoder)"):
            tensor = _first_tensor(output)
            if tensor is not None and tensor.is_floating_point() and check(tensor):
                found.append(name)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = encoder(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, found


def decode(sam, embedding, size, device):
    """Low-res mask logits [K, 4, 256, 256] of the fixed prompt set, decoded in fp32."""
    import torch

    from samtriton.export.onnx_export import PromptDecoder

    coords, labels = prompt_set(size)
    k = len(coords)
    with torch.no_grad():
        masks, _ = PromptDecoder(sam)(
            embedding.float(),
            torch.from_numpy(coords).to(device),
            torch.from_numpy(labels).to(device),
            torch.zeros((k, 1, 256, 256), device=device),
            torch.zeros(k, device=device),
        )
    return masks


def mask_ious(a, b):
    a, b = (a > 0).flatten(2), (b > 0).flatten(2)
    union = (a | b).sum(-1)
    inter = (a & b).sum(-1)
    iou = inter.float() / union.clamp(min=1).float()
    return iou[union > 0]


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(encoder, x, batch, warmup, repeats, device):
    import torch

    batch_x = x[:1].expand(batch, -1, -1, -1).contiguous()
    try:
        with torch.no_grad():
            for _ in range(warmup):
                encoder(batch_x)
            _sync(device)
            start = time.perf_counter()
            for _ in range(repeats):
                encoder(batch_x)
            _sync(device)
        return round(batch * repeats / (time.perf_counter() - start), 3)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "OOM"


class MixedPrecision:
    """The fp32 encoder called under ``torch.autocast(fp16)``; its modules for the hooks."""

    def __init__(self, encoder, device):
        self.encoder, self.device = encoder, device

    def named_modules(self):
        return self.encoder.named_modules()

    def __call__(self, x):
        import torch

        with torch.autocast(self.device.type, dtype=torch.float16):
            return self.encoder(x)


def check_model(model_type, args, device, padded, sizes):
    import torch

    sam, weights = load_model(model_type, device, args.checkpoint)
    encoder = sam.image_encoder
    x = normalized(padded, sizes, device)
    result = {"model": model_type, "weights": weights, "images": len(padded), "precisions": {}, "images_per_s": {}}
    reference, over_fp16 = watched_forward(encoder, x, lambda t: bool(t.detach().abs().amax() > FP16_MAX))
    result["fp32_outputs_over_65504"] = {"count": len(over_fp16), "modules": over_fp16[:LISTED]}
    ref_masks = [decode(sam, reference[i : i + 1], sizes[i], device) for i in range(len(padded))]
    result["images_per_s"]["fp32"] = {
        str(b): images_per_s(encoder, x, b, args.warmup, args.repeats, device) for b in args.batches
    }
    for name in args.precisions:
        if name == "fp16-mixed":
            # fp16 products with normalizations, softmax, reductions, powers and exponentials
            # kept in fp32 (autocast's policy): what the TensorRT build's FP32 pinning aims at.
            low, low_x = MixedPrecision(encoder, device), x
        else:
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[name]
            low, low_x = copy.deepcopy(encoder).to(dtype), x.to(dtype)
        out, nonfinite = watched_forward(low, low_x, lambda t: not bool(torch.isfinite(t).all()))
        out = out.float()
        diff = (out - reference).abs()
        finite = bool(torch.isfinite(out).all())
        ious = (
            torch.cat(
                [mask_ious(decode(sam, out[i : i + 1], sizes[i], device), ref_masks[i]) for i in range(len(padded))]
            )
            if finite
            else None
        )
        result["precisions"][name] = {
            "embedding_max_abs_diff": float(diff.max()) if finite else None,
            "embedding_rel_diff": float(diff.max() / reference.abs().max()) if finite else None,
            "finite": finite,
            "mask_iou_mean": float(ious.mean()) if ious is not None and len(ious) else None,
            "mask_iou_min": float(ious.min()) if ious is not None and len(ious) else None,
            "masks_compared": int(len(ious)) if ious is not None else 0,
            "nonfinite_outputs": {"count": len(nonfinite), "modules": nonfinite[:LISTED]},
        }
        result["images_per_s"][name] = {
            str(b): images_per_s(low, low_x, b, args.warmup, args.repeats, device) for b in args.batches
        }
        del low, out
    del sam, encoder, reference
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# --- report ---------------------------------------------------------------------------------


def _fmt(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown(document) -> str:
    batches = document["settings"]["batches"]
    head = [
        "model",
        "weights",
        "precision",
        "embedding max abs diff",
        "relative",
        "mask IoU mean",
        "mask IoU min",
        "non-finite modules",
    ] + [f"images/s batch {b}" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in document["models"]:
        rows = [("fp32", None)] + list(model["precisions"].items())
        for name, stats in rows:
            cells = [model["model"], model["weights"], name]
            if stats is None:
                cells += ["(reference)", "", "", "", ""]
            else:
                cells += [
                    _fmt(stats["embedding_max_abs_diff"]),
                    _fmt(stats["embedding_rel_diff"]),
                    _fmt(stats["mask_iou_mean"]),
                    _fmt(stats["mask_iou_min"]),
                    str(stats["nonfinite_outputs"]["count"]),
                ]
            cells += [_fmt(model["images_per_s"][name][str(b)]) for b in batches]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for model in document["models"]:
        over = model["fp32_outputs_over_65504"]
        lines.append(
            f"- {model['model']}: {over['count']} module outputs exceed 65504 in fp32"
            + (f" (first: {', '.join(over['modules'])})" if over["modules"] else "")
        )
        for name, stats in model["precisions"].items():
            bad = stats["nonfinite_outputs"]
            if bad["count"]:
                lines.append(
                    f"- {model['model']} {name}: inf/NaN from {bad['modules'][0]} on ({bad['count']} module outputs)"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stage", type=Path, help="write the reference packages, checkpoint and images here, then stop"
    )
    parser.add_argument("--stage-dir", type=Path, help="a folder written by --stage (packages, mobile_sam.pt, images)")
    parser.add_argument("--json", type=Path, help="write the results here (required unless --stage)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--checkpoint", help="MobileSAM's checkpoint (default: the staged one)")
    parser.add_argument("--models", nargs="+", choices=MODELS, help="default: all three (--quick: vit_t)")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp16", "bf16", "fp16-mixed"),
        help="default: fp16 fp16-mixed bf16 (fp16-mixed: fp16 under autocast, norms and softmax "
        "in fp32; on CPU: bf16, as CPU fp16 kernels are emulated)",
    )
    parser.add_argument("--batches", type=int, nargs="+", help="throughput batch sizes (default: 1 8; --quick: 1)")
    parser.add_argument("--images", type=int, help="images compared (default: 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="vit_t, one image, batch 1, no warm-up: a smoke run")
    args = parser.parse_args(argv)

    if args.stage:
        stage(args.stage, args.checkpoint)
        return 0
    if not args.json:
        parser.error("--json is required")
    if args.stage_dir:
        sys.path.insert(0, str(args.stage_dir / "packages"))
        if args.checkpoint is None and (args.stage_dir / "mobile_sam.pt").exists():
            args.checkpoint = str(args.stage_dir / "mobile_sam.pt")
    import_samtriton()
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"gpu_check: --device {args.device} but this torch ({torch.__version__}) sees no CUDA "
            "device; use --device cpu for a smoke run"
        )
    args.models = args.models or (["vit_t"] if args.quick else list(MODELS))
    args.precisions = args.precisions or (["bf16"] if device.type == "cpu" else ["fp16", "fp16-mixed", "bf16"])
    args.batches = args.batches or ([1] if args.quick else [1, 8])
    count = args.images or (1 if args.quick else 3)
    args.warmup, args.repeats = (0, 1) if args.quick else (2, 5)
    # A true fp32 reference: PyTorch runs cuDNN convolutions in TF32 by default.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    images = args.stage_dir / "images.npz" if args.stage_dir else None
    if images is not None and images.exists():
        with np.load(images) as stored:
            padded, sizes, source = stored["padded"][:count], stored["sizes"][:count], "staged photographs"
    else:
        padded, sizes = synthetic_images(count)
        source = "synthetic"
    environment = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "tf32": False,
    }
    document = {
        "environment": environment,
        "settings": {
            "models": args.models,
            "precisions": args.precisions,
            "batches": args.batches,
            "images": len(padded),
            "image_source": source,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "quick": args.quick,
        },
        "models": [],
    }
    for model_type in args.models:
        start = time.monotonic()
        document["models"].append(check_model(model_type, args, device, padded, sizes))
        document["models"][-1]["seconds"] = round(time.monotonic() - start, 1)
        print(f"{model_type}: done in {document['models'][-1]['seconds']} s", file=sys.stderr, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(markdown(document))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
