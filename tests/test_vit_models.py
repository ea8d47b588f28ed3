"""SAM ViT-B / ViT-L / ViT-H end to end: ``samtriton export --model-type vit_* --checkpoint
random.pth --allow-unverified`` (random weights from segment-anything's own builders; the
official weights are not reachable here), the repository on the embedded Triton, the client.

ViT-B runs in the default suite against ``segment_anything.SamPredictor`` with the same
weights on 2 real images x (point multimask, box, box + point, refinement). Acceptance: ONNX
vs PyTorch embeddings max abs diff <= 1e-3 (relative to the embedding scale where it is
larger than 1), low-res logits max abs diff <= 1e-2, mask IoU >= 0.99 wherever the reference
mask has at least 1% of the pixels.

ViT-L / ViT-H are marked slow (``pytest -m slow``): export, serve, ``set_image`` + ``predict``,
the embedding checked against PyTorch; ViT-H's encoder is > 2 GB and must load from ONNX
external data in the python backend. Their figures go to docs/benchmarks.md.
"""

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import mask_iou, prompts_for, real_images

IMAGES = ("chelsea", "retina_crop")


def random_checkpoint(model_type, path, seed=0):
    """segment-anything's builder without a checkpoint, saved as a state dict. The builder
    leaves the absolute and relative position embeddings at zero; they get noise so that the
    export's handling of them (windows padded 64 -> 70, decomposed relative positions) counts."""
    import torch

    from samtriton.export.compat import ensure_reference_imports

    ensure_reference_imports()
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    sam = sam_model_registry[model_type]()
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name or name == "pos_embed":
                p.normal_(0, 0.1)
    torch.save(sam.state_dict(), path)
    return path


def tree_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def export_and_measure(model_type, checkpoint, repo, name):
    """The CLI in a child process: (seconds, peak resident MiB of that process, as it reports
    its own ru_maxrss: RUSAGE_CHILDREN would give the largest child of the whole run)."""
    args = [
        "export",
        "--model-type",
        model_type,
        "--checkpoint",
        str(checkpoint),
        "--allow-unverified",
        "--repository",
        str(repo),
        "--name",
        name,
    ]
    code = (
        "import resource, sys\n"
        "from samtriton.tools.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    peak_kib = int(next(line.split()[1] for line in result.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")))
    return seconds, peak_kib / 1024


class EndToEnd:
    """One model type exported, served, with its PyTorch reference and figures."""

    def __init__(self, model_type, tmp_path_factory):
        from samtriton.export.checkpoints import load_sam

        self.model_type = model_type
        self.name = f"sam_{model_type}"
        work = tmp_path_factory.mktemp(model_type)
        self.checkpoint = random_checkpoint(model_type, work / f"{model_type}_random.pth")
        self.repository = work / "repository"
        export_s, peak_mib = export_and_measure(model_type, self.checkpoint, self.repository, self.name)
        self.figures = {
            "model_type": model_type,
            "export_s": round(export_s, 1),
            "export_peak_rss_mib": round(peak_mib),
            "repository_mib": round(tree_bytes(self.repository) / 2**20, 1),
        }
        self.sam = load_sam(model_type, self.checkpoint, allow_unverified=True)

    def reference(self):
        from segment_anything import SamPredictor

        return SamPredictor(self.sam)

    @property
    def encoder_onnx(self):
        return self.repository / f"{self.name}_encoder" / "1" / "model.onnx"


