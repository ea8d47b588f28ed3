"""Bad input: a clear InvalidInput naming the field, raised before any request is sent;
raw requests that bypass the client are rejected by the server, which stays up."""

import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from samtriton import InvalidInput, SamPredictor
from samtriton import contract as C

from bad_files import jpeg, png


def _request_counts(server):
    """Per-model request counts, once settled: Triton updates its statistics just after it
    answers, so a read right after a response can miss that response."""
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def read():
        stats = client.get_inference_statistics(as_json=True, headers=server.admin_headers)["model_stats"]
        return {
            s["name"]: int(s.get("inference_stats", {}).get("success", {}).get("count", 0))
            + int(s.get("inference_stats", {}).get("fail", {}).get("count", 0))
            for s in stats
        }

    previous = read()
    for _ in range(300):  # settled within 0.1 s in practice; 30 s at most
        time.sleep(0.1)
        current = read()
        if current == previous:
            client.close()
            return current
        previous = current
    client.close()
    raise AssertionError(f"Triton's request counts kept changing for 30 s: {current}")


POINT = np.array([[100.0, 120.0]])
BAD_PREDICTS = {
    "labels without coords": (dict(point_labels=np.array([1])), "point_coords"),
    "coords without labels": (dict(point_coords=POINT), "point_labels"),
    "coords wrong shape": (dict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1])), "point_coords"),
    "coords three columns": (dict(point_coords=np.ones((1, 3)), point_labels=np.array([1])), "point_coords"),
    "coords strings": (dict(point_coords=np.array([["a", "b"]]), point_labels=np.array([1])), "point_coords"),
    "coords NaN": (dict(point_coords=np.array([[np.nan, 1.0]]), point_labels=np.array([1])), "point_coords"),
    "coords inf": (dict(point_coords=np.array([[np.inf, 1.0]]), point_labels=np.array([1])), "point_coords"),
    "label 2": (dict(point_coords=POINT, point_labels=np.array([2])), "point_labels"),
    "label -1": (dict(point_coords=POINT, point_labels=np.array([-1])), "point_labels"),
    "label count": (dict(point_coords=POINT, point_labels=np.array([1, 0])), "point_labels"),
    "box x1 < x0": (dict(box=np.array([50.0, 10, 40, 60])), "box"),
    "box y1 < y0": (dict(box=np.array([10.0, 60, 40, 10])), "box"),
    "box three numbers": (dict(box=np.array([1.0, 2, 3])), "box"),
    "box NaN": (dict(box=np.array([1.0, 2, np.nan, 4])), "box"),
    "mask wrong shape": (
        dict(point_coords=POINT, point_labels=np.array([1]), mask_input=np.zeros((256, 256))),
        "mask_input",
    ),
    "mask wrong size": (
        dict(point_coords=POINT, point_labels=np.array([1]), mask_input=np.zeros((1, 128, 128))),
        "mask_input",
    ),
    "mask NaN": (
        dict(point_coords=POINT, point_labels=np.array([1]), mask_input=np.full((1, 256, 256), np.nan)),
        "mask_input",
    ),
    "no prompt": (dict(), "point_coords"),
    "coords empty": (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)), "point_coords"),
    "coords complex": (dict(point_coords=np.array([[1 + 2j, 3]]), point_labels=np.array([1])), "point_coords"),
    "coords ragged": (dict(point_coords=[[1, 2], [3]], point_labels=np.array([1, 1])), "point_coords"),
    "coords too many": (
        dict(point_coords=np.ones((C.MAX_POINTS_PER_PROMPT, 2)), point_labels=np.ones(C.MAX_POINTS_PER_PROMPT)),
        "point_coords",
    ),
    "label 0.5": (dict(point_coords=POINT, point_labels=np.array([0.5])), "point_labels"),
    "label NaN": (dict(point_coords=POINT, point_labels=np.array([np.nan])), "point_labels"),
    "label bool": (dict(point_coords=POINT, point_labels=np.array([True])), "point_labels"),
    "box two rows": (dict(box=np.ones((2, 4))), "box"),
    "box strings": (dict(box=np.array(["a", "b", "c", "d"])), "box"),
    "mask inf": (
        dict(point_coords=POINT, point_labels=np.array([1]), mask_input=np.full((1, 256, 256), np.inf)),
        "mask_input",
    ),
    "mask batched": (
        dict(point_coords=POINT, point_labels=np.array([1]), mask_input=np.zeros((2, 1, 256, 256))),
        "mask_input",
    ),
}


@pytest.fixture(scope="module")
def ready(predictor, images):
    predictor.set_image(images["chelsea"])
    return predictor


