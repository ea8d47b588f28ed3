"""``SamAutomaticMaskGenerator`` over Triton, with segment-anything's parameters and records.

In session mode (the predictor's default) the image and each crop are set once on the
session model and point batches go to it with the image id: no embedding crosses the wire.
Stateless (``SamPredictor(..., session=False)``), crops are encoded in batched encoder
requests and each point batch carries its crop's embedding to the AMG stage (``NAME_amg``).
Either way several batches are in flight at once, and only the masks that pass the IoU and
stability thresholds come back, as bits. Everything else (edge filtering,
NMS, RLE, small-region removal) runs here in numpy, as the reference does it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple, Union, cast

import numpy as np

from . import amg
from . import contract as C
from .errors import InvalidInput
from .predictor import SamPredictor
from .prompts import image_source
from .transforms import ImageLike, ResizeLongestSide, to_rgb_uint8

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


class SamAutomaticMaskGenerator:
    """segment-anything's ``SamAutomaticMaskGenerator``, served by Triton: the prompts' masks
    are filtered on the server, the crops' embeddings computed there once.

    Arguments:
      model: a samtriton ``SamPredictor``, or a Triton gRPC URL (then ``model_name`` names the
        deployment).
      points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
        stability_score_offset, box_nms_thresh, crop_n_layers, crop_nms_thresh,
        crop_overlap_ratio, crop_n_points_downscale_factor, point_grids,
        min_mask_region_area, output_mode: the reference's, with its defaults
        (``points_per_batch`` at most ``contract.MAX_PROMPTS_PER_REQUEST``; ``coco_rle`` and
        ``min_mask_region_area`` need the ``amg`` extra).
      model_name: the deployment, when ``model`` is a URL.
      requests_in_flight: requests sent at once.
    """

    def __init__(
        self,
        model: Union[SamPredictor, str],
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        model_name: str = C.DEFAULT_MODEL_NAME,
        requests_in_flight: int = 4,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise InvalidInput("points_per_side / point_grids: give exactly one of them")
        if output_mode not in OUTPUT_MODES:
            raise InvalidInput(f"output_mode: expected one of {OUTPUT_MODES}, got {output_mode!r}")
        if points_per_batch < 1 or points_per_batch > C.MAX_PROMPTS_PER_REQUEST:
            raise InvalidInput(f"points_per_batch: expected 1..{C.MAX_PROMPTS_PER_REQUEST}, got {points_per_batch}")
        if output_mode == "coco_rle":
            try:
                import pycocotools  # noqa: F401
            except ImportError:
                raise InvalidInput("output_mode 'coco_rle' needs pycocotools: pip install 'samtriton[amg]'") from None
        if min_mask_region_area > 0:
            try:
                import cv2  # noqa: F401
            except ImportError:
                raise InvalidInput("min_mask_region_area > 0 needs OpenCV: pip install 'samtriton[amg]'") from None
        # Exactly one was given (checked above).
        self.point_grids: List[np.ndarray] = (
            amg.build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
            if points_per_side is not None
            else cast(List[np.ndarray], point_grids)
        )
        self.predictor = model if isinstance(model, SamPredictor) else SamPredictor(model, model=model_name)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.requests_in_flight = requests_in_flight
        self.transform = ResizeLongestSide(C.IMAGE_SIZE)
        self.bytes_sent = 0
        self.bytes_received = 0

    def generate(self, image: ImageLike) -> List[Dict[str, Any]]:
        """All masks of ``image`` (HWC uint8 RGB, a PIL image or a path), as the reference's records."""
        image = to_rgb_uint8(image)
        client = self.predictor.client
        sent, received = client.bytes_sent, client.bytes_received
        data = self._generate_masks(image)
        # What went over the wire for this image (the predictor's counters; shared memory is not the wire).
        self.bytes_sent += client.bytes_sent - sent
        self.bytes_received += client.bytes_received - received
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        segmentations: List[Any]  # COCO RLE dicts, HxW bool arrays or uncompressed RLE dicts
        if self.output_mode == "coco_rle":
            segmentations = [amg.coco_encode_rle(rle) for rle in data["rles"]]
        elif self.output_mode == "binary_mask":
            segmentations = [amg.rle_to_mask(rle) for rle in data["rles"]]
        else:
            segmentations = data["rles"]
        return [
            {
                "segmentation": segmentations[i],
                "area": amg.area_from_rle(data["rles"][i]),
                "bbox": amg.box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                "predicted_iou": float(data["iou_preds"][i]),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": float(data["stability_score"][i]),
                "crop_box": amg.box_xyxy_to_xywh(np.asarray(data["crop_boxes"][i])).tolist(),
            }
            for i in range(len(segmentations))
        ]

    # --- the reference's pipeline, with batched encoding and server-side filtering ---------
    def _generate_masks(self, image: np.ndarray) -> Dict[str, Any]:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = amg.generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        crops = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in crop_boxes]
        encoded, input_sizes = self._encode(crops)
        parts = [
            self._process_crop(crop, handle, input_size, box, layer, orig_size)
            for crop, handle, input_size, box, layer in zip(crops, encoded, input_sizes, crop_boxes, layer_idxs)
        ]
        data = _cat(parts)
        if len(crop_boxes) > 1 and len(data["boxes"]):
            scores = 1 / amg.box_area(np.asarray(data["crop_boxes"], dtype=np.float64))
            keep = amg.batched_nms(
                data["boxes"].astype(np.float32), scores, np.zeros(len(scores)), self.crop_nms_thresh
            )
            data = _filter(data, keep)
        return data

    def _encode(self, crops: List[np.ndarray]) -> Tuple[list, List[Tuple[int, int]]]:
        """Each crop encoded on the server. In session mode the embeddings stay there (one
        session entry per crop, under its content hash) and a handle comes back; otherwise
        the embeddings come back, in batched encoder requests."""
        sources = [image_source(crop, "RGB", self.transform) for crop in crops]
        sizes = [(int(height), int(width)) for height, width in (cast(Tuple[int, int], s.input_size) for s in sources)]
        client = self.predictor.client
        if self.predictor.session:
            handles = [(source.image_id, source) for source in sources]
            with ThreadPoolExecutor(min(len(handles), self.requests_in_flight)) as pool:
                list(
                    pool.map(
                        lambda s: client.session_set(s.image_id, s.padded_image, s.input_size, s.original_size), sources
                    )
                )
            return handles, sizes
        padded = np.stack([cast(np.ndarray, source.padded_image) for source in sources])
        input_sizes = np.asarray(sizes, dtype=np.int64)
        chunks = [slice(i, i + C.MAX_ENCODER_BATCH) for i in range(0, len(crops), C.MAX_ENCODER_BATCH)]
        embeddings = np.concatenate([client.encode(padded[c], input_sizes[c]) for c in chunks])
        return list(embeddings), sizes

    def _filter_on_server(self, encoded, input_size, tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """One point batch through the AMG stage: the session model on the stored embedding
        (which it keeps with its input size; re-sending the crop if the server no longer holds
        it), or NAME_amg with the embedding and input size."""
        client = self.predictor.client
        if not self.predictor.session:
            return client.infer(
                C.AMG,
                dict(
                    tensors,
                    **{
                        C.DECODER_IMAGE_EMBEDDINGS.name: encoded[None],
                        C.INPUT_SIZE.name: np.asarray(input_size, np.int64),
                    },
                ),
            )
        image_id, source = encoded
        return client.session_amg(image_id, tensors, source)

    def _process_crop(self, crop, encoded, input_size, crop_box, layer_idx, orig_size) -> Dict[str, Any]:
        crop_size = crop.shape[:2]
        points_for_image = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]
        # At most the contract's prompts x crop pixels per request (the results do not depend
        # on the batch size: the reference's points_per_batch is only a memory knob too).
        per_batch = max(1, min(self.points_per_batch, C.MAX_AMG_PROMPT_PIXELS // (crop_size[0] * crop_size[1])))
        batches = [points for (points,) in amg.batch_iterator(per_batch, points_for_image)]
        with ThreadPoolExecutor(self.requests_in_flight) as pool:
            parts = list(
                pool.map(lambda p: self._process_batch(p, encoded, input_size, crop_size, crop_box, orig_size), batches)
            )
        data = _cat(parts)
        keep = amg.batched_nms(
            data["boxes"].astype(np.float32), data["iou_preds"], np.zeros(len(data["boxes"])), self.box_nms_thresh
        )
        data = _filter(data, keep)
        data["boxes"] = amg.uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = amg.uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = [list(crop_box)] * len(data["rles"])
        return data

    def _process_batch(self, points, encoded, input_size, crop_size, crop_box, orig_size) -> Dict[str, Any]:
        orig_h, orig_w = orig_size
        k = len(points)
        coords = np.concatenate(
            [self.transform.apply_coords(points, crop_size)[:, None, :], np.zeros((k, 1, 2))], axis=1
        ).astype(np.float32)
        labels = np.tile(np.array([[C.LABEL_FOREGROUND, C.LABEL_PAD]], np.float32), (k, 1))
        tensors = {
            C.POINT_COORDS.name: coords,
            C.POINT_LABELS.name: labels,
            C.CROP_SIZE.name: np.asarray(crop_size, np.int64),
            C.AMG_THRESHOLDS.name: np.array(
                [self.pred_iou_thresh, self.stability_score_thresh, self.stability_score_offset], np.float32
            ),
        }
        out = self._filter_on_server(encoded, input_size, tensors)
        index = out[C.KEPT_INDEX.name]
        h, w = crop_size
        masks = np.unpackbits(out[C.KEPT_MASKS.name], axis=1, count=h * w).reshape(-1, h, w).astype(bool)
        n_masks = C.MULTIMASK_SLICE.stop - C.MULTIMASK_SLICE.start
        data = {
            "iou_preds": out[C.KEPT_IOU.name],
            "stability_score": out[C.KEPT_STABILITY.name],
            "points": points[index // n_masks],
            "boxes": amg.batched_mask_to_box(masks),
        }
        keep = ~amg.is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        data = {key: value[keep] for key, value in data.items()}
        data["rles"] = amg.mask_to_rle(amg.uncrop_masks(masks[keep], crop_box, orig_h, orig_w))
        return data

    @staticmethod
    def postprocess_small_regions(data: Dict[str, Any], min_area: int, nms_thresh: float) -> Dict[str, Any]:
        """Remove small islands and holes from every mask, then NMS preferring untouched masks.

        Arguments:
          data: the masks' records (``rles``, ``boxes``, ...).
          min_area: regions and holes smaller than this many pixels go.
          nms_thresh: the box IoU above which the lower-priority mask is dropped.
        """
        if not data["rles"]:
            return data
        new_masks, untouched = [], []
        for rle in data["rles"]:
            mask = amg.rle_to_mask(rle)
            mask, changed = amg.remove_small_regions(mask, min_area, mode="holes")
            unchanged = not changed
            mask, changed = amg.remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(mask)
            untouched.append(float(unchanged and not changed))
        masks = np.stack(new_masks)
        boxes = amg.batched_mask_to_box(masks)
        scores = np.asarray(untouched, dtype=np.float32)
        keep = amg.batched_nms(boxes.astype(np.float32), scores, np.zeros(len(boxes)), nms_thresh)
        data = dict(data, rles=list(data["rles"]), boxes=np.array(data["boxes"], copy=True))
        for i in keep:
            if scores[i] == 0.0:
                data["rles"][i] = amg.mask_to_rle(masks[i][None])[0]
                data["boxes"][i] = boxes[i]
        return _filter(data, keep)


def _cat(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    keys = ("iou_preds", "stability_score", "points", "boxes")
    data = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in keys}
    if parts and not len(data["boxes"]):
        data["boxes"] = data["boxes"].reshape(0, 4)
    data["rles"] = [r for p in parts for r in p["rles"]]
    if parts and "crop_boxes" in parts[0]:
        data["crop_boxes"] = [b for p in parts for b in p["crop_boxes"]]
    return data


def _filter(data: Dict[str, Any], keep: np.ndarray) -> Dict[str, Any]:
    out = {}
    for key, value in data.items():
        out[key] = [value[i] for i in keep] if isinstance(value, list) else value[keep]
    return out
