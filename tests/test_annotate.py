"""``samtriton annotate``: the web app on the real embedded server, driven through its HTTP
API and through a real headless Chromium; masks checked against ``SamPredictor``."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from annotate_app import chromium, chromium_missing, click_image, drag_box, prompt, running_app, wait_for
from helpers import mask_iou, require, skip_unless_ci

FACE = (245.0, 130.0)  # the astronaut's face, in image pixels


@pytest.fixture(scope="module")
def folders(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("annotate")
    served = root / "photos"
    served.mkdir()
    Image.fromarray(images["astronaut"]).save(served / "astronaut.png")
    Image.fromarray(images["chelsea"]).save(served / "chelsea.jpg", quality=95)
    (root / "secret.txt").write_text("outside the served folder")
    return root


@pytest.fixture(scope="module")
def app(server, folders):
    with running_app(
        server.grpc_url, folders / "photos", folders / "out", folders / "app.log", "--points-per-side", "8"
    ) as running:
        yield running


def _mask_of(out, obj):
    return np.asarray(Image.open(out / obj["mask"])) > 0


def test_bad_input_gets_4xx_with_a_clear_message(app, folders):
    point = {"x": 10, "y": 10, "label": 1}
    cases = [
        (
            "POST",
            "/api/predict",
            {"image": "nope.png", "points": [point]},
            None,
            404,
            "'nope.png' is not one of the served images",
        ),
        ("POST", "/api/predict", None, b"{not json", 400, "body: expected a JSON object"),
        (
            "POST",
            "/api/predict",
            {"image": "astronaut.png", "points": [{"x": 600, "y": 10, "label": 1}]},
            None,
            400,
            "points[0].x: expected 0 <= x <= 512",
        ),
        (
            "POST",
            "/api/predict",
            {"image": "astronaut.png", "points": [{"x": 5, "y": -1, "label": 1}]},
            None,
            400,
            "points[0].y: expected 0 <= y <= 512",
        ),
        (
            "POST",
            "/api/predict",
            {"image": "astronaut.png", "points": [{"x": 5, "y": 5, "label": 7}]},
            None,
            400,
            "points[0].label: expected 1 (foreground) or 0 (background)",
        ),
        ("POST", "/api/predict", {"image": "astronaut.png", "points": "5,5"}, None, 400, "points: expected a list"),
        (
            "POST",
            "/api/predict",
            {"image": "astronaut.png", "box": [50, 50, 10, 10]},
            None,
            400,
            "box: expected x0 < x1 and y0 < y1",
        ),
        ("POST", "/api/predict", {"image": "astronaut.png"}, None, 400, "expected at least one point or a box"),
        (
            "POST",
            "/api/predict",
            {"image": "astronaut.png", "points": [point], "refine": {"id": "x", "index": 0}},
            None,
            404,
            "no recent prediction 'x'",
        ),
        ("POST", "/api/predict", None, b"[1, 2]", 400, "body: expected a JSON object, got list"),
        ("POST", "/api/objects", {"image": "astronaut.png", "label": "x"}, None, 400, "mask: expected"),
        (
            "POST",
            "/api/objects",
            {"image": "../secret.txt", "label": "x", "mask": {"id": "a", "index": 0}},
            None,
            404,
            "'../secret.txt' is not one of the served images",
        ),
        ("GET", "/api/objects?image=../secret.txt", None, None, 404, "is not one of the served images"),
        ("DELETE", "/api/objects?image=astronaut.png&id=abc", None, None, 400, "id: expected an object number"),
        ("GET", "/images/..%2Fsecret.txt", None, None, 404, "'../secret.txt' is not one of the served images"),
        ("GET", "/images/%2Fetc%2Fpasswd", None, None, 404, "'/etc/passwd' is not one of the served images"),
        (
            "POST",
            "/predict",
            {
                "tasks": [{"data": {"image": "/etc/passwd"}}],
                "label_config": "<View/>",
                "params": {"context": {"result": []}},
            },
            None,
            400,
            "label_config: expected a <BrushLabels>",
        ),
    ]
    for method, path, body, raw, status, message in cases:
        got, answer = app.request(method, path, body, raw)
        assert (got, message in answer.get("error", "")) == (status, True), (path, body, raw, got, answer)
    # A file outside the served folder is never served: not by name, not by a path through static/.
    got, _ = app.request("GET", "/static/../../secret.txt")
    assert got == 404
    assert not (folders / "out" / "coco.json").exists(), "nothing was accepted or exported"


def test_label_studio_predict_matches_sam_predictor(app, predictor, images):
    """The ML backend protocol over HTTP: a keypoint in percent in, a brush RLE out that decodes
    to SamPredictor's mask for that point."""
    from samtriton.tools.annotate.label_studio import brush_decode

    config = (
        '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        '<Label value="Person"/></BrushLabels><KeyPointLabels name="kp" toName="image" smart="true">'
        '<Label value="Person"/></KeyPointLabels></View>'
    )
    x, y = 48.0, 25.0  # percent
    context = {
        "result": [
            {
                "type": "keypointlabels",
                "original_width": 512,
                "original_height": 512,
                "value": {"x": x, "y": y, "width": 1, "keypointlabels": ["Person"]},
                "is_positive": True,
                "from_name": "kp",
                "to_name": "image",
            }
        ]
    }
    body = {
        "tasks": [{"id": 1, "data": {"image": app.url + "/images/astronaut.png"}}],
        "label_config": config,
        "params": {"context": context},
    }
    assert app.request("GET", "/health") == (200, {"status": "UP", "model_class": "samtriton"})
    assert app.request("POST", "/setup", {"project": "1.1", "schema": config})[0] == 200
    status, answer = app.request("POST", "/predict", body)
    assert status == 200, answer
    region = answer["results"][0]["result"][0]
    assert region["type"] == "brushlabels" and region["from_name"] == "tag" and region["to_name"] == "image"
    assert region["value"]["brushlabels"] == ["Person"] and region["value"]["format"] == "rle"
    mask = brush_decode(region["value"]["rle"], 512, 512)
    predictor.set_image(images["astronaut"])
    expected, _, _ = predictor.predict(
        point_coords=np.array([[x * 512 / 100, y * 512 / 100]]), point_labels=np.array([1]), multimask_output=False
    )
    assert mask_iou(mask, expected[0]) >= 0.99
    # No prompt (the task was just opened): an empty result, not an error.
    status, answer = app.request("POST", "/predict", {**body, "params": {"context": None}})
    assert status == 200 and answer["results"][0]["result"] == []


