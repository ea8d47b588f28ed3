#!/usr/bin/env python3
"""What an oversized request costs a replica: raw gRPC requests to ``NAME_decoder`` whose
``point_coords`` far exceed the contract's prompt limit, sent to the embedded server, with
the server's resident memory (tritonserver and its stubs) and the python backend's shared
memory measured before and after each.

    python scripts/oversized_request.py REPOSITORY [--model mobilesam] [--gib 0.25 1]

The refusal is the model's (INVALID_ARGUMENT naming the field and the limit); the memory is
what Triton and the python backend spent receiving and copying the request before it.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np


def resident_mib(pid: int) -> float:
    """Resident memory of process group ``pid`` (shared pages counted in each process)."""
    listed = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
    total_kib = 0
    for member in {pid, *map(int, listed)}:
        try:
            with open(f"/proc/{member}/status") as status:
                total_kib += sum(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        except FileNotFoundError:
            pass
    return total_kib / 1024


def shared_memory_mib(prefix: str) -> float:
    return sum(f.stat().st_size for f in Path("/dev/shm").glob(prefix + "*")) / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", help="a repository written by samtriton export (python backends)")
    parser.add_argument("--model", default="mobilesam", help="the deployment name")
    parser.add_argument("--gib", type=float, nargs="+", default=[0.25, 1.0], help="request sizes to send")
    args = parser.parse_args(argv)
    import tritonclient.grpc as grpcclient

    from samtriton.server import EmbeddedTriton

    with EmbeddedTriton.on_free_ports(args.repository) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        pid, prefix = server.process.pid, server.shm_prefix
        print(f"idle: resident {resident_mib(pid):.0f} MiB, python-backend shm {shared_memory_mib(prefix):.0f} MiB")
        for gib in args.gib:
            prompts = int(gib * 2**30 / (64 * 2 * 4))
            tensors = {
                "image_embeddings": np.zeros((1, 256, 64, 64), np.float32),
                "point_coords": np.zeros((prompts, 64, 2), np.float32),
                "point_labels": np.ones((prompts, 64), np.float32),
                "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
            }
            inputs = []
            for name, array in tensors.items():
                tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            start = time.perf_counter()
            try:
                client.infer(f"{args.model}_decoder", inputs)
                outcome = "accepted"
            except Exception as exc:  # noqa: BLE001 - the refusal is the measurement
                outcome = str(exc)[:160]
            seconds = time.perf_counter() - start
            del inputs, tensors
            time.sleep(1)
            print(
                f"{gib:g} GiB: {outcome} ({seconds:.1f} s); after: resident {resident_mib(pid):.0f} MiB, "
                f"python-backend shm {shared_memory_mib(prefix):.0f} MiB"
            )
        client.close()


if __name__ == "__main__":
    main()
