#!/usr/bin/env python3
"""Automatic mask generation's per-batch work on a GPU, in PyTorch, where neither TensorRT
nor ONNX Runtime CUDA is installed.

One batch of 64 grid points on MobileSAM (real weights), a staged photograph's embedding,
fp32 with TF32 off, at three crop sizes (512 x 512, 3 MP 1536 x 2304, 12 MP 3000 x 4500):

- the reference: mobile_sam ``SamPredictor.predict_torch`` (decoder, then every mask
  upscaled to the crop) and ``SamAutomaticMaskGenerator._process_batch``'s IoU filter,
  stability score and binarization, all on the GPU;
- samtriton: the decoder as exported (``PromptDecoder``, what NAME_decoder serves) and the AMG
  decoder (``AmgPromptDecoder``), then the AMG filter graph (server/amg_filter/graph.py, what
  NAME_amg_filter serves) run on the GPU through onnx2torch's conversion of the ONNX graph,
  in the stage's prompt chunks (``samtriton.server.amg_filter.prompt_chunks``, 256 MiB) and whole, with
  the kept bits copied to the host (what the client receives).

The graph's kept masks on the GPU are checked against the same graph under ONNX Runtime on the
CPU (which tests/test_amg_filter.py holds equal to the numpy filter) on the same decoder
outputs. Prints a markdown table, writes JSON.

    # here (repository root, project .venv): stage the reference packages, checkpoint,
    # images (scripts/gpu_check.py --stage) and onnx2torch
    python scripts/gpu_check.py --stage out/gpu_stage
    pip download onnx2torch==1.5.15 --no-deps -d out/gpu_stage/wheels
    # there, with out/gpu_stage carried:
    python scripts/gpu_amg.py --stage-dir out/gpu_stage --json out/gpu_amg.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import import_samtriton, load_model  # noqa: E402

CROPS = {"512 x 512": (512, 512), "3 MP": (1536, 2304), "12 MP": (3000, 4500)}
THRESHOLDS = (0.88, 0.95, 1.0)  # the reference's pred_iou_thresh, stability_score_thresh, offset


def onnx2torch_from(stage_dir: Path):
    """Import onnx2torch from its staged wheel. onnx2torch imports torchvision.ops for its NMS
    and RoiAlign converters; where torchvision is absent a labelled stand-in (raising if
    called) is put in its place: the filter graph uses neither. Registers the comparison
    converters onnx2torch 1.5.15 lacks."""
    import types

    import torch

    wheels = sorted((stage_dir / "wheels").glob("onnx2torch-*.whl"))
    if wheels:
        target = stage_dir / "onnx2torch_lib"
        if not target.exists():
            zipfile.ZipFile(wheels[-1]).extractall(target)
        sys.path.insert(0, str(target))
    try:
        import torchvision  # noqa: F401
    except ImportError:

        def absent(*args, **kwargs):
            raise NotImplementedError("torchvision stand-in (gpu_amg.py): not installed here")

        stand_in = types.ModuleType("torchvision")
        stand_in.ops = types.ModuleType("torchvision.ops")
        stand_in.ops.nms = stand_in.ops.batched_nms = stand_in.ops.roi_align = absent
        sys.modules.update({"torchvision": stand_in, "torchvision.ops": stand_in.ops})
    from onnx2torch import convert
    from onnx2torch.node_converters.registry import add_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    class Compare(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, a, b):
            return self.fn(a, b)

    for op_type, fn in (("LessOrEqual", torch.le), ("GreaterOrEqual", torch.ge)):
        for version in (12, 16):

            def converter(node, graph, fn=fn):
                return OperationConverterResult(torch_module=Compare(fn), onnx_mapping=onnx_mapping_from_node(node))

            try:
                add_converter(operation_type=op_type, version=version)(converter)
            except ValueError:  # a later onnx2torch has it
                pass
    return convert


def timed(fn, device, repeats):
    import torch

    fn()  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage-dir", type=Path, required=True, help="written by gpu_check.py --stage (+ wheels/)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--crops", nargs="+", choices=list(CROPS), default=list(CROPS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument(
        "--filter-mib",
        type=int,
        nargs="*",
        default=[1024, 4096],
        help="other amg_filter_mib budgets to time the chunked filter at",
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, str(args.stage_dir / "packages"))
    import_samtriton()
    convert = onnx2torch_from(args.stage_dir)
    import torch

    from samtriton import contract as C
    from samtriton.export.amg_decoder import AmgPromptDecoder
    from samtriton.export.onnx_export import PromptDecoder
    from samtriton.server.amg_filter import prompt_chunks
    from samtriton.server.amg_filter.graph import build_graph

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sam, _ = load_model("vit_t", device, str(args.stage_dir / "mobile_sam.pt"))
    from mobile_sam import SamPredictor
    from mobile_sam.utils.amg import calculate_stability_score

    with np.load(args.stage_dir / "images.npz") as stored:
        padded, size = stored["padded"][0], tuple(int(v) for v in stored["sizes"][0])
    predictor = SamPredictor(sam)
    with torch.no_grad():
        image = torch.as_tensor(padded, device=device).permute(2, 0, 1)[None]
        predictor.set_torch_image(image, size)  # the padded frame is already 1024 on its long side
    embedding = predictor.features
    k = args.prompts
    side = int(round(k**0.5))
    filter_graph = convert(build_graph()).to(device).eval()
    import onnxruntime

    cpu_graph = onnxruntime.InferenceSession(build_graph().SerializeToString(), providers=["CPUExecutionProvider"])
    exported = PromptDecoder(sam).eval()
    amg_decoder = AmgPromptDecoder(exported).eval()
    rows, document = (
        [],
        {
            "environment": {
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "tf32": False,
                "prompts": k,
            },
            "crops": [],
        },
    )
    for label in args.crops:
        crop = CROPS[label]
        scale = C.IMAGE_SIZE / max(crop)  # ResizeLongestSide.get_preprocess_shape
        input_size = (int(crop[0] * scale + 0.5), int(crop[1] * scale + 0.5))
        predictor.original_size, predictor.input_size = crop, input_size
        grid = np.stack(
            np.meshgrid((np.arange(side) + 0.5) / side * crop[1], (np.arange(side) + 0.5) / side * crop[0]), -1
        ).reshape(-1, 2)
        coords_1024 = predictor.transform.apply_coords(grid, crop)
        points = torch.as_tensor(coords_1024[:, None, :], dtype=torch.float32, device=device)
        with torch.no_grad():

            def reference():
                masks, iou, _ = predictor.predict_torch(
                    points, torch.ones(k, 1, dtype=torch.int, device=device), multimask_output=True, return_logits=True
                )
                masks, iou = masks.flatten(0, 1), iou.flatten(0, 1)
                keep = iou > THRESHOLDS[0]
                masks, iou = masks[keep], iou[keep]
                stability = calculate_stability_score(masks, sam.mask_threshold, THRESHOLDS[2])
                keep = stability >= THRESHOLDS[1]
                return masks[keep] > sam.mask_threshold, iou[keep], stability[keep]

            coords = torch.cat([points, torch.zeros_like(points)], 1)
            labels = torch.tensor([[1.0, -1.0]], device=device).repeat(k, 1)
            no_mask = (torch.zeros(k, 1, 256, 256, device=device), torch.zeros(k, device=device))
            sizes = (
                torch.tensor(input_size, device=device),
                torch.tensor(crop, device=device),
                torch.tensor(THRESHOLDS, dtype=torch.float32, device=device),
            )

            def decode_exported():
                return exported(embedding, coords, labels, *no_mask)

            def decode_amg():
                return amg_decoder(embedding, coords, labels)

            def filter_chunked(low_res, iou, mib=C.DEFAULT_AMG_FILTER_MIB):
                parts = []
                for start, stop in prompt_chunks(iou.cpu().numpy(), crop, THRESHOLDS, mib * 2**20):
                    out = filter_graph(low_res[start:stop], iou[start:stop], *sizes)
                    parts.append([out[0] + 3 * start] + [t for t in out[1:]])
                return [torch.cat(p).cpu() for p in zip(*parts)]

            def filter_whole(low_res, iou):
                return [t.cpu() for t in filter_graph(low_res, iou, *sizes)]

            ref_out, ref_s = timed(reference, device, args.repeats)
            (low_exp, iou_exp), exported_s = timed(decode_exported, device, args.repeats)
            (low_amg, iou_amg), amg_s = timed(decode_amg, device, args.repeats)
            kept, chunked_s = timed(lambda: filter_chunked(low_amg, iou_amg), device, args.repeats)
            _, whole_s = timed(lambda: filter_whole(low_amg, iou_amg), device, args.repeats)
            by_budget = {
                mib: timed(lambda: filter_chunked(low_amg, iou_amg, mib), device, args.repeats)[1]
                for mib in args.filter_mib
            }
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        # The graph on the GPU vs the same graph under ONNX Runtime on the CPU, same decoder outputs.
        cpu = dict(
            zip(
                [spec.name for spec in C.AMG_FILTER.outputs],
                cpu_graph.run(
                    None,
                    {
                        C.LOW_RES_MASKS.name: low_amg.cpu().numpy(),
                        C.IOU_PREDICTIONS.name: iou_amg.cpu().numpy(),
                        C.INPUT_SIZE.name: np.array(input_size, np.int64),
                        C.CROP_SIZE.name: np.array(crop, np.int64),
                        C.AMG_THRESHOLDS.name: np.array(THRESHOLDS, np.float32),
                    },
                ),
            )
        )
        same_index = np.array_equal(kept[0].numpy(), cpu[C.KEPT_INDEX.name])
        bits_gpu, bits_cpu = kept[3].numpy(), cpu[C.KEPT_MASKS.name]
        differing = (
            float(np.unpackbits(bits_gpu ^ bits_cpu).mean())
            if same_index and bits_gpu.shape == bits_cpu.shape
            else float("nan")
        )
        decoders = {
            "logits_max_abs_diff": float((low_amg - low_exp).abs().max()),
            "iou_max_abs_diff": float((iou_amg - iou_exp).abs().max()),
        }
        stability_diff = 0.0
        if same_index and len(kept[2]):
            stability_diff = float(np.abs(kept[2].numpy() - cpu[C.KEPT_STABILITY.name]).max())
        # fmt: off
        entry = dict(
            crop=label, crop_size=crop, reference_s=ref_s, reference_kept=int(len(ref_out[1])),
            exported_decoder_s=exported_s, amg_decoder_s=amg_s,
            filter_chunked_s=chunked_s, filter_whole_s=whole_s, filter_by_budget_s=by_budget,
            kept=int(len(kept[0])), kept_equal_cpu_index=same_index, kept_bits_differing=differing,
            stability_max_abs_diff=stability_diff, peak_gpu_mib=peak, decoders=decoders,
        )
        # fmt: on
        document["crops"].append(entry)
        print(json.dumps(entry), flush=True)
        rows.append(entry)
        torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    print(f"\nGPU: {document['environment']['gpu']}, torch {torch.__version__}, fp32 (TF32 off), {k} prompts\n")
    print(
        "| crop | reference batch ms (decoder + upscale all + filter) | exported decoder ms | AMG decoder ms "
        "| filter graph ms (chunks / whole, bits to host) | ours ms (AMG decoder + chunks) | ratio | kept (ours / ref) "
        "| GPU graph = CPU graph (index, bits differing, stability diff) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for e in rows:
        ours = e["amg_decoder_s"] + e["filter_chunked_s"]
        print(
            f"| {e['crop']} | {e['reference_s'] * 1e3:.1f} | {e['exported_decoder_s'] * 1e3:.1f} | "
            f"{e['amg_decoder_s'] * 1e3:.1f} | {e['filter_chunked_s'] * 1e3:.1f} / {e['filter_whole_s'] * 1e3:.1f} | "
            f"{ours * 1e3:.1f} | {ours / e['reference_s']:.2f} | {e['kept']} / {e['reference_kept']} | "
            f"{e['kept_equal_cpu_index']}, {e['kept_bits_differing']:.2e}, {e['stability_max_abs_diff']:.1e} |"
        )
    if args.filter_mib:
        print(
            "\n| crop | "
            + " | ".join(f"filter ms at amg_filter_mib {mib}" for mib in [C.DEFAULT_AMG_FILTER_MIB] + args.filter_mib)
            + " | whole batch |"
        )
        print("|---|" + "---|" * (len(args.filter_mib) + 2))
        for e in rows:
            times = [e["filter_chunked_s"]] + [e["filter_by_budget_s"][mib] for mib in args.filter_mib]
            print(
                f"| {e['crop']} | "
                + " | ".join(f"{t * 1e3:.1f}" for t in times)
                + f" | {e['filter_whole_s'] * 1e3:.1f} |"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
