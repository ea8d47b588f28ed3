"""Deployment files: Dockerfiles pass hadolint, Kubernetes manifests and compose.yaml pass
schema validation, and the NVIDIA versions are pinned in one place."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


def _bin(name):
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(found).exists(), f"{name} is missing: pip install 'samtriton[test]'"
    return found


def test_dockerfiles_pass_hadolint():
    dockerfiles = sorted(DOCKER.glob("Dockerfile*"))
    assert len(dockerfiles) >= 2
    result = subprocess.run([_bin("hadolint"), *map(str, dockerfiles)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    assert subprocess.run([_bin("hadolint"), str(bad)], capture_output=True).returncode != 0


def test_kubernetes_manifests_validate():
    manifests = sorted((DOCKER / "k8s").glob("*.yaml"))
    result = subprocess.run(
        [_bin("kubernetes-validate"), "--strict", *map(str, manifests)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {doc["kind"] for m in manifests for doc in yaml.safe_load_all(m.read_text())}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Job"} <= kinds


def test_kubernetes_validate_catches_a_bad_manifest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: many}\n")
    assert subprocess.run([_bin("kubernetes-validate"), "--strict", str(bad)], capture_output=True).returncode != 0


def test_probes_use_triton_health_endpoints():
    docs = list(yaml.safe_load_all((DOCKER / "k8s" / "triton.yaml").read_text()))
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("manifest", ["triton.yaml", "triton-torch.yaml"])
def test_servers_drain_before_sigterm_within_their_grace_period(manifest):
    """tritonserver's SIGTERM does not drain: each server pod runs ``samtriton drain`` as its
    preStop hook, a command the real CLI parses, on the container's HTTP port, and the grace
    period covers both drain phases plus the exit."""
    from samtriton.tools.cli import build_parser
    from samtriton.tools.cli import drain as drain_command

    docs = list(yaml.safe_load_all((DOCKER / "k8s" / manifest).read_text()))
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "triton")
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["samtriton", "drain"], command
    args = build_parser().parse_args(command[1:])
    assert args.func is drain_command.run
    http_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    assert args.http_url.rsplit(":", 1)[1] == str(http_port)
    assert pod["terminationGracePeriodSeconds"] > 2 * args.timeout + 10


def _versions():
    return dict(
        line.split("=", 1) for line in (DOCKER / ".env").read_text().splitlines() if line and not line.startswith("#")
    )


def _interpolate(text, variables):
    def sub(match):
        name, default = match.group(1), match.group(3)
        return variables.get(name, os.environ.get(name, default or ""))

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, text)


@pytest.fixture(scope="module")
def compose_schema(tmp_path_factory):
    """The Compose specification's JSON schema, as shipped in the docker-compose 1.29.2 wheel."""
    folder = tmp_path_factory.mktemp("compose")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "docker-compose==1.29.2", "-d", str(folder)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = folder.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return yaml.safe_load(archive.read("compose/config/compose_spec.json"))


