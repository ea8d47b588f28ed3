"""What goes on the wire: one request (``Call``) with its tensors in the contract's dtypes,
the bytes it costs, and Triton's errors translated to samtriton's by status code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from tritonclient.utils import InferenceServerException

from . import contract as C
from .errors import InvalidInput, SamTritonError, from_status

# Triton's wire datatype -> numpy dtype (outputs read from shared memory).
NUMPY_DTYPES = {w: d for d, w in C.WIRE_DTYPES.items()}


@dataclass
class Call:
    """One request to one served model: what is sent, what comes back, where it may go."""

    spec: C.ModelSpec
    model_name: str
    arrays: Dict[str, np.ndarray]
    outputs: List[str]
    output_bytes: Dict[str, int] = field(default_factory=dict)  # bound for shared-memory outputs
    image_id: Optional[str] = None  # affinity key; also sent as metadata
    resend: Optional["Call"] = None  # sent once when the server does not hold the image

    @property
    def may_miss_image(self) -> bool:
        """A session request that names an image and carries none: NOT_FOUND means the
        server does not hold the image (or the model is missing: see ``Transport``)."""
        return (
            self.spec is C.SESSION
            and self.image_id is not None
            and not (C.IMAGE.name in self.arrays or C.ENCODED_IMAGE.name in self.arrays)
        )

    def headers(self, base: Optional[Dict[str, str]]) -> Optional[Dict[str, str]]:
        """``base`` with the image id added (the affinity key a layer-7 proxy may hash on)."""
        if self.image_id is None:
            return base
        return dict(base or {}, **{C.IMAGE_ID_HEADER: self.image_id})


def make_call(
    spec: C.ModelSpec,
    model: str,
    tensors: Dict[str, np.ndarray],
    outputs: Optional[Sequence[str]] = None,
    output_bytes: Optional[Dict[str, int]] = None,
    image_id: Optional[str] = None,
    resend: Optional[Call] = None,
) -> Call:
    """A ``Call`` with its tensors checked and cast to the contract's dtypes.

    Arguments:
      spec: the served model's contract (``contract.ENCODER``, ...).
      model: the deployment name.
      tensors: the inputs by name (optional ones may be left out).
      outputs: the output names wanted (default: all of ``spec``'s).
      output_bytes: the most bytes each output may take, for outputs that may come back
        through shared memory.
      image_id: the image a session request names (routing and the affinity header).
      resend: the request that sends the image again when the server does not hold it.
    """
    model_name = spec.served_name(model)
    return Call(
        spec,
        model_name,
        request_arrays(spec, model_name, tensors),
        list(outputs) if outputs else [s.name for s in spec.outputs],
        dict(output_bytes or {}),
        image_id,
        resend,
    )


def request_arrays(spec: C.ModelSpec, model_name: str, tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The request's tensors in their contract dtypes, checked for presence and total size."""
    missing = [s.name for s in spec.inputs if not s.optional and tensors.get(s.name) is None]
    if missing:
        raise InvalidInput(f"request to {model_name}: missing input(s) {missing}")
    arrays = {s.name: _wire_array(tensors[s.name], s) for s in spec.inputs if tensors.get(s.name) is not None}
    size = sum(nbytes(a) for a in arrays.values())
    if size > C.MAX_REQUEST_BYTES:
        raise InvalidInput(
            f"request to {model_name}: {size / 2**20:.1f} MiB of tensors; the limit is "
            f"{C.MAX_REQUEST_BYTES / 2**20:.0f} MiB (send fewer prompts or images per call)"
        )
    return arrays


def _wire_array(value, spec: C.TensorSpec) -> np.ndarray:
    if np.dtype(spec.dtype) == np.object_:
        array = np.asarray(value, dtype=object)
        return np.array([v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()], dtype=object).reshape(
            array.shape
        )
    return np.ascontiguousarray(value, dtype=spec.dtype)


def nbytes(array: np.ndarray) -> int:
    """The bytes ``array`` costs in a request."""
    if array.dtype == object:
        return sum(len(v) + 4 for v in array.ravel())  # BYTES elements carry a 4-byte length
    return array.nbytes


def translate(exc: InferenceServerException, call: Call, url: str, timeout: float) -> SamTritonError:
    """A tritonclient error -> samtriton's exception, by Triton's status code
    (``errors.from_status``). The message is kept for people; nothing is decided on its text."""
    message = (exc.message() or str(exc)).strip()
    status = (exc.status() or "").rsplit(".", 1)[-1]  # "StatusCode.NOT_FOUND" -> "NOT_FOUND"
    if not status and _is_connection_error(exc):
        status = "UNAVAILABLE"
    image_id = call.image_id if call.may_miss_image else None
    return from_status(status, message, call.model_name, url, timeout, image_id)


def _is_connection_error(exc: InferenceServerException) -> bool:
    # tritonclient raises some channel failures without a status (its own wrapper).
    return isinstance(exc.__cause__, (ConnectionError, OSError))
