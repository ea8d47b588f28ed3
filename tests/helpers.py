"""Test helpers: real images, mask comparison, and tools CI must have."""

import os
import sys

import numpy as np
import pytest

from samtriton.tools.bench import prompt_cases

# CI (.ci/run runs with CI=true) installs every tool the tests use: there a missing one is a
# failure that names it, never a skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_unless_ci(missing):
    """A skipif mark for a test needing a tool scripts/test.sh installs (``missing``: why it
    is absent, or None). It skips on a developer's machine without the tool, never in CI;
    the test then starts with ``require(missing)``."""
    return pytest.mark.skipif(missing is not None and not IN_CI, reason=str(missing))


def require(missing):
    """Fail the test, naming what is missing (``missing``: why it is absent, or None)."""
    if missing is not None:
        pytest.fail(f"missing: {missing}", pytrace=False)


def real_images():
    """Real photographs and micrographs bundled with scikit-image.

    Includes grayscale images (camera, coins) and a non-square image larger than 1024 px
    (a 1411x1100 crop of retina).
    """
    from skimage import data

    return {
        "astronaut": data.astronaut(),
        "chelsea": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "camera_gray": data.camera(),
        "coins_gray": data.coins(),
        "hubble": data.hubble_deep_field(),
        "retina_crop": np.ascontiguousarray(data.retina()[:, 150:1250]),
    }


def as_reference_rgb(image):
    """What the reference gets: grayscale replicated to 3 channels, as samtriton documents."""
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


class BothMasksEmpty(AssertionError):
    """Two empty masks: their IoU is undefined, and a comparison of nothing proves nothing."""


def mask_iou(a, b):
    """Intersection over union of two binary masks. Two empty masks raise ``BothMasksEmpty``
    (a failed assertion) rather than counting as a perfect match: a test that can meet
    them must handle them explicitly."""
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    if union == 0:
        raise BothMasksEmpty(f"both masks ({a.shape}) are empty: no IoU to compare")
    return float(np.logical_and(a, b).sum() / union)


# Deterministic prompts placed relative to the image size (the GPU check uses the same).
prompts_for = prompt_cases


# What the wire carries without the session model: the float32 embedding (4 MiB) and the
# padded uint8 image (3 MiB).
EMBEDDING_BYTES = 256 * 64 * 64 * 4
PADDED_IMAGE_BYTES = 1024 * 1024 * 3


def successful_requests(server, model):
    """Triton's count of successful inferences of ``model`` on ``server`` (an EmbeddedTriton;
    the statistics extension needs its admin key)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True, headers=server.admin_headers)["model_stats"][0]
    finally:
        client.close()
    return int(stats.get("inference_stats", {}).get("success", {}).get("count", 0))


def server_cache_directory(server, base="mobilesam"):
    """The session cache directory of an ``EmbeddedTriton``: its own ``session_cache_dir``,
    or the default one the session model derives from the server's process."""
    from pathlib import Path

    from samtriton.server.embedding_cache import cache_directory

    if server.session_cache_dir is not None:
        return Path(server.session_cache_dir)
    return Path(cache_directory(str(server.repository / f"{base}_session"), base, server.process.pid))


def serve_command(repository, grpc_port, http_port, metrics_port, *extra):
    """``samtriton serve`` of ``repository`` on these ports (``extra``: more options), as argv."""
    ports = ["--grpc-port", grpc_port, "--http-port", http_port, "--metrics-port", metrics_port]
    return [
        sys.executable,
        "-m",
        "samtriton.tools.cli",
        "serve",
        "--repository",
        *map(str, [repository, *ports, *extra]),
    ]
