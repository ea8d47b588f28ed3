"""The client's pure request logic: prompt checks, prompt tensors, decoder-input validation
and request building (dtypes, missing inputs, the size limit). No server."""

import numpy as np
import pytest

from samtriton import InvalidInput
from samtriton import contract as C
from samtriton.prompts import batch_prompt, prompt_tensors, single_prompt
from samtriton.transforms import ResizeLongestSide
from samtriton.validation import check_points
from samtriton.wire import make_call, nbytes

# `pytest -m unit`: no server is started and nothing is exported here.
pytestmark = pytest.mark.unit

TRANSFORM = ResizeLongestSide(C.IMAGE_SIZE)


def test_a_point_and_a_box_become_sams_prompt_tensors():
    prompt = single_prompt(np.array([[100, 50]]), np.array([1]), np.array([10, 20, 300, 200]), None)
    tensors = prompt_tensors(TRANSFORM, *prompt, (480, 640))
    coords, labels = tensors[C.POINT_COORDS.name], tensors[C.POINT_LABELS.name]
    assert coords.shape == (1, 3, 2) and coords.dtype == np.float32
    np.testing.assert_allclose(coords[0, 0], [100 * 1.6, 50 * 1.6])  # 640 -> 1024
    np.testing.assert_array_equal(labels[0], [1, C.LABEL_BOX_TOP_LEFT, C.LABEL_BOX_BOTTOM_RIGHT])
    assert tensors[C.HAS_MASK_INPUT.name].tolist() == [0.0] and tensors[C.MASK_INPUT.name].shape == (1, 1, 256, 256)
    points_only = prompt_tensors(TRANSFORM, *single_prompt([[1, 2]], [0], None, None), (480, 640), False)
    assert points_only[C.POINT_LABELS.name][0].tolist() == [0, C.LABEL_PAD], "SAM's padding point"
    assert C.MASK_INPUT.name not in points_only, "the session model fills in the absent mask"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=None, box=None, mask_input=None), "point_labels"),
        (
            dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 0]), box=None, mask_input=None),
            "point_labels",
        ),
        (dict(point_coords=None, point_labels=None, box=np.array([1.0, 2.0, 3.0]), mask_input=None), "box"),
    ],
)
def test_bad_prompts_name_their_field(kwargs, field):
    with pytest.raises(InvalidInput, match=field):
        single_prompt(**kwargs)


def test_batched_boxes_must_match_the_points():
    with pytest.raises(InvalidInput, match="boxes"):
        batch_prompt(np.ones((2, 1, 2)), np.ones((2, 1)), np.ones((3, 4)), None)


def test_decoder_point_checks():
    assert check_points(np.zeros((2, 3, 2), np.float32), np.ones((2, 3), np.float32)) == 2
    with pytest.raises(InvalidInput, match="point_labels: values"):
        check_points(np.zeros((1, 1, 2), np.float32), np.full((1, 1), 7, np.float32))
    with pytest.raises(InvalidInput, match="point_coords"):
        check_points(np.full((1, 1, 2), np.nan, np.float32), np.ones((1, 1), np.float32))


def test_requests_are_cast_checked_and_bounded():
    call = make_call(C.ENCODER, "sam", {C.IMAGE.name: np.zeros((1, 1024, 1024, 3)), C.INPUT_SIZE.name: [[768, 1024]]})
    assert call.model_name == "sam_encoder"
    assert call.arrays[C.IMAGE.name].dtype == np.uint8 and call.arrays[C.INPUT_SIZE.name].dtype == np.int64
    with pytest.raises(InvalidInput, match="missing input"):
        make_call(C.ENCODER, "sam", {C.IMAGE.name: np.zeros((1, 1024, 1024, 3), np.uint8)})
    too_many = int(C.MAX_REQUEST_BYTES // (1024 * 1024 * 3)) + 1
    with pytest.raises(InvalidInput, match="MiB"):
        make_call(
            C.ENCODER,
            "sam",
            {C.IMAGE.name: np.zeros((too_many, 1024, 1024, 3), np.uint8), C.INPUT_SIZE.name: np.zeros((too_many, 2))},
        )
    assert nbytes(np.array([b"abc", b"de"], dtype=object)) == 3 + 4 + 2 + 4, "BYTES carry a 4-byte length"


def test_an_image_source_is_a_typed_value_with_the_contracts_image_id():
    """``prompts.image_source`` gives an ``ImageSource``; its id is ``contract.image_id_for``
    of its fields (which the server recomputes), and the session request carries them."""
    from samtriton import calls
    from samtriton.prompts import image_source

    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    source = image_source(image, "RGB", TRANSFORM)
    assert isinstance(source, calls.ImageSource)
    assert source.padded_image.shape == (1024, 1024, 3) and source.input_size == (768, 1024)
    assert source.original_size == (300, 400)
    assert source.image_id == C.image_id_for(source.padded_image, source.input_size, source.original_size)
    call = calls.session_set("sam", source.image_id, source)
    assert call.arrays[C.IMAGE.name].shape == (1, 1024, 1024, 3) and call.image_id == source.image_id
    np.testing.assert_array_equal(call.arrays[C.ORIGINAL_SIZE.name], [300, 400])
    from_file = calls.ImageSource.from_file(bytearray(b"\x89PNG..."))
    assert from_file.encoded_image == b"\x89PNG..." and from_file.image_id == C.image_id_for(
        encoded_image=b"\x89PNG..."
    )
    assert C.ENCODED_IMAGE.name in calls.session_set("sam", from_file.image_id, from_file).arrays
    # The mapping form the SDK took before still converts.
    fields = dict(padded_image=source.padded_image, input_size=(768, 1024), original_size=(300, 400))
    assert calls.ImageSource.of(fields).image_id == source.image_id and calls.ImageSource.of(source) is source


def test_backend_is_still_the_old_name_of_client():
    """``SamPredictor.backend`` keeps working for existing callers; the docs and tests use
    ``client``. Nothing connects here: gRPC channels connect on the first call."""
    from samtriton import SamPredictor, TritonSam

    predictor = SamPredictor("127.0.0.1:1", model="sam")
    try:
        assert isinstance(predictor.client, TritonSam) and predictor.backend is predictor.client
        assert "old name of ``client``" in SamPredictor.backend.__doc__
    finally:
        predictor.close()