def process_tree_peak_mib(pid):
    """Sum of the peak resident sizes (VmHWM) of a process and its descendants: the server
    and its python-backend stubs."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            line = next(
                row for row in Path(f"/proc/{current}/status").read_text().splitlines() if row.startswith("VmHWM")
            )
            total += int(line.split()[1])
        except (OSError, StopIteration):
            pass
    return round(total / 1024)


def serve(repository, models=None):
    from samtriton.server import EmbeddedTriton

    return EmbeddedTriton.on_free_ports(repository, models=models, startup_timeout=600)


def record(figures):
    """Figures for docs/benchmarks.md: printed, and appended to $SAMTRITON_VIT_FIGURES if set."""
    print("\nvit figures:", json.dumps(figures))
    if os.environ.get("SAMTRITON_VIT_FIGURES"):
        with open(os.environ["SAMTRITON_VIT_FIGURES"], "a") as f:
            f.write(json.dumps(figures) + "\n")


# --- ViT-B: parity with segment_anything.SamPredictor, in the default suite ---------------


@pytest.fixture(scope="module")
def vit_b(tmp_path_factory):
    return EndToEnd("vit_b", tmp_path_factory)


@pytest.fixture(scope="module")
def vit_b_reference(vit_b):
    """{image: (embedding, {case: reference output})} from segment_anything.SamPredictor."""
    predictor = vit_b.reference()
    out = {}
    images = real_images()
    for name in IMAGES:
        predictor.set_image(images[name])
        results = {}
        for case, prompt in cases(images[name].shape).items():
            results[case] = predictor.predict(**prompt, multimask_output=case == "point")
            if case == "point":
                best = results[case][2][np.argmax(results[case][1])][None]
                results["refinement"] = predictor.predict(**prompt, mask_input=best, multimask_output=False)
        out[name] = (predictor.get_image_embedding().numpy(), results)
    return out


def cases(shape):
    prompts = prompts_for(shape)
    return {case: prompts[case] for case in ("point", "box", "box_and_point")}


def test_vit_b_encoder_graph_matches_pytorch_at_batch_2(vit_b, vit_b_reference):
    """The repository's encoder graph on both images in one batch (dynamic batch axis,
    window padding, relative positions) vs the reference's embeddings."""
    import onnxruntime as ort

    from samtriton.transforms import preprocess

    images = real_images()
    padded, sizes = zip(*(preprocess(images[name]) for name in IMAGES))
    session = ort.InferenceSession(str(vit_b.encoder_onnx), providers=["CPUExecutionProvider"])
    batch = session.run(None, {"image": np.stack(padded), "input_size": np.array(sizes, np.int64)})[0]
    for got, name in zip(batch, IMAGES):
        ref = vit_b_reference[name][0][0]
        scale = max(1.0, float(np.abs(ref).max()))
        diff = float(np.abs(got - ref).max())
        print(f"\nvit_b {name}: ONNX vs PyTorch embedding max abs diff {diff:.2e} (scale {scale:.2f})")
        assert diff <= 1e-3 * scale


def test_vit_b_encoder_has_no_uint8_intermediate(vit_b):
    """TensorRT's ONNX parser takes UINT8 only as a network input or output."""
    from export_graphs import uint8_intermediates

    assert uint8_intermediates(vit_b.encoder_onnx) == []


def test_vit_b_served_matches_segment_anything(vit_b, vit_b_reference):
    from samtriton import SamPredictor

    images = real_images()
    figures = dict(vit_b.figures)
    with serve(vit_b.repository) as server, SamPredictor(server.grpc_url, model=vit_b.name, timeout=600) as predictor:
        for name in IMAGES:
            start = time.perf_counter()
            predictor.set_image(images[name])
            figures[f"set_image_s_{name}"] = round(time.perf_counter() - start, 1)
            embedding, reference = vit_b_reference[name]
            served = predictor.get_image_embedding()
            scale = max(1.0, float(np.abs(embedding).max()))
            assert np.abs(served - embedding).max() <= 1e-3 * scale
            for case, prompt in cases(images[name].shape).items():
                ours = predictor.predict(**prompt, multimask_output=case == "point", return_logits=True)
                _check(name, case, ours, reference[case])
                if case == "point":
                    best = ours[2][np.argmax(ours[1])][None]
                    ours = predictor.predict(**prompt, mask_input=best, multimask_output=False, return_logits=True)
                    _check(name, "refinement", ours, reference["refinement"])
    record(figures)


