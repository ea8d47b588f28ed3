"""Official SAM / MobileSAM checkpoints: where they live, how to fetch, verify and load them.

Checkpoints are always loaded with ``torch.load(..., weights_only=True)``: no pickle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class OfficialCheckpoint:
    model_type: str
    url: str
    sha256: str
    filename: str
    package: str  # which reference package builds this architecture


OFFICIAL_CHECKPOINTS = {
    c.model_type: c
    for c in (
        OfficialCheckpoint(
            "vit_h",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            "sam_vit_h_4b8939.pth",
            "segment_anything",
        ),
        OfficialCheckpoint(
            "vit_l",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            "sam_vit_l_0b3195.pth",
            "segment_anything",
        ),
        OfficialCheckpoint(
            "vit_b",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            "sam_vit_b_01ec64.pth",
            "segment_anything",
        ),
        OfficialCheckpoint(
            "vit_t",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            "mobile_sam.pt",
            "mobile_sam",
        ),
    )
}


class ChecksumMismatch(ValueError):
    pass


def cache_dir() -> Path:
    """Where downloaded checkpoints live: $SAMTRITON_CACHE or ~/.cache/samtriton."""
    root = os.environ.get("SAMTRITON_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "samtriton"
    )
    return Path(root) / "checkpoints"


def sha256_of(path: os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: os.PathLike, expected_sha256: str) -> None:
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ChecksumMismatch(f"checkpoint {path}: sha256 {actual} does not match the expected {expected_sha256}")


def official_checkpoint_path(model_type: str, download: bool = True) -> Path:
    """The cached official checkpoint for ``model_type``, downloaded and verified if needed."""
    official = _official(model_type)
    path = cache_dir() / official.filename
    if path.exists():
        verify(path, official.sha256)
        return path
    if not download:
        raise FileNotFoundError(f"{path} is not cached; run without --no-download to fetch it")
    download_verified(official.url, path, official.sha256)
    return path


def download_verified(url: str, destination: Path, expected_sha256: str) -> None:
    """Download to a temporary file with a progress bar, verify, then move into place."""
    from tqdm import tqdm

    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        verify(tmp, expected_sha256)
        shutil.move(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _official(model_type: str) -> OfficialCheckpoint:
    try:
        return OFFICIAL_CHECKPOINTS[model_type]
    except KeyError:
        raise ValueError(f"model_type must be one of {sorted(OFFICIAL_CHECKPOINTS)}, got {model_type!r}") from None


def load_sam(model_type: str, checkpoint: Optional[os.PathLike] = None, allow_unverified: bool = False):
    """Build the reference ``Sam`` model for ``model_type`` and load weights without pickle.

    With no ``checkpoint`` the official one is downloaded (or taken from the cache). A given
    checkpoint must have the official sha256 of ``model_type`` unless ``allow_unverified``
    (fine-tuned weights); a mismatch raises ``ChecksumMismatch``.
    """
    import torch

    from .compat import ensure_reference_imports

    official = _official(model_type)
    if checkpoint is None:
        checkpoint = official_checkpoint_path(model_type)
    elif not allow_unverified:
        try:
            verify(checkpoint, official.sha256)
        except ChecksumMismatch as exc:
            raise ChecksumMismatch(
                f"{exc}: not the official {model_type} checkpoint; pass --allow-unverified "
                "(allow_unverified=True) to export other weights"
            ) from None
    ensure_reference_imports()
    if official.package == "mobile_sam":
        from mobile_sam import sam_model_registry
    else:
        from segment_anything import sam_model_registry
    sam = sam_model_registry[model_type](checkpoint=None)
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sam.load_state_dict(state_dict)
    return sam.eval()