@pytest.mark.parametrize("case", list(BAD_PREDICTS))
def test_predict_rejects_before_sending(ready, server, case):
    kwargs, field = BAD_PREDICTS[case]
    before = _request_counts(server)
    with pytest.raises(InvalidInput, match=field):
        ready.predict(**kwargs)
    assert _request_counts(server) == before, "nothing was sent"
    masks, scores, _ = ready.predict(point_coords=POINT, point_labels=np.array([1]))
    assert masks.shape[0] == 3


def test_predict_batch_rejects_mismatched_boxes(ready):
    with pytest.raises(InvalidInput, match="boxes"):
        ready.predict_batch(point_coords=np.ones((2, 1, 2)), point_labels=np.ones((2, 1)), boxes=np.ones((3, 4)))
    with pytest.raises(InvalidInput, match="mask_input"):
        ready.predict_batch(boxes=np.array([[0, 0, 5, 5.0]]), mask_input=np.zeros((2, 1, 256, 256)))


def test_predict_before_set_image(server):
    with SamPredictor(server.grpc_url, model="mobilesam") as fresh:
        with pytest.raises(InvalidInput, match="set_image"):
            fresh.predict(point_coords=POINT, point_labels=np.array([1]))


@pytest.mark.parametrize(
    "image, field",
    [
        (np.zeros((10, 10, 3), np.float32), "dtype"),
        (np.zeros((10, 10, 5), np.uint8), "shape"),
        (np.zeros((0, 10, 3), np.uint8), "height and width"),
        ("/no/such/image.png", "cannot read"),
        (np.zeros((C.MAX_IMAGE_SIDE + 1, 1, 3), np.uint8), "at most"),
        (np.zeros((4, 4, 3), np.int32), "dtype"),
        (b"not an image", "image"),
    ],
)
def test_set_image_rejects_bad_images(predictor, server, image, field, tmp_path):
    before = _request_counts(server)
    with pytest.raises(InvalidInput, match=field):
        predictor.set_image(image)
    assert _request_counts(server) == before


def test_bad_image_format(predictor):
    with pytest.raises(InvalidInput, match="image_format"):
        predictor.set_image(np.zeros((4, 4, 3), np.uint8), image_format="YUV")


def test_bad_timeout(server):
    with pytest.raises(InvalidInput, match="timeout"):
        SamPredictor(server.grpc_url, timeout=0)


