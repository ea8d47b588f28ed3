"""Hugging Face transformers SamModel checkpoints: a small random SamModel of a non-standard
size, saved with ``save_pretrained``, exported by ``samtriton export --checkpoint DIR``
(no --model-type: the architecture comes from config.json), served on the embedded Triton
and compared with transformers' own SamModel + post_process_masks on the same weights.

Acceptance: mask IoU >= 0.99, IoU scores within 1e-3, for a point, a box and several boxes
in one request.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import mask_iou, real_images

try:  # the test extras install it: a missing reference fails the run, it is not skipped
    import transformers  # noqa: F401
except ImportError as exc:
    raise ImportError("transformers is missing (the HF reference): pip install -e '.[test]'") from exc

NAME = "hfsam"
IMAGES = ("chelsea", "astronaut")


def small_config():
    """Non-standard on purpose: 3 ViT layers of width 96, window 12 (64 tokens padded to
    72), a 4-layer IoU head of width 128: only config.json can tell the exporter."""
    from transformers import SamConfig

    return SamConfig(
        vision_config=dict(
            hidden_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            window_size=12,
            global_attn_indexes=[1],
            mlp_dim=200,
        ),
        mask_decoder_config=dict(num_hidden_layers=2, mlp_dim=512, iou_head_depth=4, iou_head_hidden_dim=128),
    )


def randomize(model, seed=0):
    """Random weights of a working scale everywhere: transformers initializes the vision
    encoder at 1e-10 and relative positions at zero, which would leave paths untested."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("positional_embedding"):
                continue  # already Gaussian, as SAM's
            if "rel_pos" in name or "pos_embed" in name:
                p.copy_(0.1 * noise)
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.02 * noise)
            else:
                p.copy_(noise / np.sqrt(p[0].numel()))
    return model.eval()


def image_processor(directory=None):
    """transformers' SAM image processor without torchvision (the PIL one where it exists)."""
    from transformers.models import sam

    cls = getattr(sam, "SamImageProcessorPil", None) or sam.SamImageProcessor
    return cls.from_pretrained(directory) if directory else cls()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import SamModel, SamProcessor

    directory = tmp_path_factory.mktemp("hf_sam")
    randomize(SamModel(small_config())).save_pretrained(directory)
    SamProcessor(image_processor=image_processor()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_reference(hf_dir):
    from transformers import SamModel, SamProcessor

    return SamModel.from_pretrained(hf_dir).eval(), SamProcessor(image_processor=image_processor(hf_dir))


@pytest.fixture(scope="module")
def hf_server(hf_dir, tmp_path_factory):
    from samtriton.server import EmbeddedTriton
    from samtriton.tools.cli import main

    repo = tmp_path_factory.mktemp("hf_repository")
    assert (
        main(["export", "--checkpoint", str(hf_dir), "--repository", str(repo), "--name", NAME, "--reference-decoder"])
        == 0
    )
    metadata = json.loads((repo / f"{NAME}.export.json").read_text())
    assert metadata["model_type"] == "hf_sam" and metadata["architecture"]["hidden_size"] == 96
    with EmbeddedTriton.on_free_ports(repo) as server:
        yield server


def reference_predict(hf_reference, image, points=None, boxes=None, multimask=True):
    """transformers: masks (P, C, H, W) bool and IoU scores (P, C) for P prompts."""
    import torch

    model, processor = hf_reference
    inputs = processor(images=image, input_points=points, input_boxes=boxes, return_tensors="pt")
    with torch.no_grad():
        out = model(
            pixel_values=inputs["pixel_values"],
            input_points=inputs.get("input_points"),
            input_boxes=inputs.get("input_boxes"),
            multimask_output=multimask,
        )
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    return masks[0].numpy(), out.iou_scores[0].numpy()


def cases(shape):
    h, w = shape[:2]
    point = np.array([[0.5 * w, 0.45 * h]])
    box = np.array([0.25 * w, 0.2 * h, 0.75 * w, 0.8 * h])
    boxes = np.array([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], box, [0.4 * w, 0.3 * h, 0.95 * w, 0.9 * h]])
    return point, box, boxes


