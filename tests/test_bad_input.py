"""Bad input: a clear InvalidInput naming the field, raised before any request is sent;
raw requests that bypass the client are rejected by the server, which stays up."""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from samtriton import InvalidInput, SamPredictor
from samtriton import contract as C


def _request_counts(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stats = client.get_inference_statistics(as_json=True)["model_stats"]
    client.close()
    return {s["name"]: int(s.get("inference_stats", {}).get("success", {}).get("count", 0)) +
            int(s.get("inference_stats", {}).get("fail", {}).get("count", 0)) for s in stats}


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
    "mask wrong shape": (dict(point_coords=POINT, point_labels=np.array([1]), mask_input=np.zeros((256, 256))),
                         "mask_input"),
    "mask wrong size": (dict(point_coords=POINT, point_labels=np.array([1]), mask_input=np.zeros((1, 128, 128))),
                        "mask_input"),
    "mask NaN": (dict(point_coords=POINT, point_labels=np.array([1]),
                      mask_input=np.full((1, 256, 256), np.nan)), "mask_input"),
    "no prompt": (dict(), "point_coords"),
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


@pytest.mark.parametrize("image, field", [
    (np.zeros((10, 10, 3), np.float32), "dtype"),
    (np.zeros((10, 10, 5), np.uint8), "shape"),
    (np.zeros((0, 10, 3), np.uint8), "height and width"),
    ("/no/such/image.png", "cannot read"),
    (b"not an image", "image"),
])
def test_set_image_rejects_bad_images(predictor, server, image, field, tmp_path):
    before = _request_counts(server)
    with pytest.raises(InvalidInput, match=field):
        predictor.set_image(image)
    assert _request_counts(server) == before


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
    "label 7": (dict(point_labels=np.array([[7.0, -1.0]], np.float32)), "point_labels"),
    "NaN coords": (dict(point_coords=np.array([[[np.nan, 1.0], [0, 0]]], np.float32)), "point_coords"),
    "labels shape": (dict(point_labels=np.array([[1.0]], np.float32)), "point_labels"),
    "mask count": (dict(mask_input=np.zeros((2, 1, 256, 256), np.float32)), "mask_input"),
    "has_mask 0.5": (dict(has_mask_input=np.array([0.5], np.float32)), "has_mask_input"),
    "too many prompts": (dict(point_coords=np.zeros((C.MAX_PROMPTS_PER_REQUEST + 1, 1, 2), np.float32),
                              point_labels=np.ones((C.MAX_PROMPTS_PER_REQUEST + 1, 1), np.float32),
                              mask_input=np.zeros((C.MAX_PROMPTS_PER_REQUEST + 1, 1, 256, 256), np.float32),
                              has_mask_input=np.zeros(C.MAX_PROMPTS_PER_REQUEST + 1, np.float32)), "limit"),
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


def test_server_rejects_bad_encoder_input_size(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    image = grpcclient.InferInput("image", [1, 1024, 1024, 3], "UINT8")
    image.set_data_from_numpy(np.zeros((1, 1024, 1024, 3), np.uint8))
    size = grpcclient.InferInput("input_size", [1, 2], "INT64")
    size.set_data_from_numpy(np.array([[2000, 5]], np.int64))
    with pytest.raises(InferenceServerException, match="input_size"):
        client.infer("mobilesam_encoder", [image, size])
    client.close()