def test_unreadable_file(predictor, tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(InvalidInput, match="cannot read"):
        predictor.set_image(path)


def _raw_decoder_inputs(**overrides):
    tensors = {
        "image_embeddings": np.zeros((1, 256, 64, 64), np.float32),
        "point_coords": np.array([[[10.0, 10.0], [0.0, 0.0]]], np.float32),
        "point_labels": np.array([[1.0, -1.0]], np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
    }
    tensors.update(overrides)
    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


RAW_BAD = {
    "label 4": (dict(point_labels=np.array([[4.0, -1.0]], np.float32)), "point_labels"),
    "label -2": (dict(point_labels=np.array([[-2.0, -1.0]], np.float32)), "point_labels"),
    "label NaN": (dict(point_labels=np.array([[np.nan, -1.0]], np.float32)), "point_labels"),
    "inf coords": (dict(point_coords=np.array([[[np.inf, 1.0], [0, 0]]], np.float32)), "point_coords"),
    "coords 3 columns": (dict(point_coords=np.zeros((1, 2, 3), np.float32)), "point_coords"),
    "coords 2-d": (dict(point_coords=np.zeros((2, 2), np.float32)), "point_coords"),
    "zero prompts": (
        dict(
            point_coords=np.zeros((0, 2, 2), np.float32),
            point_labels=np.zeros((0, 2), np.float32),
            mask_input=np.zeros((0, 1, 256, 256), np.float32),
            has_mask_input=np.zeros(0, np.float32),
        ),
        "point_coords",
    ),
    "zero points": (
        dict(point_coords=np.zeros((1, 0, 2), np.float32), point_labels=np.zeros((1, 0), np.float32)),
        "point_coords",
    ),
    "too many points": (
        dict(
            point_coords=np.zeros((1, C.MAX_POINTS_PER_PROMPT + 1, 2), np.float32),
            point_labels=np.ones((1, C.MAX_POINTS_PER_PROMPT + 1), np.float32),
        ),
        "limit",
    ),
    "labels transposed": (dict(point_labels=np.array([[1.0], [-1.0]], np.float32)), "point_labels"),
    "labels 3-d": (dict(point_labels=np.zeros((1, 2, 1), np.float32)), "point_labels"),
    "mask 128": (dict(mask_input=np.zeros((1, 1, 128, 128), np.float32)), "mask_input"),
    "mask 2 channels": (dict(mask_input=np.zeros((1, 2, 256, 256), np.float32)), "mask_input"),
    "mask NaN": (dict(mask_input=np.full((1, 1, 256, 256), np.nan, np.float32)), "mask_input"),
    "has_mask 2": (dict(has_mask_input=np.array([2.0], np.float32)), "has_mask_input"),
    "has_mask count": (dict(has_mask_input=np.zeros(3, np.float32)), "has_mask_input"),
    "has_mask 2-d": (dict(has_mask_input=np.zeros((1, 1), np.float32)), "has_mask_input"),
    "embedding 2 images": (dict(image_embeddings=np.zeros((2, 256, 64, 64), np.float32)), "image_embeddings"),
    "embedding 63": (dict(image_embeddings=np.zeros((1, 256, 64, 63), np.float32)), "image_embeddings"),
    "embedding channels": (dict(image_embeddings=np.zeros((1, 128, 64, 64), np.float32)), "image_embeddings"),
    "embedding one NaN": (
        dict(
            image_embeddings=np.where(
                np.arange(256 * 64 * 64).reshape(1, 256, 64, 64) == 777, np.float32(np.nan), np.float32(0)
            )
        ),
        "image_embeddings",
    ),
    "embedding inf": (dict(image_embeddings=np.full((1, 256, 64, 64), -np.inf, np.float32)), "image_embeddings"),
    "label 7": (dict(point_labels=np.array([[7.0, -1.0]], np.float32)), "point_labels"),
    "NaN coords": (dict(point_coords=np.array([[[np.nan, 1.0], [0, 0]]], np.float32)), "point_coords"),
    "labels shape": (dict(point_labels=np.array([[1.0]], np.float32)), "point_labels"),
    "mask count": (dict(mask_input=np.zeros((2, 1, 256, 256), np.float32)), "mask_input"),
    "has_mask 0.5": (dict(has_mask_input=np.array([0.5], np.float32)), "has_mask_input"),
    "too many prompts": (
        dict(
            point_coords=np.zeros((C.MAX_PROMPTS_PER_REQUEST + 1, 1, 2), np.float32),
            point_labels=np.ones((C.MAX_PROMPTS_PER_REQUEST + 1, 1), np.float32),
            mask_input=np.zeros((C.MAX_PROMPTS_PER_REQUEST + 1, 1, 256, 256), np.float32),
            has_mask_input=np.zeros(C.MAX_PROMPTS_PER_REQUEST + 1, np.float32),
        ),
        "limit",
    ),
}


@pytest.mark.parametrize("case", list(RAW_BAD))
def test_server_rejects_raw_bad_requests_and_stays_up(server, case):
    overrides, field = RAW_BAD[case]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match=field):
        client.infer("mobilesam_decoder", _raw_decoder_inputs(**overrides))
    result = client.infer("mobilesam_decoder", _raw_decoder_inputs())
    assert result.as_numpy("low_res_masks").shape == (1, 4, 256, 256)
    client.close()


def _raw(name, array, wire):
    tensor = grpcclient.InferInput(name, list(array.shape), wire)
    tensor.set_data_from_numpy(array)
    return tensor


GOOD_IMAGE = np.zeros((1, 1024, 1024, 3), np.uint8)
RAW_BAD_ENCODER = {
    "input_size too large": (GOOD_IMAGE, np.array([[2000, 5]], np.int64), "input_size"),
    "input_size zero": (GOOD_IMAGE, np.array([[0, 1024]], np.int64), "input_size"),
    "input_size negative": (GOOD_IMAGE, np.array([[1024, -3]], np.int64), "input_size"),
    "input_size long side short": (GOOD_IMAGE, np.array([[512, 600]], np.int64), "input_size"),
    "image 512 square": (np.zeros((1, 512, 512, 3), np.uint8), np.array([[512, 512]], np.int64), "image"),
    "image CHW": (np.zeros((1, 3, 1024, 1024), np.uint8), np.array([[1024, 1024]], np.int64), "image"),
    "image float": (np.zeros((1, 1024, 1024, 3), np.float32), np.array([[1024, 1024]], np.int64), "image"),
    "input_size float": (GOOD_IMAGE, np.array([[1024.0, 1024.0]], np.float32), "input_size"),
}


@pytest.mark.parametrize("case", list(RAW_BAD_ENCODER))
def test_server_rejects_raw_bad_encoder_requests(server, case):
    image, size, field = RAW_BAD_ENCODER[case]
    wire = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match=field):
        client.infer(
            "mobilesam_encoder", [_raw("image", image, wire[image.dtype]), _raw("input_size", size, wire[size.dtype])]
        )
    ok = client.infer(
        "mobilesam_encoder",
        [_raw("image", GOOD_IMAGE, "UINT8"), _raw("input_size", np.array([[1024, 1024]], np.int64), "INT64")],
    )
    assert ok.as_numpy("image_embeddings").shape == (1, 256, 64, 64)
    client.close()


