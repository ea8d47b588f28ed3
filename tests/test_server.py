"""`samtriton serve`: real tritonserver, readiness, clean stop, and a failed start."""

import shutil
import signal
import subprocess
import sys

import pytest

from samtriton.server import EmbeddedTriton, ServerStartError, free_port

from helpers import serve_command


def _serve(repo, *extra):
    ports = [free_port(), free_port(), free_port()]
    cmd = serve_command(repo, ports[0], ports[1], ports[2], "--startup-timeout", "120", *extra)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), ports[0]


@pytest.mark.timeout(300)
def test_serve_prints_address_and_stops_on_sigterm(repository):
    process, port = _serve(repository)
    try:
        line = process.stdout.readline()
        assert f"grpc://127.0.0.1:{port}" in line, line + process.stderr.read()
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        for model in ("mobilesam", "mobilesam_encoder", "mobilesam_decoder"):
            assert client.is_model_ready(model)
        client.close()
        process.send_signal(signal.SIGTERM)
        # A clean stop takes ~3 s (exit timeout 5 s); wait() raises TimeoutExpired past 30 s.
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_failed_start_prints_server_errors_and_exits_nonzero(repository, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(repository, broken)
    (broken / "mobilesam_decoder" / "1" / "model.onnx").unlink()
    process, _ = _serve(broken)
    out, err = process.communicate(timeout=180)
    assert process.returncode != 0
    assert "mobilesam_decoder" in err and "model.onnx" in err, err


def test_empty_repository_is_an_error(tmp_path):
    with pytest.raises(ServerStartError, match="no model"):
        EmbeddedTriton(tmp_path).start()


def test_bench_server_prints_a_table(server):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "samtriton.tools.cli",
            "bench",
            "server",
            "--url",
            server.grpc_url,
            "--model",
            "mobilesam",
            "--batches",
            "1",
            "2",
            "--prompts",
            "4",
            "--repeats",
            "1",
            "--clients",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split("|")[0].strip() == "stage"
    rows = [[cell.strip() for cell in line.split("|")] for line in lines[2:]]
    assert [row[:2] for row in rows] == [
        ["encoder", "batch 1"],
        ["encoder", "batch 2"],
        ["decoder", "4 prompts/request"],
        ["end to end", "2 clients"],
    ]
    units = [row[2].split()[1] for row in rows]
    assert units == ["images/s", "images/s", "prompts/s", "images/s"], rows
