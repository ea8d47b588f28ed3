"""Only the operator changes what a replica serves: every server samtriton starts or ships
restricts Triton's model-repository, shared-memory, statistics, trace and logging APIs to
its admin key (``samtriton.server.restriction``).

Each test attacks a real tritonserver the way any client that reaches the port could: a
model load whose uploaded ``model.py`` would write a marker file, an unload of a served
model, a shared-memory registration, over gRPC and over HTTP. The deployment files' servers
are started from the exact arguments those files hold (read here), with the embedded
binary standing in for NVIDIA's (same flags, same Triton API)."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
import yaml
from test_deploy import _effective_command, _exec_form
from tritonclient.utils import InferenceServerException

from samtriton import SamPredictor, admin_key
from samtriton.server import EmbeddedTriton, free_port, stop_process
from samtriton.server.launcher import _backend_directory, _environment
from samtriton.server.restriction import RESTRICTED_PROTOCOLS, entrypoint_command

from helpers import prompts_for, serve_command

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
MARKER_CODE = """
from pathlib import Path

class TritonPythonModel:
    def initialize(self, args):
        Path({marker!r}).write_text("code uploaded by a client ran in the server")

    def execute(self, requests):
        return []
"""
EVIL_CONFIG = {"name": "evil", "backend": "python", "max_batch_size": 0, "input": [], "output": []}


def takeover_attempts(grpc_url, http_url, victim, marker, headers=None):
    """Tries what a client without the key must not do; returns the names of the attempts
    that got past Triton's restriction (accepted, or refused by the API itself). ``victim``: a served model to unload; ``marker``: the file the
    uploaded code would write; ``headers``: (gRPC, HTTP) headers to send, or None."""
    grpc_headers, http_headers = headers or (None, None)
    files = {"file:1/model.py": MARKER_CODE.format(marker=str(marker)).encode()}
    config = json.dumps(EVIL_CONFIG)
    region = f"samtriton_probe_{os.getpid()}_{time.monotonic_ns()}"
    handle = shm.create_shared_memory_region(region, "/" + region, 64)
    accepted = []
    with grpcclient.InferenceServerClient(grpc_url) as g, httpclient.InferenceServerClient(http_url) as h:
        attempts = {
            "grpc load with model.py": lambda: g.load_model("evil", config=config, files=files, headers=grpc_headers),
            "http load with model.py": lambda: h.load_model("evil", config=config, files=files, headers=http_headers),
            "grpc unload": lambda: g.unload_model(victim, headers=grpc_headers),
            "http unload": lambda: h.unload_model(victim, headers=http_headers),
            "grpc shared memory": lambda: g.register_system_shared_memory(
                region, "/" + region, 64, headers=grpc_headers
            ),
            "http shared memory": lambda: h.register_system_shared_memory(
                region, "/" + region, 64, headers=http_headers
            ),
            "grpc statistics": lambda: g.get_inference_statistics(headers=grpc_headers),
            "http log settings": lambda: h.update_log_settings(
                {"log_file": str(marker) + ".log"}, headers=http_headers
            ),
        }
        for name, attempt in attempts.items():
            try:
                attempt()
            except InferenceServerException as exc:
                if "is restricted, expecting header" not in str(exc):  # refused by the handler, not the lock
                    accepted.append(name)
            else:
                accepted.append(name)
    shm.destroy_shared_memory_region(handle)
    return accepted


def assert_locked(grpc_url, http_url, victim, tmp_path):
    marker = tmp_path / "uploaded-code-ran"
    assert takeover_attempts(grpc_url, http_url, victim, marker) == []
    time.sleep(0.5)  # a model that was loaded would have run initialize() by now
    assert not marker.exists(), "a client's uploaded code ran in the server"
    assert not Path(str(marker) + ".log").exists(), "a client moved the server's log"
    with grpcclient.InferenceServerClient(grpc_url) as client:
        assert client.is_model_ready(victim), f"{victim} was unloaded by a client without the key"


@pytest.fixture(scope="module")
def tiny_repository(tmp_path_factory):
    """One python-backend model: enough to show who may change a server's models."""
    repo = tmp_path_factory.mktemp("tiny_repository")
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "config.pbtxt").write_text(
        'name: "echo"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{ name: "x", data_type: TYPE_FP32, dims: [-1] }]\n'
        'output [{ name: "y", data_type: TYPE_FP32, dims: [-1] }]\n'
        "instance_group [{ kind: KIND_CPU, count: 1 }]\n"
    )
    (repo / "echo" / "1" / "model.py").write_text(
        "import triton_python_backend_utils as pb_utils\n\n\n"
        "class TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        '        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x")'
        ".as_numpy())]) for r in requests]\n"
    )
    return repo


