"""The real Label Studio (PyPI ``label-studio``) using ``samtriton annotate`` as its ML backend:
project with a brush + keypoint config, the backend connected, a real image uploaded as a
task, an interactive keypoint prediction; the brush mask it returns, decoded by Label Studio's
own SDK, is ``SamPredictor``'s mask for that point.

Label Studio goes in its own virtualenv (it must not touch this one's pins). The test is
opt-in, CI included: on a fresh clone it costs ~260 s (install 189 s, start 55 s, the test
13 s on a 2-core machine), more than the two minutes CI gives it. With the variable set it
fails, never skips, if Label Studio is missing; `SAMTRITON_TEST_LABEL_STUDIO=1 bash
scripts/test.sh` installs it in .venv-ls and runs it, or by hand:

    python -m venv .venv-ls && .venv-ls/bin/pip install label-studio==1.23.2
    SAMTRITON_TEST_LABEL_STUDIO=1 python -m pytest -q -s tests/test_label_studio.py

SAMTRITON_LABEL_STUDIO overrides the ``label-studio`` executable (default .venv-ls/bin/label-studio).
"""

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samtriton.server import free_port, stop_process

from annotate_app import running_app
from helpers import mask_iou, require

ROOT = Path(__file__).resolve().parent.parent
EXECUTABLE = Path(os.environ.get("SAMTRITON_LABEL_STUDIO", ROOT / ".venv-ls" / "bin" / "label-studio"))
CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Person" background="#ff0000"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Person" smart="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Person" smart="true"/></RectangleLabels>
</View>"""

WANTED = os.environ.get("SAMTRITON_TEST_LABEL_STUDIO") == "1"
MISSING = None if EXECUTABLE.exists() else f"Label Studio at {EXECUTABLE} (scripts/test.sh installs it in .venv-ls)"
pytestmark = [
    pytest.mark.skipif(not WANTED, reason="opt-in: SAMTRITON_TEST_LABEL_STUDIO=1 (see the module docstring)"),
    pytest.mark.timeout(900),
]


def _call(base, token, method, path, body=None, files=None):
    headers = {"Authorization": f"Token {token}"}
    if files:  # one multipart file field
        boundary = uuid.uuid4().hex
        name, content = files
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    else:
        data = json.dumps(body).encode() if body is not None else None
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:2000]!r}") from None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    require(MISSING)
    data = tmp_path_factory.mktemp("label-studio")
    port, token = free_port(), secrets.token_hex(20)
    env = {
        **os.environ,
        "LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # The ML backend runs on this machine: Label Studio blocks local addresses by default.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
    }
    log = open(data / "label-studio.log", "w")
    started = time.monotonic()
    process = subprocess.Popen(
        [
            str(EXECUTABLE),
            "start",
            "--no-browser",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--database",
            str(data / "ls.sqlite3"),
            "--username",
            "samtriton@example.com",
            "--password",
            "samtriton-test",
            "--user-token",
            token,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert process.poll() is None, (data / "label-studio.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as response:
                    if json.loads(response.read()).get("status") == "UP":
                        break
            except (OSError, ValueError):
                pass
            assert time.monotonic() - started < 300, "Label Studio did not start in 300 s"
            time.sleep(1)
        print(f"\nLabel Studio {base} up in {time.monotonic() - started:.1f} s")
        yield base, token
    finally:
        stop_process(process, 20)
        log.close()


def test_label_studio_gets_sam_masks_from_the_backend(label_studio, server, predictor, images, tmp_path):
    base, token = label_studio
    photos = tmp_path / "photos"
    photos.mkdir()
    png = photos / "astronaut.png"
    Image.fromarray(images["astronaut"]).save(png)
    with running_app(
        server.grpc_url,
        photos,
        tmp_path / "out",
        tmp_path / "app.log",
        "--label-studio-url",
        base,
        env={"LABEL_STUDIO_API_KEY": token},
    ) as app:
        project = _call(base, token, "POST", "/api/projects", {"title": "samtriton", "label_config": CONFIG})
        # A real image, uploaded to Label Studio: the backend fetches it from there with the token.
        imported = _call(
            base, token, "POST", f"/api/projects/{project['id']}/import", files=("astronaut.png", png.read_bytes())
        )
        assert imported["task_count"] == 1, imported
        (task,) = _call(base, token, "GET", f"/api/tasks?project={project['id']}")["tasks"]
        assert task["data"]["image"].startswith("/data/upload/"), task["data"]
        backend = _call(
            base,
            token,
            "POST",
            "/api/ml",
            {"url": app.url, "project": project["id"], "title": "samtriton", "is_interactive": True},
        )
        assert backend["state"] == "CO", backend  # connected: Label Studio checked /health and /setup
        timings = []
        # Keypoints in percent (the first again at the end), then a rectangle (x, y, width, height in percent).
        for x, y, w, h in ((48.0, 25.0, 0, 0), (30.0, 70.0, 0, 0), (48.0, 25.0, 0, 0), (25.0, 8.0, 55.0, 90.0)):
            if w:
                value, kind, name = (
                    {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": ["Person"]},
                    "rectanglelabels",
                    "rect",
                )
                prompt = dict(box=np.array([x, y, x + w, y + h]) * 5.12)
            else:
                value, kind, name = {"x": x, "y": y, "width": 0.5, "keypointlabels": ["Person"]}, "keypointlabels", "kp"
                prompt = dict(point_coords=np.array([[x * 5.12, y * 5.12]]), point_labels=np.array([1]))
            context = {
                "result": [
                    {
                        "original_width": 512,
                        "original_height": 512,
                        "image_rotation": 0,
                        "value": value,
                        "is_positive": True,
                        "id": uuid.uuid4().hex[:10],
                        "from_name": name,
                        "to_name": "image",
                        "type": kind,
                        "origin": "manual",
                    }
                ]
            }
            start = time.perf_counter()
            answer = _call(
                base,
                token,
                "POST",
                f"/api/ml/{backend['id']}/interactive-annotating",
                {"task": task["id"], "context": context},
            )
            timings.append((time.perf_counter() - start) * 1000)
            assert "errors" not in answer, answer
            (region,) = answer["data"]["result"]
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Person"]
            # Label Studio's own decoder (its SDK, in its virtualenv).
            decoded = subprocess.run(
                [
                    str(EXECUTABLE.parent / "python"),
                    "-c",
                    "import json, sys; from label_studio_sdk.converter.brush import decode_rle; "
                    "print(json.dumps(decode_rle(json.load(sys.stdin)).tolist()))",
                ],
                input=json.dumps(region["value"]["rle"]),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            mask = np.array(json.loads(decoded), dtype=np.uint8).reshape(512, 512, 4)[:, :, 3] > 0
            predictor.set_image(images["astronaut"])
            expected, _, _ = predictor.predict(**prompt, multimask_output=False)
            iou = mask_iou(mask, expected[0])
            print(
                f"{kind} ({x}%, {y}%{f', {w}%, {h}%' if w else ''}): IoU with SamPredictor {iou:.4f}, {int(mask.sum())} px, "
                f"Label Studio round trip {timings[-1]:.0f} ms"
            )
            assert iou >= 0.99
        log = app.log()
        print("\n".join(line for line in log.splitlines() if "label-studio predict" in line))
        # The image was set once: later clicks reuse the embedding kept on the server.
        sets = [line for line in log.splitlines() if "label-studio predict" in line and "set_image_ms=0.0" not in line]
        assert len(sets) == 1, log