def test_server_rejects_wrong_dtype_and_missing_input(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = _raw_decoder_inputs()
    inputs[1] = _raw("point_coords", np.zeros((1, 2, 2), np.float64), "FP64")
    with pytest.raises(InferenceServerException, match="point_coords"):
        client.infer("mobilesam_decoder", inputs)
    with pytest.raises(InferenceServerException, match="mask_input|expected 5 inputs"):
        client.infer("mobilesam_decoder", [i for i in _raw_decoder_inputs() if i.name() != "mask_input"])
    client.close()


def test_bad_request_in_a_dynamic_batch_fails_alone(server):
    """Concurrent encoder requests are batched by Triton; the bad one fails, the rest succeed."""
    import queue

    client = grpcclient.InferenceServerClient(server.grpc_url)

    def stats():
        model = client.get_inference_statistics("mobilesam_encoder", as_json=True, headers=server.admin_headers)[
            "model_stats"
        ][0]
        return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))

    before = stats()
    results = queue.Queue()
    sizes = [[1024, 1024], [1024, 700], [5000, 3], [800, 1024], [1024, 1024], [1024, 512]]
    for i, size in enumerate(sizes):
        client.async_infer(
            "mobilesam_encoder",
            [_raw("image", GOOD_IMAGE, "UINT8"), _raw("input_size", np.array([size], np.int64), "INT64")],
            callback=lambda result, error, i=i: results.put((i, result, error)),
        )
    outcomes = dict((i, (result, error)) for i, result, error in (results.get(timeout=120) for _ in sizes))
    for i, (result, error) in outcomes.items():
        if i == 2:
            assert error is not None and "input_size" in str(error)
        else:
            assert error is None, error
            assert result.as_numpy("image_embeddings").shape == (1, 256, 64, 64)
    after = stats()
    assert after[1] - before[1] < len(sizes), "requests were batched together"
    client.close()


def test_request_size_limit(predictor, server):
    from samtriton.contract import DECODER, MAX_PROMPTS_PER_REQUEST, MAX_REQUEST_BYTES

    k = MAX_PROMPTS_PER_REQUEST
    largest_allowed = {
        "image_embeddings": np.zeros((1, 256, 64, 64), np.float32),
        "point_coords": np.zeros((k, 64, 2), np.float32),
        "point_labels": np.ones((k, 64), np.float32),
        "mask_input": np.zeros((k, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(k, np.float32),
    }
    assert sum(v.nbytes for v in largest_allowed.values()) <= MAX_REQUEST_BYTES
    too_big = dict(largest_allowed, mask_input=np.zeros((2 * k, 1, 256, 256), np.float32))
    before = _request_counts(server)
    with pytest.raises(InvalidInput, match="limit is 80 MiB"):
        predictor.client.infer(DECODER, too_big)
    assert _request_counts(server) == before


# --- image files decoded by the server (session model, set_image_file) ---------------------

BAD_FILES = {
    # Over Pillow's hard limit (2 x MAX_IMAGE_PIXELS): Pillow raises DecompressionBombError at the header.
    "bomb 20000x20000": lambda images: png(20000, 20000, complete=False),
    # Over MAX_IMAGE_PIXELS only: Pillow merely warns, and decodes 100 KB into 300 MB.
    "bomb 10000x10000": lambda images: png(10000, 10000, complete=True),
    # The header is whole (the size reads fine), the data stops half-way.
    "truncated JPEG": lambda images: jpeg(images["chelsea"])[: len(jpeg(images["chelsea"])) // 2],
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_set_image_file_rejects_bombs_and_truncated_files(server, images, case):
    data = BAD_FILES[case](images)
    with SamPredictor(server.grpc_url, model="mobilesam") as predictor:
        with pytest.raises(InvalidInput, match="encoded_image"):
            predictor.set_image_file(data)
        predictor.set_image_file(jpeg(images["coffee"]))  # the server keeps serving
        assert predictor.predict(point_coords=POINT, point_labels=np.array([1]))[0].shape[0] == 3


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_server_rejects_raw_bad_image_files_and_stays_up(server, images, case):
    data = BAD_FILES[case](images)
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def request(file_bytes):
        tensors = {
            "image_id": np.array([C.image_id_for(encoded_image=file_bytes).encode()], dtype=object),
            "encoded_image": np.array([file_bytes], dtype=object),
        }
        return [_raw(name, array, "BYTES") for name, array in tensors.items()]

    with pytest.raises(InferenceServerException, match="encoded_image"):
        client.infer("mobilesam_session", request(data))
    good = client.infer(
        "mobilesam_session", request(jpeg(images["rocket"])), outputs=[grpcclient.InferRequestedOutput("original_size")]
    )
    assert good.as_numpy("original_size").tolist() == list(images["rocket"].shape[:2])
    client.close()