def _wait_ready(process, http_url, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else "exited"
        try:
            with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready after {timeout} s")


def _deployment_command(name):
    """The container command a deployment file runs: (ENTRYPOINT, CMD) of a Dockerfile, or
    what a Kubernetes Deployment makes of its image's."""
    if name.startswith("Dockerfile"):
        dockerfile = DOCKER / name
        return _exec_form(dockerfile, "ENTRYPOINT") + _exec_form(dockerfile, "CMD")
    docs = list(yaml.safe_load_all((DOCKER / "k8s" / name).read_text()))
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "triton")
    image = "Dockerfile.server-torch" if "torch" in container["image"] else "Dockerfile.server"
    dockerfile = DOCKER / image
    return _effective_command(container, _exec_form(dockerfile, "ENTRYPOINT"), _exec_form(dockerfile, "CMD"))


@pytest.mark.parametrize("deployment", ["Dockerfile.server", "triton.yaml"])
def test_deployment_files_start_a_locked_server(deployment, tiny_repository, tmp_path):
    """The file's own command, with only what differs on this machine changed: the model
    repository path, loopback ports, the backend directory and the binary (the embedded
    tritonserver under the name ``tritonserver`` on PATH)."""
    command = _deployment_command(deployment)
    assert "--model-repository=/models" in command, command
    probe = EmbeddedTriton(tiny_repository)
    binary = probe.command(tmp_path)[0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tritonserver").symlink_to(binary)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    key = admin_key.generate()
    key_file = tmp_path / "admin-key"
    key_file.write_text(key + "\n")
    argv = [sys.executable if part == "python3" else part for part in command]
    argv = [f"--model-repository={tiny_repository}" if a == "--model-repository=/models" else a for a in argv]
    argv += [
        f"--backend-directory={_backend_directory(tmp_path / 'backends')}",
        *(f"--{kind}-address=127.0.0.1" for kind in ("grpc", "http", "metrics")),
        f"--grpc-port={grpc_port}",
        f"--http-port={http_port}",
        f"--metrics-port={metrics_port}",
        f"--backend-config=python,shm-region-prefix-name=samtriton_probe_{os.getpid()}_{grpc_port}_",
    ]
    env = _environment()
    env["PATH"] = os.pathsep.join([str(bin_dir), env["PATH"]])
    env[admin_key.ADMIN_KEY_FILE_ENV] = str(key_file)
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    grpc_url, http_url = f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"
    try:
        _wait_ready(process, http_url)
        assert_locked(grpc_url, http_url, "echo", tmp_path)
        # The operator's key opens what it locks: the probe would have seen an open server.
        marker = tmp_path / "with-key"
        keyed = (admin_key.grpc_headers(key), admin_key.http_headers(key))
        assert "grpc load with model.py" in takeover_attempts(grpc_url, http_url, "echo", marker, keyed)
        assert marker.exists()
    finally:
        stop_process(process, 15)
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass


def test_container_entrypoint_refuses_to_start_without_a_key(tmp_path):
    env = {"PATH": os.environ["PATH"]}
    result = subprocess.run(
        [sys.executable, "-m", "samtriton.server.restriction", "--model-repository=/models"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert admin_key.ADMIN_KEY_FILE_ENV in result.stderr and admin_key.ADMIN_KEY_ENV in result.stderr
    short = dict(env, **{admin_key.ADMIN_KEY_ENV: "short"})
    result = subprocess.run(
        [sys.executable, "-m", "samtriton.server.restriction"], env=short, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and admin_key.ADMIN_KEY_ENV in result.stderr and "16 to 512" in result.stderr
    missing = dict(env, **{admin_key.ADMIN_KEY_FILE_ENV: str(tmp_path / "absent")})
    result = subprocess.run(
        [sys.executable, "-m", "samtriton.server.restriction"], env=missing, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and admin_key.ADMIN_KEY_FILE_ENV in result.stderr and "absent" in result.stderr


def test_entrypoint_restricts_every_listed_protocol_on_both_protocols():
    key = admin_key.generate()
    command = entrypoint_command(["--model-repository=/models"], {admin_key.ADMIN_KEY_ENV: key, "PATH": ""})
    restricted = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in command if "restricted" in a}
    assert set(restricted) == {"--grpc-restricted-protocol", "--http-restricted-api"}
    for value in restricted.values():
        protocols, _, header = value.partition(":")
        assert set(protocols.split(",")) == set(RESTRICTED_PROTOCOLS)
        assert header == f"{admin_key.ADMIN_KEY_NAME}={key}"
    assert {"model-repository", "shared-memory", "logging", "trace"} <= set(RESTRICTED_PROTOCOLS)


@pytest.mark.parametrize("dockerfile", ["Dockerfile.server", "Dockerfile.server-torch"])
def test_containers_run_tritonserver_unprivileged_and_hold_no_key(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "tritonserver must not run as root"
    assert text.rindex("USER") > text.rindex("RUN "), "USER after the last RUN: it is what the server runs as"
    assert admin_key.ADMIN_KEY_ENV not in re.sub(r"#.*", "", text).replace(admin_key.ADMIN_KEY_FILE_ENV, "")


@pytest.mark.parametrize("manifest", ["triton.yaml", "triton-torch.yaml"])
def test_kubernetes_reads_the_key_from_a_secret_and_runs_unprivileged(manifest):
    docs = list(yaml.safe_load_all((DOCKER / "k8s" / manifest).read_text()))
    assert not [d for d in docs if d["kind"] == "Secret"], "the key is never in a manifest"
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "triton")
    env = {e["name"]: e for e in container.get("env", [])}
    assert admin_key.ADMIN_KEY_ENV not in env or "valueFrom" in env[admin_key.ADMIN_KEY_ENV]
    key_path = Path(env[admin_key.ADMIN_KEY_FILE_ENV]["value"])
    mount = next(m for m in container["volumeMounts"] if key_path.parent == Path(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "secret" in volume and mount.get("readOnly") is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert models.get("readOnly") is True, "the model repository is read-only to the server"


def _start_serve(repository, tmp_path, *extra):
    """``samtriton serve`` as the README starts it (its own ports); (process, ports, key file)."""
    ports = free_port(), free_port(), free_port()
    log = open(tmp_path / "serve.log", "w+")
    process = subprocess.Popen(
        serve_command(repository, *ports, *extra), stdout=log, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = (tmp_path / "serve.log").read_text()
        match = re.search(r"admin key \(samtriton-admin-key\) generated for this start: (\S+)", text)
        if match:
            return process, ports, Path(match.group(1))
        assert process.poll() is None, text
        time.sleep(0.2)
    raise AssertionError("samtriton serve did not start")


@pytest.mark.timeout(600)
def test_samtriton_serve_is_locked_by_default(repository, images, tmp_path, caplog):
    process, (grpc_port, http_port, _), key_file = _start_serve(repository, tmp_path)
    grpc_url, http_url = f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"
    try:
        assert key_file.stat().st_mode & 0o077 == 0, "the generated key is readable by this user only"
        key = key_file.read_text().strip()
        assert_locked(grpc_url, http_url, "mobilesam_session", tmp_path)
        image = images["astronaut"]
        prompt = prompts_for(image.shape)["point"]
        with SamPredictor(grpc_url, model="mobilesam") as plain:  # inference needs no key
            plain.set_image(image)
            want_masks, want_scores, _ = plain.predict(**prompt)
        # Shared memory without the key: the wire, and one warning saying why.
        with caplog.at_level("WARNING", logger="samtriton"):
            with SamPredictor(grpc_url, model="mobilesam", shared_memory=True) as keyless:
                keyless.set_image(image)
                masks, _, _ = keyless.predict(**prompt)
                keyless.predict(**prompt)
                assert keyless.client.bytes_sent >= image.nbytes, "no key: the image went over the wire"
        warnings = [r.getMessage() for r in caplog.records if "shared memory" in r.getMessage()]
        assert len(warnings) == 1 and "admin_key" in warnings[0] and admin_key.ADMIN_KEY_ENV in warnings[0]
        np.testing.assert_array_equal(masks, want_masks)
        # With the key: a shared-memory click.
        with SamPredictor(grpc_url, model="mobilesam", shared_memory=True, admin_key=key) as keyed:
            keyed.set_image(image)
            masks, scores, _ = keyed.predict(**prompt)
            assert keyed.client.bytes_sent < 2**20, "with the key the image went through shared memory"
        np.testing.assert_array_equal(masks, want_masks)
        np.testing.assert_allclose(scores, want_scores, atol=1e-6)
        # A drain with a wrong key is refused, saying which setting to fix; with the key it drains.
        drain = [sys.executable, "-m", "samtriton.tools.cli", "drain", "--http-url", http_url, "--timeout", "60"]
        wrong = tmp_path / "wrong-key"
        wrong.write_text(admin_key.generate())
        refused = subprocess.run([*drain, "--admin-key-file", str(wrong)], capture_output=True, text=True)
        assert refused.returncode == 1 and "admin key" in refused.stderr and "403" not in refused.stdout
        no_key = {k: v for k, v in os.environ.items() if not k.startswith("SAMTRITON_ADMIN_KEY")}
        missing = subprocess.run(drain, capture_output=True, text=True, env=no_key)
        assert missing.returncode == 2 and "--admin-key-file" in missing.stderr
        with grpcclient.InferenceServerClient(grpc_url) as client:
            assert client.is_model_ready("mobilesam_session"), "a refused drain unloads nothing"
        drained = subprocess.run([*drain, "--admin-key-file", str(key_file)], capture_output=True, text=True)
        assert drained.returncode == 0, drained.stderr
        with grpcclient.InferenceServerClient(grpc_url) as client:
            assert not client.is_model_ready("mobilesam_session")
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert not key_file.exists(), "the generated key's file is removed when the server stops"


def test_serve_takes_the_key_from_a_file_and_names_a_bad_one(repository, tmp_path):
    bad = tmp_path / "bad-key"
    bad.write_text("has spaces in it and is : = wrong\n")
    result = subprocess.run(
        serve_command(repository, free_port(), free_port(), free_port(), "--admin-key-file", bad),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--admin-key-file" in result.stderr and "16 to 512" in result.stderr
    env = dict(os.environ, **{admin_key.ADMIN_KEY_ENV: "x"})
    env.pop(admin_key.ADMIN_KEY_FILE_ENV, None)
    result = subprocess.run(
        serve_command(repository, free_port(), free_port(), free_port()), env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and admin_key.ADMIN_KEY_ENV in result.stderr


def test_embedded_server_refuses_an_unrestricting_argument(tiny_repository):
    with pytest.raises(ValueError, match="admin_key"):
        EmbeddedTriton(tiny_repository, extra_args=["--grpc-restricted-protocol=trace:k=v"])
