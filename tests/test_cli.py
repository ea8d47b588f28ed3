"""``samtriton segment`` run as a subprocess: a bad file costs one line and the rest go on,
an unreachable server one line; never a traceback."""

import json
import subprocess
import sys

from PIL import Image

from samtriton.server import free_port


def _segment(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "samtriton.tools.cli", "segment", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_files_are_reported_and_the_rest_segmented(server, images, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(images["chelsea"]).save(folder / "a_chelsea.png")
    (folder / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    Image.fromarray(images["coffee"]).save(folder / "c_coffee.jpg")
    out = tmp_path / "out"
    result = _segment(
        folder,
        tmp_path / "missing.png",
        "--point",
        "100,100",
        "--url",
        server.grpc_url,
        "--model",
        "mobilesam",
        "--out",
        out,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert any("b_broken.jpg" in line and "cannot read" in line for line in errors), errors
    assert any("missing.png" in line and "no such image" in line for line in errors), errors
    assert len(errors) == 3 and "2 of 4 inputs failed" in errors[-1], errors
    for name, image in (("a_chelsea", images["chelsea"]), ("c_coffee", images["coffee"])):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["height"] == image.shape[0] and record["masks"][0]["area"] > 0
        assert (out / f"{name}_overlay.png").exists()
    assert not (out / "b_broken.json").exists()
    assert len(result.stdout.split()) == 2, "one overlay path per segmented image"


def test_all_good_exits_zero(server, images, tmp_path):
    Image.fromarray(images["chelsea"]).save(tmp_path / "chelsea.png")
    result = _segment(
        tmp_path / "chelsea.png",
        "--box",
        "50,50,300,250",
        "--url",
        server.grpc_url,
        "--model",
        "mobilesam",
        "--out",
        tmp_path / "out",
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_unreachable_server_is_one_line(images, tmp_path):
    Image.fromarray(images["chelsea"]).save(tmp_path / "chelsea.png")
    url = f"127.0.0.1:{free_port()}"
    result = _segment(
        tmp_path / "chelsea.png",
        tmp_path / "chelsea.png",
        "--point",
        "10,10",
        "--url",
        url,
        "--timeout",
        "10",
        "--out",
        tmp_path / "out",
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0], result.stderr
    assert "Traceback" not in result.stderr
