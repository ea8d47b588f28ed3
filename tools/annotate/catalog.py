"""The images the app serves: a fixed list made at start-up, looked up by name only, so no
request can name a path outside the served files or folders."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List

from PIL import Image

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class UnknownImage(LookupError):
    """A name that is not one of the served images."""


class Catalog:
    def __init__(self, inputs: Iterable[str]):
        self.paths: Dict[str, Path] = {}
        self.sizes: Dict[str, tuple] = {}
        for item in inputs:
            path = Path(item).resolve()
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
            elif path.is_file():
                files = [path]
            else:
                raise ValueError(f"images: no such image or folder: {item}")
            for file in files:
                if file.name in self.paths and self.paths[file.name] == file:
                    continue
                # Output files are named by stem: two images with one stem would share them.
                twin = next((p for p in self.paths.values() if p.stem == file.stem), None)
                if twin is not None:
                    raise ValueError(f"images: two images are named {file.stem!r} ({twin}, {file})")
                self.paths[file.name] = file
        if not self.paths:
            raise ValueError(f"images: no image files ({', '.join(sorted(SUFFIXES))}) in {list(inputs)}")
        for name, file in self.paths.items():
            with Image.open(file) as image:  # the header only
                self.sizes[name] = (image.height, image.width)

    @property
    def names(self) -> List[str]:
        return list(self.paths)

    def path(self, name: str) -> Path:
        if not isinstance(name, str) or name not in self.paths:
            raise UnknownImage(f"image: {name!r} is not one of the served images")
        return self.paths[name]

    def size(self, name: str) -> tuple:
        """(height, width) of a served image."""
        self.path(name)
        return self.sizes[name]

    def describe(self) -> List[dict]:
        return [{"name": n, "height": self.sizes[n][0], "width": self.sizes[n][1]} for n in self.paths]
