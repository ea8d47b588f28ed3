"""samtriton: Segment Anything served from NVIDIA Triton, with a numpy-only gRPC client.

    from samtriton import SamPredictor
    predictor = SamPredictor("127.0.0.1:8001", model="sam")
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(point_coords=..., point_labels=...)

``import samtriton`` never imports torch.
"""

from .aio import AsyncSamPredictor, ImageHandle, segment_many
from .automatic_mask_generator import SamAutomaticMaskGenerator
from .errors import (
    ContractMismatch,
    ImageNotCached,
    InvalidInput,
    ModelNotReady,
    RequestTimeout,
    SamTritonError,
    ServerError,
    ServerUnavailable,
)
from .predictor import SamPredictor, TritonSam
from .transport import endpoints_from_dns

__version__ = "0.1.0"
__all__ = [
    "SamPredictor",
    "SamAutomaticMaskGenerator",
    "AsyncSamPredictor",
    "ImageHandle",
    "segment_many",
    "TritonSam",
    "ContractMismatch",
    "ImageNotCached",
    "InvalidInput",
    "ModelNotReady",
    "RequestTimeout",
    "SamTritonError",
    "ServerError",
    "ServerUnavailable",
    "endpoints_from_dns",
    "__version__",
]