def test_brush_rle_is_label_studios():
    """Bytes of label_studio_sdk.converter.brush.mask2rle for this mask (recorded from
    label-studio 1.23.2's SDK 2.1.2), and the decoder's inverse on random masks."""
    from samtriton.tools.annotate.label_studio import brush_decode, brush_rle

    mask = np.zeros((7, 9), bool)
    mask[2:5, 3:8] = True
    mask[6, 0] = True
    assert brush_rle(mask) == [
        0,
        0,
        0,
        252,
        57,
        27,
        254,
        83,
        0,
        194,
        127,
        247,
        192,
        48,
        159,
        253,
        240,
        12,
        39,
        255,
        137,
        192,
        35,
        255,
        195,
        224,
        0,
    ]
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (33, 17), (300, 300)):
        for m in (rng.random(shape) > 0.5, np.ones(shape, bool), np.zeros(shape, bool)):
            assert (brush_decode(brush_rle(m), *shape) == m).all()


@skip_unless_ci(chromium_missing())
def test_browser_click_box_accept_export_reload(app, folders, predictor, images):
    from pycocotools import mask as mask_utils

    require(chromium_missing())
    out = folders / "out"
    driver = chromium()
    try:
        driver.get(app.url + "/")
        wait_for(driver, "document.body.dataset.ready === '1'", what="the page")
        assert driver.execute_script("return window.annotator.images.map(i => i.name)") == [
            "astronaut.png",
            "chelsea.jpg",
        ]
        # Moving through the folder and back.
        driver.find_element("id", "next").click()
        wait_for(driver, "window.annotator.index === 1 && window.annotator.width === 451", what="chelsea")
        driver.find_element("id", "prev").click()
        wait_for(driver, "window.annotator.index === 0 && window.annotator.width === 512", what="astronaut")

        # 1. A click on her face: the overlay appears; the mask is SamPredictor's.
        page = prompt(driver, click_image, *FACE)
        (point,) = page["points"]
        assert point["label"] == 1 and abs(point["x"] - FACE[0]) < 2 and abs(point["y"] - FACE[1]) < 2
        painted = driver.execute_script(
            "const c = document.getElementById('mask-layer'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4)"
            " if (d[i]) n++; return n;"
        )
        assert painted > 500, "the overlay shows the mask"
        assert "click:" in driver.find_element("id", "rtt").text and " ms" in driver.find_element("id", "rtt").text
        predictor.set_image(images["astronaut"])
        masks, scores, _ = predictor.predict(
            point_coords=np.array([[point["x"], point["y"]]]), point_labels=np.array([1]), multimask_output=True
        )
        assert len(page["pred"]["masks"]) == 3 and page["candidate"] == int(np.argmax(scores))
        # Cycling the three candidates comes back to the best one.
        seen = set()
        for _ in range(3):
            driver.find_element("id", "cycle").click()
            seen.add(driver.execute_script("return window.annotator.candidate"))
        assert seen == {0, 1, 2}
        # Undo takes back a prompt; the mask of the face is back.
        prompt(driver, click_image, 100, 400, background=True)
        driver.find_element("id", "undo").click()
        assert driver.execute_script("return window.annotator.points.length") == 1
        label = driver.find_element("id", "label")
        label.clear()
        label.send_keys("face")
        driver.find_element("id", "accept").click()
        wait_for(driver, "window.annotator.objects.length === 1", what="the accepted face")
        record = json.loads((out / "annotations" / "astronaut.png.json").read_text())
        (face,) = record["objects"]
        assert face["label"] == "face"
        assert mask_iou(_mask_of(out, face), masks[int(np.argmax(scores))]) >= 0.99
        assert (out / face["cutout"]).exists()

        # 2. A box, then a background click (refining the box's mask), accepted with a label.
        page = prompt(driver, drag_box, 150, 40, 400, 505)
        box = page["box"]
        assert page["points"] == [] and box[0] < 160 and box[2] > 390
        page = prompt(driver, click_image, 380, 480, background=True)
        (bg,) = page["points"]
        assert bg["label"] == 0 and page["box"] == box
        first, _, logits = predictor.predict(box=np.array(box), multimask_output=False)
        refined, _, _ = predictor.predict(
            point_coords=np.array([[bg["x"], bg["y"]]]),
            point_labels=np.array([0]),
            box=np.array(box),
            mask_input=logits[0][None],
            multimask_output=False,
        )
        label.clear()
        label.send_keys("astronaut")
        driver.find_element("id", "accept").click()
        wait_for(driver, "window.annotator.objects.length === 2", what="the accepted astronaut")
        objects = json.loads((out / "annotations" / "astronaut.png.json").read_text())["objects"]
        assert [o["label"] for o in objects] == ["face", "astronaut"]
        assert mask_iou(_mask_of(out, objects[1]), refined[0]) >= 0.99

        # 3. Automatic masks: accept the first, drop the second.
        driver.find_element("id", "auto").click()
        wait_for(
            driver,
            "window.annotator.auto && window.annotator.auto.masks.length >= 2",
            timeout=120,
            what="automatic masks",
        )
        label.clear()
        label.send_keys("auto")
        count = len(driver.find_elements("css selector", "#auto-list .auto-mask"))
        driver.find_element("css selector", '#auto-list [data-index="1"] .drop-auto').click()
        driver.find_element("css selector", '#auto-list [data-index="0"] .accept-auto').click()
        wait_for(driver, "window.annotator.objects.length === 3", what="the accepted automatic mask")
        assert len(driver.find_elements("css selector", "#auto-list .auto-mask")) == count - 2

        # 4. Export: pycocotools decodes every annotation to the stored mask.
        driver.find_element("id", "export").click()
        wait_for(driver, "document.getElementById('status').textContent.startsWith('exported')", what="export")
        coco = json.loads((out / "coco.json").read_text())
        assert [c["name"] for c in coco["categories"]] == ["face", "astronaut", "auto"]
        objects = json.loads((out / "annotations" / "astronaut.png.json").read_text())["objects"]
        assert len(coco["annotations"]) == 3
        for annotation, obj in zip(coco["annotations"], objects):
            decoded = mask_utils.decode(annotation["segmentation"]).astype(bool)
            assert (decoded == _mask_of(out, obj)).all()
            assert annotation["area"] == int(decoded.sum()) and annotation["image_id"] == 1
            cut = np.asarray(Image.open(out / obj["cutout"]))
            assert cut.shape == (512, 512, 4) and ((cut[..., 3] > 0) == decoded).all()

        # 5. Reload: the accepted objects are still there, drawn and listed.
        driver.refresh()
        wait_for(
            driver,
            "document.body.dataset.ready === '1' && window.annotator.objects.length === 3",
            what="the objects after a reload",
        )
        assert [li.text.split(" (")[0] for li in driver.find_elements("css selector", "#objects li")] == [
            "face",
            "astronaut",
            "auto",
        ]
    finally:
        driver.quit()
    log = app.log()
    assert "click image=astronaut.png points=1 box=False" in log and "predict_ms=" in log