def _check(name, case, ours, ref):
    logits, scores, low_res = ours
    ref_masks, ref_scores, ref_low_res = ref
    masks = logits > 0.0  # the reference's mask_threshold
    assert masks.shape == ref_masks.shape and low_res.shape == ref_low_res.shape
    diff = float(np.abs(low_res - ref_low_res).max())
    coverage = ref_masks.reshape(len(ref_masks), -1).mean(axis=1)
    # Random weights: masks under 1% of the image (empty ones included) are not compared.
    ious = [mask_iou(a, b) if covered >= 0.01 else None for a, b, covered in zip(masks, ref_masks, coverage)]
    shown = [None if iou is None else round(iou, 4) for iou in ious]
    print(
        f"\nvit_b {name} {case}: low-res logits max abs diff {diff:.1e}, IoU {shown}, "
        f"reference coverage {np.round(coverage, 3)}"
    )
    assert diff <= 1e-2, (name, case, diff)
    assert np.abs(scores - ref_scores).max() <= 1e-3
    for iou in ious:
        if iou is not None:
            assert iou >= 0.99, (name, case, ious, coverage)
    assert (coverage >= 0.01).any(), "random weights gave no mask worth comparing"


# --- ViT-L / ViT-H: export, serve, set_image + predict (slow) -----------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)  # measured alone: 455 s (ViT-L), 441 s (ViT-H) on 2 cores
@pytest.mark.parametrize("model_type", ["vit_l", "vit_h"])
def test_large_vit_exports_serves_and_segments(model_type, tmp_path_factory):
    from samtriton import SamPredictor

    run = EndToEnd(model_type, tmp_path_factory)
    external = Path(str(run.encoder_onnx) + ".data")
    assert external.exists() == (model_type == "vit_h"), "ViT-H (> 2 GB) keeps its weights in external data"
    image = real_images()["chelsea"]
    prompt = prompts_for(image.shape)["point"]
    reference = run.reference()
    start = time.perf_counter()
    reference.set_image(image)
    figures = dict(run.figures, reference_set_image_s=round(time.perf_counter() - start, 1))
    ref_masks, ref_scores, _ = reference.predict(**prompt, multimask_output=True)
    embedding = reference.get_image_embedding().numpy()
    del reference, run.sam  # ViT-H: 2.5 GB the server's encoder needs more
    gc.collect()
    # The encoder and decoder carry the model; the session and AMG stages are the same code
    # for every size (served with ViT-B above) and would only add stub processes' memory.
    models = [f"{run.name}_encoder", f"{run.name}_decoder"]
    with (
        serve(run.repository, models=models) as server,
        SamPredictor(server.grpc_url, model=run.name, session=False, timeout=1200) as predictor,
    ):
        start = time.perf_counter()
        predictor.set_image(image)
        figures["set_image_s"] = round(time.perf_counter() - start, 1)
        masks, scores, logits = predictor.predict(**prompt, multimask_output=True)
        figures["server_peak_rss_mib"] = process_tree_peak_mib(server.process.pid)
        scale = max(1.0, float(np.abs(embedding).max()))
        figures["embedding_max_abs_diff"] = float(np.abs(predictor.get_image_embedding() - embedding).max())
        # As for ViT-B: random weights, so only masks covering >= 1% of the image are compared.
        coverage = ref_masks.reshape(len(ref_masks), -1).mean(axis=1)
        compared = [mask_iou(a, b) for a, b, c in zip(masks, ref_masks, coverage) if c >= 0.01]
        figures["mask_iou_min"] = min(compared) if compared else None
    record(figures)
    assert masks.shape == (3,) + image.shape[:2] and scores.shape == (3,) and logits.shape == (3, 256, 256)
    assert figures["embedding_max_abs_diff"] <= 1e-3 * scale
    assert np.abs(scores - ref_scores).max() <= 1e-3
    assert compared, f"random weights gave no mask worth comparing (coverage {np.round(coverage, 3)})"
    assert figures["mask_iou_min"] >= 0.99, figures
