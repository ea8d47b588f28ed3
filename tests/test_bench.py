"""`samtriton bench compare`: samtriton vs the in-process reference, in one run. Timings are
only printed; what is checked is that the command writes its table, JSON and plot, and the
byte counts each mode must have (those are properties, not timings)."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from helpers import EMBEDDING_BYTES, PADDED_IMAGE_BYTES


def test_bench_compare_writes_table_json_and_plot(server, checkpoint, images, tmp_path):
    Image.fromarray(images["chelsea"]).save(tmp_path / "chelsea.png")
    out = tmp_path / "bench"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "samtriton.tools.cli",
            "bench",
            "compare",
            str(tmp_path / "chelsea.png"),
            "--url",
            server.grpc_url,
            "--model",
            "mobilesam",
            "--model-type",
            "vit_t",
            "--checkpoint",
            str(checkpoint),
            "--repeats",
            "1",
            "--clients",
            "1",
            "2",
            "--rounds",
            "1",
            "--batch-prompts",
            "4",
            "--amg-points-per-side",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        # The session+shm mode registers shared memory: the server's admin key, as a user on
        # the server's host gives it.
        env={**os.environ, "SAMTRITON_ADMIN_KEY": server.admin_key},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    document = json.loads((out / "bench.json").read_text())
    operations = document["operations"]
    amg = "automatic masks (points_per_side 4)"
    assert set(operations) == {"set_image", "predict (1 prompt)", "predict (4 prompts)", "set_image_file (JPEG)", amg}
    for name in ("set_image", "predict (1 prompt)", "predict (4 prompts)"):
        entry = operations[name]
        assert set(entry["samtriton_s"]) == set(entry["ratio"]) == {"session", "session+shm", "embedding"}
        for mode, seconds in entry["samtriton_s"].items():
            assert entry["ratio"][mode] == pytest.approx(seconds / entry["reference_s"]), (name, mode)
    click = operations["predict (1 prompt)"]["bytes"]
    assert click["session"]["sent"] <= 0.01 * EMBEDDING_BYTES
    assert click["embedding"]["sent"] >= EMBEDDING_BYTES
    assert click["session+shm"]["received"] < 1024
    assert operations["set_image"]["bytes"]["session+shm"]["sent"] < 1024
    assert operations["set_image"]["bytes"]["session"]["sent"] >= PADDED_IMAGE_BYTES
    assert operations["set_image_file (JPEG)"]["bytes"]["session"]["sent"] <= PADDED_IMAGE_BYTES / 10
    assert set(operations[amg]["samtriton_s"]) == {"session", "embedding"}
    for mode, seconds in operations[amg]["samtriton_s"].items():
        assert operations[amg]["ratio"][mode] == pytest.approx(seconds / operations[amg]["reference_s"])
    # Session-mode AMG sends the image once and prompts only; embedding mode sends the embedding too.
    assert PADDED_IMAGE_BYTES <= operations[amg]["bytes"]["session"]["sent"] < PADDED_IMAGE_BYTES + 64 * 1024
    assert operations[amg]["bytes"]["embedding"]["sent"] >= PADDED_IMAGE_BYTES + EMBEDDING_BYTES
    sweep = document["concurrency"]
    assert [row["clients"] for row in sweep] == [1, 2]
    for row in sweep:
        # Each client sets its images one after another (--rounds 1: one each), so the sweep's
        # wall time is at least the slowest set_image + predict: images/s can be no more than
        # clients x rounds over that latency (p99 of 1-2 samples is within the slowest).
        assert row["images_per_s"] <= row["clients"] / (row["image_p99_ms"] / 1000) * (1 + 1e-9), row
    table = (out / "bench.md").read_text()
    assert "| set_image |" in table and "| clients |" in table
    with Image.open(out / "bench.png") as plot:
        assert plot.format == "PNG" and plot.size[0] >= 600


def test_bench_amg_writes_its_table(server, checkpoint, images, tmp_path):
    Image.fromarray(images["coins_gray"]).save(tmp_path / "coins.png")
    table = tmp_path / "amg.md"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "samtriton.tools.cli",
            "bench",
            "amg",
            str(tmp_path / "coins.png"),
            "--url",
            server.grpc_url,
            "--model",
            "mobilesam",
            "--checkpoint",
            str(checkpoint),
            "--points-per-side",
            "4",
            "--markdown",
            str(table),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [line for line in table.read_text().splitlines() if line.startswith("| coins |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    sent_mib = float(cells[-1].split("/")[0])
    # Session mode: the padded image (3 MiB) once, then prompts only; no 4 MiB embedding per batch.
    assert 3.0 <= sent_mib < 3.1, row
