"""The torch backends (``--encoder-backend torch --decoder-backend torch``) on the CPU device.

On a GPU machine these models run on CUDA (KIND_GPU); here the same code runs on the CPU
(``torch_device="cpu"``: KIND_CPU instances), through a real embedded Triton, against the
untouched reference (mobile_sam loaded separately from the same checkpoint).

Measured here (fp32, CPU, real MobileSAM): every mask IoU >= 0.99999 against the reference,
scores within 1.2e-7; the torch AMG filter keeps exactly the reference's masks, bits equal.
Bounds below say their margin.
"""

import numpy as np
import pytest
import torch

from helpers import as_reference_rgb, mask_iou, prompts_for

MODEL = "msam"


# --- units: no server --------------------------------------------------------------------------


def test_fused_attention_equals_segment_anything_attention():
    """SDPA with the relative-position bias computes segment-anything's own attention
    (window-sized and global-sized inputs, random weights and position tables)."""
    from samtriton.export.compat import ensure_reference_imports

    ensure_reference_imports()
    from segment_anything.modeling.image_encoder import Attention

    from samtriton.server.torch_runtime import use_fused_attention

    torch.manual_seed(0)
    for side in (14, 9):
        reference = Attention(dim=64, num_heads=4, use_rel_pos=True, input_size=(side, side)).eval()
        torch.nn.init.normal_(reference.rel_pos_h, std=0.5)
        torch.nn.init.normal_(reference.rel_pos_w, std=0.5)
        x = torch.randn(3, side, side, 64)
        with torch.no_grad():
            expected = reference(x)
            holder = torch.nn.Module()
            holder.image_encoder = reference
            assert use_fused_attention(holder) == 1
            got = reference(x)
        # Measured 4.8e-7 (fp32 rounding of another summation order); margin ~20x.
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), float((got - expected).abs().max())


