"""The python models answer with Triton error codes, and the client maps codes (never
message text) onto its exceptions: raw requests to the real server, then the client."""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from samtriton import ImageNotCached, ModelNotReady, SamPredictor
from samtriton import contract as C
from samtriton.predictor import TritonSam
from samtriton.server import EmbeddedTriton

PROMPT = {
    C.POINT_COORDS.name: np.array([[[10.0, 10.0], [0.0, 0.0]]], np.float32),
    C.POINT_LABELS.name: np.array([[1.0, -1.0]], np.float32),
}


def _infer(url, model, **tensors):
    spec = {"mobilesam_session": C.SESSION, "mobilesam_decoder": C.DECODER}[model]
    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), spec.input(name).wire_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(url)
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.infer(model, inputs)
        assert client.is_server_live()
    finally:
        client.close()
    return raised.value


def test_unknown_image_is_not_found(server):
    error = _infer(server.grpc_url, "mobilesam_session", image_id=np.array([b"0" * 32], dtype=object), **PROMPT)
    assert error.status() == "StatusCode.NOT_FOUND", error


@pytest.mark.parametrize(
    "model, tensors",
    [
        ("mobilesam_session", dict(image_id=np.array([b"not-hex"], dtype=object), **PROMPT)),
        (
            "mobilesam_decoder",
            dict(
                image_embeddings=np.zeros((1, 256, 64, 64), np.float32),
                point_coords=PROMPT["point_coords"],
                point_labels=np.array([[7.0, -1.0]], np.float32),
                mask_input=np.zeros((1, 1, 256, 256), np.float32),
                has_mask_input=np.zeros(1, np.float32),
            ),
        ),
    ],
)
def test_bad_input_is_invalid_argument(server, model, tensors):
    error = _infer(server.grpc_url, model, **tensors)
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error


def test_client_tells_a_missing_image_from_a_missing_model(server, predictor, images):
    backend = TritonSam(server.grpc_url, model="mobilesam")
    try:
        with pytest.raises(ImageNotCached):  # no source to re-send: the caller learns the image is gone
            backend.session_decode("0" * 32, dict(PROMPT), True)
    finally:
        backend.close()
    with pytest.raises(ModelNotReady, match="mobilesam_sessio"):
        TritonSam(server.grpc_url, model="mobilesam_sessio").session_decode("0" * 32, dict(PROMPT), True)


def test_a_replica_without_its_encoder_answers_unavailable_and_the_client_fails_over(repository, server, images):
    """The session model's BLS call finds no encoder: UNAVAILABLE, so the client moves the
    image to its next replica instead of failing."""
    partial = EmbeddedTriton.on_free_ports(repository, models=["mobilesam_decoder", "mobilesam_session"]).start()
    try:
        from samtriton.transport import rendezvous_order

        urls = [partial.grpc_url, server.grpc_url]
        with SamPredictor(urls, model="mobilesam") as predictor:
            # An image that ranks the partial replica first.
            image = next(
                im
                for im in (np.ascontiguousarray(images["chelsea"][:, k:]) for k in range(64))
                if rendezvous_order(_image_id(predictor, im), urls)[0] == partial.grpc_url
            )
            predictor.set_image(image)
            assert predictor.predict(point_coords=np.array([[100.0, 100.0]]), point_labels=np.array([1]))[0].shape[0]
            assert [u for u, _ in predictor.client.endpoint_failures] == [partial.grpc_url]
            assert "could not use mobilesam_encoder" in predictor.client.endpoint_failures[0][1]
        raw = _infer(
            partial.grpc_url,
            "mobilesam_session",
            image_id=np.array([_image_id(None, image).encode()], dtype=object),
            **_set_tensors(image),
        )
        assert raw.status() == "StatusCode.UNAVAILABLE", raw
    finally:
        partial.stop()


def _set_tensors(image):
    from samtriton.transforms import preprocess, to_rgb_uint8

    rgb = to_rgb_uint8(image)
    padded, input_size = preprocess(rgb)
    return dict(
        image=padded[None],
        input_size=np.asarray([input_size], np.int64),
        original_size=np.asarray(rgb.shape[:2], np.int64),
    )


def _image_id(_, image):
    tensors = _set_tensors(image)
    return C.image_id_for(tensors["image"][0], tensors["input_size"][0], tensors["original_size"])


def _session_stubs(server):
    """PIDs of the session model's python stubs of ``server``."""
    from pathlib import Path

    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            if ppid == server.process.pid and "mobilesam_session" in cmdline:
                pids.append(int(entry.name))
    return pids


def _memory_kib(pid, field):
    from pathlib import Path

    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def _amg_request(image_id, prompts, crop_size, thresholds):
    points = np.stack([np.linspace(100, 900, prompts), np.linspace(150, 850, prompts)], axis=1)
    coords = np.concatenate([points[:, None, :], np.zeros((prompts, 1, 2))], axis=1).astype(np.float32)
    labels = np.tile(np.array([[1.0, -1.0]], np.float32), (prompts, 1))
    return dict(
        image_id=np.array([image_id.encode()], dtype=object),
        point_coords=coords,
        point_labels=labels,
        crop_size=np.array(crop_size, np.int64),
        amg_thresholds=np.array(thresholds, np.float32),
    )


def test_amg_request_over_the_cap_is_refused(server, predictor, images):
    predictor.set_image(images["chelsea"])
    prompts = C.MAX_AMG_PROMPT_PIXELS // (8192 * 8192) + 1
    error = _infer(
        server.grpc_url,
        "mobilesam_session",
        **_amg_request(predictor.image_id, prompts, (8192, 8192), [0.88, 0.95, 1.0]),
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "prompts" in error.message(), error


def test_worst_allowed_amg_request_stays_within_its_memory_bound(server, predictor, images):
    """16 prompts on a 4096 x 4096 crop with every threshold off (all 48 masks kept: 96 MiB of
    bits back): the serving stub's peak RSS grows by less than 768 MiB (measured ~520: the bits,
    their copy into the python backend's shared memory, the decoder's outputs, cache-sized
    tiles; holding the upscaled logits at once would take 3 GiB), and the server keeps serving."""
    import tritonclient.grpc as grpcclient

    predictor.set_image(images["astronaut"])
    prompts = C.MAX_AMG_PROMPT_PIXELS // (4096 * 4096)
    assert prompts == 16
    stubs = _session_stubs(server)
    assert stubs, "the session model's stubs were found"
    before = {}
    for pid in stubs:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:  # resets VmHWM to the current RSS
            handle.write("5")
        before[pid] = _memory_kib(pid, "VmRSS")
    tensors = _amg_request(predictor.image_id, prompts, (4096, 4096), [0.0, 0.0, 1.0])
    spec = C.SESSION
    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), spec.input(name).wire_dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = client.infer("mobilesam_session", inputs)
    finally:
        client.close()
    packed = result.as_numpy(C.KEPT_MASKS.name)
    assert packed.shape == (3 * prompts, 4096 * 4096 // 8)
    growth_mib = max(_memory_kib(pid, "VmHWM") - before[pid] for pid in stubs) / 1024
    print(f"\nworst allowed AMG request: peak RSS growth of the serving stub {growth_mib:.0f} MiB")
    assert growth_mib < 768
    assert predictor.predict(point_coords=np.array([[256.0, 200.0]]), point_labels=np.array([1]))[0].shape[0] == 3