def test_compose_matches_compose_spec(compose_schema):
    compose = yaml.safe_load(_interpolate((DOCKER / "compose.yaml").read_text(), _versions()))
    jsonschema.validate(compose, compose_schema)
    assert compose["services"]["triton"]["healthcheck"]["test"][-1].endswith("/v2/health/ready")
    assert compose["services"]["triton"]["depends_on"]["export"]["condition"] == "service_completed_successfully"
    broken = dict(compose, services={"triton": {"ports": "8001"}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema)


def test_nvidia_versions_pinned_in_one_place():
    versions = _versions()
    assert re.fullmatch(r"\d\d\.\d\d", versions["TRITON_RELEASE"]) and versions["TENSORRT_VERSION"]
    for dockerfile in DOCKER.glob("Dockerfile*"):
        text = dockerfile.read_text()
        assert re.search(r"^FROM nvcr\.io/nvidia/[\w-]+:\$\{TRITON_RELEASE\}-py3$", text, re.M), dockerfile.name
        assert versions["TRITON_RELEASE"] not in text, f"{dockerfile.name} repeats the release"


def _exec_form(dockerfile, instruction):
    """The JSON (exec-form) value of ENTRYPOINT or CMD in a Dockerfile, line continuations joined."""
    import json

    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    (value,) = re.findall(rf"^{instruction}\s+(\[.*\])\s*$", text, re.M)
    return json.loads(value)


def _effective_command(container, entrypoint, cmd):
    """What Kubernetes runs: `command` replaces ENTRYPOINT, `args` replace CMD, and setting
    `command` alone drops the image's CMD."""
    if "command" in container:
        return container["command"] + container.get("args", [])
    return entrypoint + container.get("args", cmd)


def test_kubernetes_server_keeps_every_flag_of_the_image_command():
    dockerfile = DOCKER / "Dockerfile.server"
    entrypoint, cmd = _exec_form(dockerfile, "ENTRYPOINT"), _exec_form(dockerfile, "CMD")
    assert any("shm-default-byte-size" in flag for flag in cmd), "the image sets the python backend's shm sizes"
    docs = list(yaml.safe_load_all((DOCKER / "k8s" / "triton.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = _effective_command(container, entrypoint, cmd)
    assert command[:3] == ["python3", "-m", "samtriton.server.restriction"], "the locked tritonserver"
    missing = [flag for flag in entrypoint + cmd if flag not in command]
    assert not missing, f"the Deployment drops the image's {missing}"
    compose = yaml.safe_load(_interpolate((DOCKER / "compose.yaml").read_text(), _versions()))
    triton = compose["services"]["triton"]
    served = (triton.get("entrypoint") or entrypoint) + triton.get("command", cmd)
    assert not [flag for flag in entrypoint + cmd if flag not in served]


def _build_context(root, paths, dockerignore):
    """The files a build sends for a context laid out as ``paths`` (empty files under
    ``root``), as docker-py computes it from ``.dockerignore`` (its port of moby's pattern
    matcher: patterns anchored at the root, ``**`` across directories, ``!`` re-includes,
    the last match wins)."""
    from docker.utils.build import exclude_paths

    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).touch()
    # docker-py's reading of .dockerignore: stripped lines, blank lines and comments dropped.
    patterns = [line.strip() for line in dockerignore.splitlines()]
    patterns = [line for line in patterns if line and not line.startswith("#")]
    included = exclude_paths(str(root), patterns, dockerfile="docker/Dockerfile.server")
    return {path for path in included if (root / path).is_file()}


def test_dockerignore_keeps_the_build_inputs_and_drops_local_files(tmp_path):
    path = ROOT / ".dockerignore"
    assert path.exists(), "the build context is the repository root: .venv alone is GBs"
    dropped = [
        ".venv/bin/python",
        ".venv-cpu/lib/x.py",
        ".git/HEAD",
        ".git/objects/ab/cdef",
        "model_repository/sam_encoder/1/model.onnx",
        "model_repository/sam_encoder/1/model.onnx.data",
        "model_repository/sam_encoder/1/model.plan",
        "model_repository/sam.export.json",
        "out/demo/overlay.png",
        "client/__pycache__/predictor.cpython-311.pyc",
        "server/models/__pycache__/session.cpython-311.pyc",
        "tests/__pycache__/helpers.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".hypothesis/examples/x",
        "samtriton.egg-info/PKG-INFO",
        "timing.cache",
        "build/lib/samtriton/cli.py",
        "encoder.onnx",
    ]
    copied = set()
    for dockerfile in DOCKER.glob("Dockerfile*"):
        for line in re.findall(r"^COPY\s+(.+)$", dockerfile.read_text(), re.M):
            copied.update(line.split()[:-1])
    assert {"pyproject.toml", "README.md", "client", "export"} <= copied
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    needed = [f for f in tracked if any(f == c or f.startswith(c.rstrip("/") + "/") for c in copied)]
    sent = _build_context(tmp_path / "context", set(tracked) | set(dropped), path.read_text())
    assert [p for p in dropped if p in sent] == []
    assert len(needed) > 20 and [f for f in needed if f not in sent] == []
