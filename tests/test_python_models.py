"""Properties of the python-backend models' source that a CPU server cannot show."""

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parent.parent / "server"


def _bls_requests():
    for path in sorted(SERVER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "InferenceRequest":
                yield path.name, node


def test_every_bls_request_says_where_its_outputs_go():
    """A TensorRT or ONNX Runtime CUDA model answers a BLS request in GPU memory unless the
    request prefers CPU memory; as_numpy() then raises. Every request must say."""
    requests = list(_bls_requests())
    assert requests, "the models call other models through BLS"
    for name, node in requests:
        keywords = {k.arg: k.value for k in node.keywords}
        assert "preferred_memory" in keywords, f"{name}:{node.lineno}: BLS request without preferred_memory"
