"""The torchvision / timm stand-ins: installed only when the real package cannot import."""

import subprocess
import sys
import textwrap

import pytest
import torch

from samtriton.export import compat


def _run(code: str, tmp_path, extra_path=None) -> str:
    env_path = f"import sys; sys.path.insert(0, {str(extra_path)!r})\n" if extra_path else ""
    result = subprocess.run(
        [sys.executable, "-c", env_path + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_compat_used_here_and_reference_packages_import(tmp_path):
    out = _run(
        """
        from samtriton.export.compat import ensure_reference_imports
        used = ensure_reference_imports()
        import segment_anything, mobile_sam, torchvision, timm
        print(used["torchvision"], used["timm"], torchvision.__samtriton_compat__, timm.__samtriton_compat__)
    """,
        tmp_path,
    )
    # This machine has no working torchvision (hence no timm either).
    assert out == "compat compat True True"


def test_real_packages_win(tmp_path):
    fake = tmp_path / "site"
    for package, files in {
        "torchvision": {
            "__init__.py": "REAL = True\n",
            "transforms/__init__.py": "",
            "transforms/functional.py": "def resize(*a): pass\ndef to_pil_image(*a): pass\n",
            "ops/__init__.py": "",
            "ops/boxes.py": "def batched_nms(*a): pass\ndef box_area(*a): pass\n",
        },
        "timm": {
            "__init__.py": "REAL = True\n",
            "models/__init__.py": "",
            "models/layers.py": "DropPath = to_2tuple = trunc_normal_ = None\n",
            "models/registry.py": "def register_model(f): return f\n",
        },
    }.items():
        for name, text in files.items():
            path = fake / package / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    out = _run(
        """
        from samtriton.export.compat import ensure_reference_imports
        used = ensure_reference_imports()
        import torchvision, timm
        print(used["torchvision"], used["timm"], torchvision.REAL, timm.REAL)
    """,
        tmp_path,
        fake,
    )
    assert out == "real real True True"


def test_broken_torchvision_is_replaced(tmp_path):
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    out = _run(
        """
        from samtriton.export.compat import ensure_reference_imports
        print(ensure_reference_imports()["torchvision"])
        import segment_anything
        from segment_anything.utils.transforms import ResizeLongestSide
        import numpy as np
        print(ResizeLongestSide(1024).apply_image(np.zeros((10, 20, 3), np.uint8)).shape)
    """,
        tmp_path,
        tmp_path / "site",
    )
    assert out.splitlines() == ["compat", "(512, 1024, 3)"]


@pytest.mark.unit
def test_batched_nms_hand_computed():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 9, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6])
    categories = torch.tensor([0, 0, 0, 1, 0])
    # Box 1 overlaps box 0 with IoU 81/119 = 0.68 > 0.5: dropped. Box 4 overlaps box 0 with
    # IoU 0.9: dropped. Box 3 equals box 0 but is another category: kept. Order: by score.
    keep = compat.batched_nms(boxes, scores, categories, 0.5)
    assert keep.tolist() == [3, 0, 2]
    assert compat.batched_nms(boxes, scores, categories, 0.95).tolist() == [3, 0, 1, 2, 4]
    assert compat.batched_nms(boxes[:0], scores[:0], categories[:0], 0.5).tolist() == []
    assert compat.box_area(boxes).tolist() == [100, 100, 100, 100, 90]


@pytest.mark.unit
def test_resize_matches_pil_bilinear():
    import numpy as np
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    out = np.array(compat.resize(compat.to_pil_image(image), [70, 100]))
    np.testing.assert_array_equal(out, np.array(Image.fromarray(image).resize((100, 70), Image.BILINEAR)))