@pytest.fixture(scope="module")
def comparisons(hf_server, hf_reference):
    """{(image, case): (ious, score differences)} for a point, a box and three boxes at once."""
    from samtriton import SamPredictor

    results = {}
    images = real_images()
    with SamPredictor(hf_server.grpc_url, model=NAME) as predictor:
        for name in IMAGES:
            image = images[name]
            point, box, boxes = cases(image.shape)
            predictor.set_image(image)
            ours = predictor.predict(point_coords=point, point_labels=np.array([1]), multimask_output=True)
            ref = reference_predict(hf_reference, image, points=[[point.tolist()]], multimask=True)
            results[name, "point"] = _compare(ours[0][None], ours[1][None], *ref)
            ours = predictor.predict(box=box, multimask_output=False)
            ref = reference_predict(hf_reference, image, boxes=[[box.tolist()]], multimask=False)
            results[name, "box"] = _compare(ours[0][None], ours[1][None], *ref)
            ours = predictor.predict_batch(boxes=boxes, multimask_output=False)
            ref = reference_predict(hf_reference, image, boxes=[boxes.tolist()], multimask=False)
            results[name, "boxes"] = _compare(ours[0], ours[1], *ref)
    return results


def _compare(masks, scores, ref_masks, ref_scores):
    assert masks.shape == ref_masks.shape, (masks.shape, ref_masks.shape)
    ious = [
        mask_iou(a, b) for a, b in zip(masks.reshape(-1, *masks.shape[-2:]), ref_masks.reshape(-1, *masks.shape[-2:]))
    ]
    return np.array(ious), np.abs(scores - ref_scores).ravel(), ref_masks.reshape(len(ious), -1).mean(axis=1)


@pytest.mark.parametrize("case", ["point", "box", "boxes"])
def test_served_hf_model_matches_transformers(comparisons, case):
    for name in IMAGES:
        ious, score_diffs, coverage = comparisons[name, case]
        assert ious.min() >= 0.99, (name, case, ious, coverage)
        assert score_diffs.max() <= 1e-3, (name, case, score_diffs)
    # Random weights must still give masks worth comparing: neither empty nor the whole image.
    coverage = np.concatenate([comparisons[name, case][2] for name in IMAGES])
    assert ((coverage > 0.01) & (coverage < 0.99)).any(), coverage


def test_reference_decoder_is_written_beside_the_repository(hf_server):
    """--reference-decoder: REPOSITORY/NAME_reference_decoder.onnx, masks at orig_im_size."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(hf_server.repository / f"{NAME}_reference_decoder.onnx"), providers=["CPUExecutionProvider"]
    )
    masks, scores, low_res = session.run(
        None,
        {
            "image_embeddings": np.zeros((1, 256, 64, 64), np.float32),
            "point_coords": np.array([[[300.0, 200.0], [0.0, 0.0]]], np.float32),
            "point_labels": np.array([[1, -1]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([300, 451], np.float32),
        },
    )
    assert masks.shape == (1, 4, 300, 451) and scores.shape == (1, 4) and low_res.shape == (1, 4, 256, 256)


def test_pytorch_model_bin_gives_the_same_weights(hf_dir, tmp_path):
    """pytorch_model.bin (loaded with weights_only=True) converts as model.safetensors does."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from samtriton.export.hf import load_hf_sam

    shutil.copy(hf_dir / "config.json", tmp_path / "config.json")
    torch.save(load_file(str(hf_dir / "model.safetensors")), tmp_path / "pytorch_model.bin")
    a, b = load_hf_sam(hf_dir).state_dict(), load_hf_sam(tmp_path).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_config_outside_the_contract_is_refused(hf_dir, tmp_path):
    import shutil

    from samtriton.tools.cli import main

    config = json.loads((hf_dir / "config.json").read_text())
    config["vision_config"]["output_channels"] = 128
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    shutil.copy(hf_dir / "model.safetensors", tmp_path / "model" / "model.safetensors")
    with pytest.raises(ValueError, match=r"vision_config.output_channels must be 256"):
        from samtriton.export.hf import read_config

        read_config(tmp_path / "model")
    assert main(["export", "--checkpoint", str(tmp_path / "model"), "--repository", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_hf_model_resolves_through_the_hub_cache(hf_dir, tmp_path):
    """--hf-model goes through huggingface_hub.snapshot_download; offline it resolves a cached
    snapshot, laid out here as the hub cache lays it out."""
    import shutil

    snapshot = tmp_path / "hub" / "models--samtriton-test--tiny-sam" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "processor_config.json"):
        shutil.copy(hf_dir / name, snapshot / name)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    code = (
        "from samtriton.export.hf import download_hf_model, load_hf_sam\n"
        "path = download_hf_model('samtriton-test/tiny-sam')\n"
        "sam = load_hf_sam(path)\n"
        "print(path, sam.image_encoder.blocks[0].attn.qkv.in_features)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(snapshot), "96"]


def test_hf_model_not_reachable_is_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty_hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "samtriton.tools.cli",
            "export",
            "--hf-model",
            "samtriton-test/absent",
            "--repository",
            str(tmp_path / "r"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("samtriton export: --hf-model samtriton-test/absent:"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
