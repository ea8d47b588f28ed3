"""The scale-out deployment files agree with the client's contract: the header nginx and
Envoy hash on is the one the client sends, the Envoy router config parses against Envoy's
own protos, and the replicas' Services and caches are set up for affinity.
(kubernetes-validate --strict runs over every docker/k8s manifest in test_deploy.py.)"""

import re
from pathlib import Path

import yaml

from samtriton import contract as C

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "docker" / "k8s"


def _docs(name):
    return list(yaml.safe_load_all((K8S / name).read_text()))


def test_nginx_hashes_on_the_header_the_client_sends():
    text = (ROOT / "docker" / "nginx" / "samtriton.conf").read_text()
    variable = "$http_" + C.IMAGE_ID_HEADER.replace("-", "_")
    assert re.search(rf"^\s*hash {re.escape(variable)} consistent;", text, re.M)
    assert re.search(r"^\s*grpc_pass grpc://samtriton_triton;", text, re.M)
    size = int(re.search(r"client_max_body_size (\d+)m;", text).group(1))
    assert size * 2**20 >= C.MAX_REQUEST_BYTES, "the largest request the contract allows gets through"


def test_envoy_router_config_parses_against_envoy_protos():
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.config.cluster.v3 import cluster_pb2

    # The typed_config messages the config names, registered for Any resolution.
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
    from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
    from google.protobuf import json_format

    config_map = next(d for d in _docs("scaleout.yaml") if d["kind"] == "ConfigMap")
    bootstrap = json_format.ParseDict(yaml.safe_load(config_map["data"]["envoy.yaml"]), bootstrap_pb2.Bootstrap())
    cluster = bootstrap.static_resources.clusters[0]
    assert cluster.lb_policy == cluster_pb2.Cluster.RING_HASH
    manager = hcm.HttpConnectionManager()
    bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.Unpack(manager)
    route = manager.route_config.virtual_hosts[0].routes[0].route
    assert [p.header.header_name for p in route.hash_policy] == [C.IMAGE_ID_HEADER]
    assert route.cluster == cluster.name
    assert route.timeout.seconds >= 300, "AMG requests are not cut at Envoy's 15 s default"
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address
    headless = next(
        d for d in _docs("scaleout.yaml") if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"
    )
    assert address.split(".")[0] == headless["metadata"]["name"], (
        "Envoy resolves every replica via the headless Service"
    )


def test_headless_service_selects_the_triton_replicas():
    deployment = next(d for d in _docs("triton.yaml") if d["kind"] == "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    headless = next(
        d for d in _docs("scaleout.yaml") if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"
    )
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    assert headless["spec"]["ports"][0]["port"] == 8001
    assert deployment["spec"]["replicas"] > 1
    # Each pod's cache is its own: /dev/shm is a per-pod memory volume, never a shared one.
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    shm = next(m for m in mounts if m["mountPath"] == "/dev/shm")
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