def test_pack_bits_is_numpy_packbits():
    from samtriton.server.amg_filter.device import pack_bits

    rng = np.random.default_rng(0)
    for shape in ((3, 5, 7), (2, 8, 8), (1, 13, 1), (0, 4, 4)):
        masks = rng.random(shape) > 0.5
        got = pack_bits(torch.from_numpy(masks)).numpy()
        expected = np.stack([np.packbits(m.reshape(-1)) for m in masks]) if len(masks) else got
        assert got.shape == (shape[0], (shape[1] * shape[2] + 7) // 8)
        np.testing.assert_array_equal(got, expected)


def test_device_embeddings_lru_bounded_in_bytes():
    from samtriton.server.torch_runtime import DeviceEmbeddings

    one = 256 * 64 * 64 * 4
    cache = DeviceEmbeddings(capacity_bytes=2 * one + one // 2)
    sizes = (np.array([1024, 768]), np.array([480, 640]))
    for name in "abc":
        cache.put(name, torch.zeros(1, 256, 64, 64), *sizes)
        assert cache.bytes <= cache.capacity
    assert cache.get("a") is None and cache.get("b") is not None
    cache.put("d", torch.zeros(1, 256, 64, 64), *sizes)  # "b" was used last: "c" goes
    assert set(cache.entries) == {"b", "d"} and cache.bytes == 2 * one


def test_weights_round_trip_through_safetensors(export_sam, reference_sam, tmp_path):
    """The served parts rebuilt from model.safetensors + sam.json compute the reference's
    embedding and masks (no pickle anywhere)."""
    from samtriton.export.torch_weights import DECODER_PARTS, ENCODER_PARTS, architecture_of, write_torch_weights
    from samtriton.server.torch_runtime import TorchDecoder, TorchEncoder, load_sam

    architecture = architecture_of(export_sam, "vit_t")
    write_torch_weights(export_sam, architecture, tmp_path / "encoder", parts=ENCODER_PARTS)
    write_torch_weights(export_sam, architecture, tmp_path / "decoder", parts=DECODER_PARTS)
    encoder_sam, _ = load_sam(str(tmp_path / "encoder"), torch.device("cpu"))
    decoder_sam, _ = load_sam(str(tmp_path / "decoder"), torch.device("cpu"))
    assert encoder_sam.mask_decoder is None and decoder_sam.image_encoder is None  # each holds its parts only

    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.integers(0, 256, (1, 1024, 1024, 3), dtype=np.uint8))
    size = torch.tensor([[1024, 768]])
    got = TorchEncoder(encoder_sam, torch.device("cpu"), "fp32")(image, size)
    with torch.no_grad():
        padded = image.permute(0, 3, 1, 2).float()
        padded[..., 768:] = 0
        expected = reference_sam.image_encoder(reference_sam.preprocess(padded[0, :, :, :768])[None])
    # Measured 2e-6 (another thread count's summation order); margin 50x.
    assert float((got - expected).abs().max()) < 1e-4

    coords = torch.tensor([[[300.0, 400.0]]])
    labels = torch.tensor([[1.0]])
    # The contract's prompts carry SAM's padding point themselves (the reference adds it).
    padded_coords, padded_labels = torch.tensor([[[300.0, 400.0], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]])
    low_res, iou = TorchDecoder(decoder_sam, torch.device("cpu"))(expected, padded_coords, padded_labels)
    with torch.no_grad():
        sparse, dense = reference_sam.prompt_encoder(points=(coords, labels.int()), boxes=None, masks=None)
        ref_masks, ref_iou = reference_sam.mask_decoder(
            image_embeddings=expected,
            image_pe=reference_sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
    # Measured 3e-6 on logits of range ~30 (the AMG decoder's reordered sums); margin 30x.
    assert float((low_res[:, 1:] - ref_masks).abs().max()) < 1e-4
    assert float((iou[:, 1:] - ref_iou).abs().max()) < 1e-5


def test_kept_masks_equal_the_reference_amg_batch(reference_predictor, images):
    """The device filter against mobile_sam's own _process_batch steps on a real batch: the
    same kept masks, stability scores and bits."""
    from mobile_sam.utils.amg import build_point_grid, calculate_stability_score

    from samtriton.server.amg_filter.device import kept_masks

    image = as_reference_rgb(images["chelsea"])
    reference_predictor.set_image(image)
    h, w = image.shape[:2]
    points = build_point_grid(8) * np.array([w, h])
    coords = torch.as_tensor(reference_predictor.transform.apply_coords(points, (h, w)), dtype=torch.float32)
    with torch.no_grad():
        masks, iou, low_res = reference_predictor.predict_torch(
            coords[:, None], torch.ones(len(coords), 1, dtype=torch.int), multimask_output=True, return_logits=True
        )
    thresholds = (0.88, 0.95, 1.0)
    masks, iou = masks.flatten(0, 1), iou.flatten(0, 1)
    index = torch.nonzero(iou > thresholds[0])[:, 0]
    stability = calculate_stability_score(masks[index], reference_predictor.model.mask_threshold, thresholds[2])
    index, stability = index[stability >= thresholds[1]], stability[stability >= thresholds[1]]
    ref_bits = np.stack([np.packbits((masks[i] > 0).numpy().reshape(-1)) for i in index])

    four = torch.cat([low_res[:, :1], low_res], dim=1)  # the decoder's 4 outputs: index 0 unused here
    four_iou = torch.cat([iou.reshape(-1, 3)[:, :1], iou.reshape(-1, 3)], dim=1)
    got = kept_masks(four, four_iou, reference_predictor.input_size, (h, w), thresholds, budget_bytes=64 * 2**20)
    assert len(index) >= 10, "the batch keeps masks"
    np.testing.assert_array_equal(got["kept_index"], index.numpy())
    np.testing.assert_allclose(got["kept_stability_scores"], stability.numpy(), atol=1e-6)
    np.testing.assert_array_equal(got["kept_masks_packed"], ref_bits)
    # Chunks of any size give the same result (the budget only bounds memory).
    small = kept_masks(four, four_iou, reference_predictor.input_size, (h, w), thresholds, budget_bytes=1)
    np.testing.assert_array_equal(small["kept_masks_packed"], ref_bits)


# --- through a real embedded Triton ------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_repository(checkpoint, tmp_path_factory):
    """MobileSAM exported with both torch backends on the CPU device, loaded afresh from the
    checkpoint by the exporter (the reference is another object)."""
    from samtriton.export.exporter import export
    from samtriton.export.repository import RepositoryOptions

    repo = tmp_path_factory.mktemp("torch_repository")
    options = RepositoryOptions(
        name=MODEL, encoder_backend="torch", decoder_backend="torch", torch_device="cpu", amg_instances=1
    )
    export("vit_t", repo, checkpoint=checkpoint, options=options, log=lambda *_: None)
    return repo


@pytest.fixture(scope="module")
def torch_server(torch_repository):
    from samtriton.server import EmbeddedTriton

    with EmbeddedTriton.on_free_ports(torch_repository) as running:
        yield running


def test_repository_holds_safetensors_and_no_onnx(torch_repository):
    from samtriton.export.repository import parse_config

    files = {p.relative_to(torch_repository).as_posix() for p in torch_repository.rglob("*") if p.is_file()}
    assert not any(f.endswith(".onnx") for f in files), "no ONNX graph is needed by the torch backends"
    for model in (f"{MODEL}_encoder", f"{MODEL}_decoder"):
        assert {f"{model}/1/model.safetensors", f"{model}/1/sam.json", f"{model}/1/model.py"} <= files
    encoder = parse_config((torch_repository / f"{MODEL}_encoder" / "config.pbtxt").read_text())
    assert encoder.parameters["torch_precision"].string_value == "fp32"  # MobileSAM's default: fp32
    session = parse_config((torch_repository / f"{MODEL}_session" / "config.pbtxt").read_text())
    assert session.parameters["decoder_in_process"].string_value == "torch"


@pytest.mark.parametrize("mode", ["session", "embedding"])
def test_parity_through_the_server(torch_server, reference_predictor, images, mode):
    from samtriton import SamPredictor

    ious, score_diffs = [], []
    with SamPredictor(torch_server.grpc_url, model=MODEL, session=mode == "session") as predictor:
        for name in ("astronaut", "coins_gray"):
            image = images[name]
            predictor.set_image(image)
            reference_predictor.set_image(as_reference_rgb(image))
            for case, prompt in prompts_for(image.shape).items():
                multimask = case == "point"
                masks, scores, _ = predictor.predict(**prompt, multimask_output=multimask)
                ref_masks, ref_scores, _ = reference_predictor.predict(**prompt, multimask_output=multimask)
                assert masks.shape == ref_masks.shape
                ious += [mask_iou(a, b) for a, b in zip(masks, ref_masks)]
                score_diffs.append(float(np.abs(scores - ref_scores).max()))
    print(f"\n{mode}: {len(ious)} masks, min IoU {min(ious):.6f}, max score diff {max(score_diffs):.2e}")
    # Measured: min IoU 0.99999, score diff 1.2e-7 (fp32 on both sides). Margins: 1e-3 of IoU
    # (a one-pixel shift of a small mask's edge), 100x on scores.
    assert min(ious) >= 0.999
    assert max(score_diffs) <= 1e-5


def test_encoder_model_batches_match_the_reference(torch_server, reference_sam, images):
    """Two images in one request to NAME_encoder (raw uint8, as a throughput client sends
    them) against the reference encoder, image by image."""
    import tritonclient.grpc as grpcclient

    from samtriton.transforms import preprocess

    padded, sizes = zip(*(preprocess(images[name]) for name in ("astronaut", "chelsea")))
    client = grpcclient.InferenceServerClient(torch_server.grpc_url)
    inputs = [
        grpcclient.InferInput("image", [2, 1024, 1024, 3], "UINT8"),
        grpcclient.InferInput("input_size", [2, 2], "INT64"),
    ]
    inputs[0].set_data_from_numpy(np.stack(padded))
    inputs[1].set_data_from_numpy(np.array(sizes, np.int64))
    got = client.infer(f"{MODEL}_encoder", inputs).as_numpy("image_embeddings")
    for index, (image, (h, w)) in enumerate(zip(padded, sizes)):
        with torch.no_grad():
            x = torch.from_numpy(image[:h, :w]).permute(2, 0, 1).float()
            expected = reference_sam.image_encoder(reference_sam.preprocess(x)[None]).numpy()
        # Measured 2e-6; margin 50x.
        assert np.abs(got[index : index + 1] - expected).max() < 1e-4


def test_automatic_masks_equal_the_reference(torch_server, reference_sam, images):
    """SamAutomaticMaskGenerator through the session stage (torch decoder and device filter)
    against mobile_sam's: the same masks, one for one."""
    from mobile_sam import SamAutomaticMaskGenerator as Reference

    from samtriton import SamAutomaticMaskGenerator, SamPredictor

    image = images["coins_gray"]
    settings = dict(points_per_side=8)
    with SamPredictor(torch_server.grpc_url, model=MODEL) as predictor:
        ours = SamAutomaticMaskGenerator(predictor, **settings).generate(image)
    reference = Reference(reference_sam, **settings).generate(as_reference_rgb(image))
    assert reference and len(ours) == len(reference)
    for ref in reference:
        best = max(mask_iou(ref["segmentation"], o["segmentation"]) for o in ours)
        assert best >= 0.999, best  # measured 1.0 for every mask


def test_bad_embedding_is_invalid_input_and_the_server_keeps_serving(torch_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(torch_server.grpc_url)

    def decode(embedding):
        feeds = {
            "image_embeddings": embedding,
            "point_coords": np.array([[[10.0, 10.0]]], np.float32),
            "point_labels": np.ones((1, 1), np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        }
        inputs = []
        for name, value in feeds.items():
            tensor = grpcclient.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return client.infer(f"{MODEL}_decoder", inputs)

    bad = np.zeros((1, 256, 64, 64), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InferenceServerException) as error:
        decode(bad)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "image_embeddings" in error.value.message() and "finite" in error.value.message()
    result = decode(np.zeros((1, 256, 64, 64), np.float32))
    assert result.as_numpy("low_res_masks").shape == (1, 4, 256, 256)