def test_accepted_objects_survive_a_killed_app(server, folders, tmp_path):
    """Objects are on disk when the accept returns: after kill -9, a new app lists them; delete
    removes an object and its files."""
    out = tmp_path / "out"
    with running_app(server.grpc_url, folders / "photos", out, tmp_path / "first.log") as first:
        status, pred = first.request(
            "POST", "/api/predict", {"image": "chelsea.jpg", "points": [{"x": 180, "y": 120, "label": 1}]}
        )
        assert status == 200, pred
        for label, index in (("cat", pred["best"]), ("other", (pred["best"] + 1) % 3)):
            status, answer = first.request(
                "POST",
                "/api/objects",
                {"image": "chelsea.jpg", "label": label, "mask": {"id": pred["id"], "index": index}},
            )
            assert status == 201, answer
        first.process.kill()
        first.process.wait()
    with running_app(server.grpc_url, folders / "photos", out, tmp_path / "second.log") as second:
        status, listed = second.request("GET", "/api/objects?image=chelsea.jpg")
        assert status == 200 and [o["label"] for o in listed["objects"]] == ["cat", "other"]
        assert sum(listed["objects"][0]["runs"][1::2]) == listed["objects"][0]["area"] > 0
        other = listed["objects"][1]
        assert second.request("DELETE", f"/api/objects?image=chelsea.jpg&id={other['id']}") == (
            200,
            {"deleted": other["id"]},
        )
        assert not (out / other["mask"]).exists() and not (out / other["cutout"]).exists()
        assert [o["label"] for o in second.request("GET", "/api/objects?image=chelsea.jpg")[1]["objects"]] == ["cat"]
        assert second.request("DELETE", f"/api/objects?image=chelsea.jpg&id={other['id']}")[0] == 404
    # Only --out was written: the served folder holds the two photos, nothing else.
    assert sorted(p.name for p in (folders / "photos").iterdir()) == ["astronaut.png", "chelsea.jpg"]


