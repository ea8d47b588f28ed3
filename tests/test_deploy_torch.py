"""The torch backends' deployment files: the server image installs what the torch models
import, the compose file and the Kubernetes Deployment run that image with every flag of its
command, and the export writes torch models. (hadolint and kubernetes-validate run over every
Dockerfile and manifest in tests/test_deploy.py.)"""

import ast
import re
import sys
from pathlib import Path

import jsonschema
import yaml
from test_deploy import _effective_command, _exec_form, _interpolate, _versions, compose_schema  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
MODELS = ROOT / "server" / "models"
SERVER = ROOT / "server"
# Import names -> distribution names, where they differ.
DISTRIBUTIONS = {"mobile_sam": "mobilesam-mirror", "segment_anything": "segment-anything"}


def _third_party_imports(paths, nested=True):
    """Top-level package names imported by ``paths`` (``nested``: inside functions too)."""
    names = set()
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree) if nested else tree.body:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {
        n for n in names if n not in sys.stdlib_module_names and n not in ("samtriton", "triton_python_backend_utils")
    }


def _extra(name):
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]
    return {re.split(r"[<>=\[ ]", requirement)[0].lower() for requirement in extras}


def test_torch_image_installs_what_the_torch_models_import():
    text = (DOCKER / "Dockerfile.server-torch").read_text()
    assert '".[serve-torch]"' in text
    # What the torch models import beyond numpy (the base install) and samtriton itself; the
    # SAM packages come through torch_runtime.build_sam.
    # The torch models' own modules, every import; the modules they share with the ONNX
    # backends (a torch repository's session and AMG stages use them), at module level.
    shared = [MODELS / f"{name}.py" for name in ("session", "amg")] + [
        SERVER / f"{name}.py" for name in ("runtime", "embedding_cache", "metrics", "lifecycle", "config")
    ]
    imported = (
        _third_party_imports([*MODELS.glob("torch_*.py"), *SERVER.glob("torch_*.py")])
        | _third_party_imports(shared, nested=False)
        | {"segment_anything", "mobile_sam"}
    )
    # numpy and Pillow: samtriton's own dependencies, installed with any extra.
    needed = {DISTRIBUTIONS.get(name, name).lower() for name in imported} - {"numpy", "pil"}
    assert needed <= _extra("serve-torch"), needed - _extra("serve-torch")


def test_torch_compose_matches_compose_spec_and_exports_torch_models(compose_schema):  # noqa: F811
    compose = yaml.safe_load(_interpolate((DOCKER / "compose.torch.yaml").read_text(), _versions()))
    jsonschema.validate(compose, compose_schema)
    command = compose["services"]["export"]["command"]
    assert command[command.index("--encoder-backend") + 1] == "torch"
    assert command[command.index("--decoder-backend") + 1] == "torch"
    triton = compose["services"]["triton"]
    assert triton["build"]["dockerfile"] == "docker/Dockerfile.server-torch"
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_torch_deployment_runs_the_torch_image_with_every_flag_of_its_command():
    dockerfile = DOCKER / "Dockerfile.server-torch"
    entrypoint, cmd = _exec_form(dockerfile, "ENTRYPOINT"), _exec_form(dockerfile, "CMD")
    (deployment,) = [
        d
        for d in yaml.safe_load_all((DOCKER / "k8s" / "triton-torch.yaml").read_text())
        if d and d["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("samtriton-server-torch:")
    command = _effective_command(container, entrypoint, cmd)
    missing = [flag for flag in entrypoint + cmd if flag not in command]
    assert not missing, f"the Deployment drops the image's {missing}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The same name and labels as triton.yaml's Deployment: its Service and autoscaler select it.
    (plain,) = [
        d for d in yaml.safe_load_all((DOCKER / "k8s" / "triton.yaml").read_text()) if d and d["kind"] == "Deployment"
    ]
    assert deployment["metadata"]["name"] == plain["metadata"]["name"]
    assert deployment["spec"]["selector"] == plain["spec"]["selector"]
