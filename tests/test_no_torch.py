"""The client in a fresh virtual environment without torch: import and a full predict."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_and_predict_without_torch(server, tmp_path, images):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True, timeout=900)
    np_path = tmp_path / "image.npy"
    import numpy as np

    np.save(np_path, images["coffee"])
    script = textwrap.dedent(f"""
        import importlib.util, sys
        assert importlib.util.find_spec("torch") is None, "this venv must not have torch"
        import numpy as np
        import samtriton
        from samtriton import SamPredictor
        p = SamPredictor({server.grpc_url!r}, model="mobilesam")
        p.set_image(np.load({str(np_path)!r}))
        masks, scores, logits = p.predict(point_coords=np.array([[300, 180]]), point_labels=np.array([1]))
        assert masks.shape == (3, 400, 600) and masks.dtype == bool and masks.any()
        from samtriton import SamAutomaticMaskGenerator
        records = SamAutomaticMaskGenerator(p, points_per_side=4).generate(np.load({str(np_path)!r}))
        assert records and records[0]["segmentation"].shape == (400, 600)
        assert "torch" not in sys.modules and "torchvision" not in sys.modules
        print("ok", scores.round(3).tolist(), len(records))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_import_samtriton_does_not_import_torch():
    code = (
        "import sys, samtriton, samtriton.predictor, samtriton.transforms, samtriton.tools.cli; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