def test_beyond_loopback_every_request_needs_the_token(server, folders, tmp_path):
    """Bound to every interface (reached here through loopback): without the token, 401 on
    the page, the API and the Label Studio backend; with it (a browser's Basic auth, Label
    Studio's ML backend basic auth, or Bearer) the page works in Chromium."""
    import base64

    token = "t0ken-for-the-annotation-app"
    basic = {"Authorization": "Basic " + base64.b64encode(f"annotator:{token}".encode()).decode()}
    with running_app(
        server.grpc_url,
        folders / "photos",
        tmp_path / "out",
        tmp_path / "app.log",
        "--host",
        "0.0.0.0",
        env={"SAMTRITON_ANNOTATE_TOKEN": token},
        headers=basic,
    ) as app:
        wrong = {"Authorization": "Basic " + base64.b64encode(b"annotator:not-the-token-at-all").decode()}
        for path, method in (("/", "GET"), ("/api/images", "GET"), ("/health", "GET"), ("/predict", "POST")):
            for headers in ({}, wrong, {"Authorization": "Bearer nope"}):
                status, body = app.request(method, path, body={} if method == "POST" else None, headers=headers)
                assert status == 401 and "access token" in body["error"], (path, headers, status)
        assert app.request("GET", "/api/images")[0] == 200
        assert app.request("GET", "/api/images", headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert token not in app.log(), "a given token is never printed"

        require(chromium_missing())
        driver = chromium()
        try:
            driver.get(app.url + "/")
            time.sleep(1)  # the page would have loaded by now: the browser is held at its Basic prompt
            assert driver.execute_script("return window.annotator === undefined && !document.body.dataset.ready")
            # What a person's answer to the browser's Basic prompt does: the header on every request.
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": basic})
            driver.get(app.url + "/")
            wait_for(driver, "document.body.dataset.ready === '1'", what="the page")
            page = prompt(driver, click_image, *FACE)
            assert len(page["pred"]["masks"]) == 3, "a click works with the token"
        finally:
            driver.quit()


def test_loopback_stays_open_and_a_short_token_is_refused(server, folders, tmp_path):
    with running_app(server.grpc_url, folders / "photos", tmp_path / "out", tmp_path / "app.log") as app:
        assert app.request("GET", "/api/images")[0] == 200
    result = subprocess.run(
        [sys.executable, "-m", "samtriton.tools.cli", "annotate", str(folders / "photos"), "--url", server.grpc_url,
         "--out", str(tmp_path / "out2"), "--host", "0.0.0.0", "--port", "1"],
        env={**os.environ, "SAMTRITON_ANNOTATE_TOKEN": "short"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "SAMTRITON_ANNOTATE_TOKEN" in result.stderr and "16 characters" in result.stderr
