"""Checkpoint download (real code path, over a file:// URL here) and ONNX external data."""

import hashlib

import numpy as np
import onnxruntime as ort
import pytest

from samtriton.export import checkpoints, onnx_export


def test_download_verified_checks_sha256(tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(b"\x00\x01" * 5000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target = tmp_path / "cache" / "weights.bin"
    checkpoints.download_verified(source.as_uri(), target, digest)
    assert target.read_bytes() == source.read_bytes()
    other = tmp_path / "cache" / "other.bin"
    with pytest.raises(checkpoints.ChecksumMismatch):
        checkpoints.download_verified(source.as_uri(), other, "0" * 64)
    assert not other.exists() and not list(other.parent.glob("*.part")), "nothing half-written is left"


def test_official_checkpoint_is_found_in_the_cache(checkpoint, monkeypatch):
    monkeypatch.setenv("SAMTRITON_CACHE", str(checkpoint.parent.parent))
    assert checkpoints.official_checkpoint_path("vit_t", download=False) == checkpoint
    with pytest.raises(ValueError, match="model_type"):
        checkpoints.official_checkpoint_path("vit_x")


def test_large_encoder_uses_external_data(export_sam, tmp_path, monkeypatch, images, onnx_files):
    """The ViT-H path (> 2 GB protobuf limit) exercised on MobileSAM with a lowered limit."""
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1024)
    path = onnx_export.export_encoder(export_sam, tmp_path / "model.onnx")
    data = tmp_path / "model.onnx.data"
    assert data.exists() and data.stat().st_size > 20 * 2**20
    assert path.stat().st_size < 2**20, "weights live outside the graph"
    from samtriton.transforms import preprocess

    padded, size = preprocess(images["chelsea"])
    feeds = {"image": padded[None], "input_size": np.array([size], np.int64)}
    external = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    inline = ort.InferenceSession(str(onnx_files[0]), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(external, inline, atol=1e-5)
