"""`samtriton bench compare`: samtriton vs the in-process reference, in one run. Timings are
only printed; what is checked is that the command writes its table, JSON and plot, and the
byte counts each mode must have (those are properties, not timings)."""

import json
import subprocess
import sys

from PIL import Image

from helpers import EMBEDDING_BYTES, PADDED_IMAGE_BYTES



def test_bench_compare_writes_table_json_and_plot(server, checkpoint, images, tmp_path):
    Image.fromarray(images["chelsea"]).save(tmp_path / "chelsea.png")
    out = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "samtriton.cli", "bench", "compare", str(tmp_path / "chelsea.png"),
         "--url", server.grpc_url, "--model", "mobilesam", "--model-type", "vit_t", "--checkpoint", str(checkpoint),
         "--repeats", "1", "--clients", "1", "2", "--rounds", "1", "--batch-prompts", "4", "--amg-points-per-side", "4",
         "--out", str(out)],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    document = json.loads((out / "bench.json").read_text())
    operations = document["operations"]
    amg = "automatic masks (points_per_side 4)"
    assert set(operations) == {"set_image", "predict (1 prompt)", "predict (4 prompts)", "set_image_file (JPEG)", amg}
    for name in ("set_image", "predict (1 prompt)", "predict (4 prompts)"):
        entry = operations[name]
        assert entry["reference_s"] > 0
        assert set(entry["samtriton_s"]) == {"session", "session+shm", "embedding"}
        assert all(entry["ratio"][mode] > 0 for mode in entry["samtriton_s"])
    click = operations["predict (1 prompt)"]["bytes"]
    assert click["session"]["sent"] <= 0.01 * EMBEDDING_BYTES
    assert click["embedding"]["sent"] >= EMBEDDING_BYTES
    assert click["session+shm"]["received"] < 1024
    assert operations["set_image"]["bytes"]["session+shm"]["sent"] < 1024
    assert operations["set_image"]["bytes"]["session"]["sent"] >= PADDED_IMAGE_BYTES
    assert operations["set_image_file (JPEG)"]["bytes"]["session"]["sent"] <= PADDED_IMAGE_BYTES / 10
    assert operations[amg]["reference_s"] > 0 and set(operations[amg]["samtriton_s"]) == {"session", "embedding"}
    # Session-mode AMG sends the image once and prompts only; embedding mode sends the embedding too.
    assert PADDED_IMAGE_BYTES <= operations[amg]["bytes"]["session"]["sent"] < PADDED_IMAGE_BYTES + 64 * 1024
    assert operations[amg]["bytes"]["embedding"]["sent"] >= PADDED_IMAGE_BYTES + EMBEDDING_BYTES
    sweep = document["concurrency"]
    assert [row["clients"] for row in sweep] == [1, 2]
    assert all(row["images_per_s"] > 0 and row["image_p99_ms"] >= row["image_p50_ms"] for row in sweep)
    table = (out / "bench.md").read_text()
    assert "| set_image |" in table and "| clients |" in table
    with Image.open(out / "bench.png") as plot:
        assert plot.format == "PNG" and plot.size[0] >= 600


def test_bench_amg_writes_its_table(server, checkpoint, images, tmp_path):
    Image.fromarray(images["coins_gray"]).save(tmp_path / "coins.png")
    table = tmp_path / "amg.md"
    result = subprocess.run(
        [sys.executable, "-m", "samtriton.cli", "bench", "amg", str(tmp_path / "coins.png"), "--url", server.grpc_url,
         "--model", "mobilesam", "--checkpoint", str(checkpoint), "--points-per-side", "4", "--markdown", str(table)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [line for line in table.read_text().splitlines() if line.startswith("| coins |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    sent_mib = float(cells[-1].split("/")[0])
    # Session mode: the padded image (3 MiB) once, then prompts only; no 4 MiB embedding per batch.
    assert 3.0 <= sent_mib < 3.1, row
