"""The AMG filter as an ONNX graph, served as NAME_amg_filter beside a GPU decoder: automatic
mask generation's per-batch work after the decoder, where the decoder runs.

SamAutomaticMaskGenerator._process_batch, for one batch of point prompts: keep the three
multimask outputs, drop masks whose predicted IoU is under ``pred_iou_thresh`` (before
upscaling: the score does not depend on resolution), upscale the rest as
``Sam.postprocess_masks`` does (bilinear to 1024, crop to the input size, bilinear to the
crop size), compute stability scores on those logits, drop masks under the stability
threshold, and return the kept masks binarized and packed 8 pixels a byte (np.packbits'
order). Only kept masks leave the graph, in bits. A threshold <= 0 disables its filter, as
in the reference.

On a GPU deployment ONNX Runtime CUDA (or TensorRT) runs it beside the decoder (opset 17,
data-dependent output sizes from NonZero). On CPU the python stages use the numpy port
instead (``amg_filter.windows``), which measured faster there; the graph's
numbers are tested against it with ONNX Runtime on CPU. Built with onnx.helper: no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from samtriton import contract as C

OPSET = 17


def _const(name, value, dtype=None):
    array = np.asarray(value, dtype=dtype)
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def build_graph() -> onnx.ModelProto:
    """The filter graph: the AMG stage's inputs (decoder outputs + sizes + thresholds) in,
    ``contract.AMG``'s outputs out."""
    low_res, iou = C.LOW_RES_MASKS.name, C.IOU_PREDICTIONS.name
    size = C.LOW_RES_SIZE
    n = helper.make_node
    nodes = [
        _const("one_i", [1], np.int64),
        _const("four_i", [4], np.int64),
        _const("axis1", [1], np.int64),
        _const("axes23", [2, 3], np.int64),
        _const("zeros2", [0, 0], np.int64),
        _const("flat1", [-1, 1, size, size], np.int64),
        _const("flat", [-1], np.int64),
        _const("big", [C.IMAGE_SIZE, C.IMAGE_SIZE], np.int64),
        _const("zero_f", 0.0, np.float32),
        _const("i0", 0, np.int64),
        _const("i1", 1, np.int64),
        _const("i2", 2, np.int64),
        _const("eight", [8], np.int64),
        _const("seven", 7, np.int64),
        _const("eight_s", 8, np.int64),
        _const("bit_weights", [128, 64, 32, 16, 8, 4, 2, 1], np.int32),
        _const("pad_head", [0, 0, 0], np.int64),
        _const("zero_i", [0], np.int64),
        # The three multimask outputs of each prompt, flattened prompt-major: index = 3 * k + j.
        n("Slice", [low_res, "one_i", "four_i", "axis1"], ["multi_logits"]),
        n("Reshape", ["multi_logits", "flat1"], ["logits"]),
        n("Slice", [iou, "one_i", "four_i", "axis1"], ["multi_scores"]),
        n("Reshape", ["multi_scores", "flat"], ["scores"]),
        n("Gather", [C.AMG_THRESHOLDS.name, "i0"], ["iou_thresh"], axis=0),
        n("Gather", [C.AMG_THRESHOLDS.name, "i1"], ["stability_thresh"], axis=0),
        n("Gather", [C.AMG_THRESHOLDS.name, "i2"], ["offset"], axis=0),
        # keep = score > thresh, or everything when thresh <= 0 (the reference's "if thresh > 0").
        n("Greater", ["scores", "iou_thresh"], ["iou_pass"]),
        n("LessOrEqual", ["iou_thresh", "zero_f"], ["iou_off"]),
        n("Or", ["iou_pass", "iou_off"], ["iou_keep"]),
        n("NonZero", ["iou_keep"], ["iou_nz"]),
        n("Reshape", ["iou_nz", "flat"], ["iou_index"]),
        n("Gather", ["logits", "iou_index"], ["sel_logits"], axis=0),
        n("Gather", ["scores", "iou_index"], ["sel_scores"], axis=0),
        # Sam.postprocess_masks: bilinear (align_corners=False) to 1024, crop, bilinear to the crop size.
        n("Shape", ["sel_logits"], ["sel_shape"]),
        n("Slice", ["sel_shape", "zero_i", "axis1"], ["sel_n"]),
        n("Concat", ["sel_n", "one_i", "big"], ["size_1024"], axis=0),
        n(
            "Resize",
            ["sel_logits", "", "", "size_1024"],
            ["up"],
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        ),
        n("Slice", ["up", "zeros2", C.INPUT_SIZE.name, "axes23"], ["cropped"]),
        n("Concat", ["sel_n", "one_i", C.CROP_SIZE.name], ["size_crop"], axis=0),
        n(
            "Resize",
            ["cropped", "", "", "size_crop"],
            ["masks"],
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        ),
        # Stability: pixels over +offset / pixels over -offset (mask threshold 0), as the reference.
        n("Greater", ["masks", "offset"], ["over_hi"]),
        n("Neg", ["offset"], ["neg_offset"]),
        n("Greater", ["masks", "neg_offset"], ["over_lo"]),
        n("Cast", ["over_hi"], ["over_hi_i"], to=TensorProto.INT32),
        n("Cast", ["over_lo"], ["over_lo_i"], to=TensorProto.INT32),
        n("ReduceSum", ["over_hi_i", "axes_all"], ["intersections"], keepdims=0),
        n("ReduceSum", ["over_lo_i", "axes_all"], ["unions"], keepdims=0),
        n("Cast", ["intersections"], ["intersections_f"], to=TensorProto.FLOAT),
        n("Cast", ["unions"], ["unions_f"], to=TensorProto.FLOAT),
        n("Div", ["intersections_f", "unions_f"], ["stability"]),
        n("GreaterOrEqual", ["stability", "stability_thresh"], ["stab_pass"]),
        n("LessOrEqual", ["stability_thresh", "zero_f"], ["stab_off"]),
        n("Or", ["stab_pass", "stab_off"], ["stab_keep"]),
        n("NonZero", ["stab_keep"], ["stab_nz"]),
        n("Reshape", ["stab_nz", "flat"], ["stab_index"]),
        n("Gather", ["iou_index", "stab_index"], [C.KEPT_INDEX.name], axis=0),
        n("Gather", ["sel_scores", "stab_index"], [C.KEPT_IOU.name], axis=0),
        n("Gather", ["stability", "stab_index"], [C.KEPT_STABILITY.name], axis=0),
        # The kept masks, binarized and packed 8 pixels a byte, most significant bit first.
        n("Gather", ["masks", "stab_index"], ["kept"], axis=0),
        n("Greater", ["kept", "zero_f"], ["kept_bits"]),
        n("Cast", ["kept_bits"], ["kept_i"], to=TensorProto.INT32),
        n("Shape", ["kept_i"], ["kept_shape"]),
        n("Slice", ["kept_shape", "zero_i", "axis1"], ["kept_n"]),
        # Shapes spelled out (no -1): they must hold when no mask is kept, too.
        n("ReduceProd", [C.CROP_SIZE.name], ["pixels_1"], keepdims=1),
        n("Concat", ["kept_n", "pixels_1"], ["rows_shape"], axis=0),
        n("Reshape", ["kept_i", "rows_shape"], ["rows"]),
        n("Squeeze", ["pixels_1", "zero_i"], ["pixels"]),
        n("Add", ["pixels", "seven"], ["pixels_7"]),
        n("Div", ["pixels_7", "eight_s"], ["packed_len"]),
        n("Mul", ["packed_len", "eight_s"], ["padded_len"]),
        n("Sub", ["padded_len", "pixels"], ["pad_len"]),
        n("Unsqueeze", ["pad_len", "zero_i"], ["pad_len_1"]),
        n("Concat", ["pad_head", "pad_len_1"], ["pads"], axis=0),
        n("Pad", ["rows", "pads"], ["padded"], mode="constant"),
        n("Unsqueeze", ["packed_len", "zero_i"], ["packed_len_1"]),
        n("Concat", ["kept_n", "packed_len_1", "eight"], ["bits_shape"], axis=0),
        n("Reshape", ["padded", "bits_shape"], ["bit_groups"]),
        n("Mul", ["bit_groups", "bit_weights"], ["weighted"]),
        n("ReduceSum", ["weighted", "minus_one"], ["packed_i"], keepdims=0),
        n("Cast", ["packed_i"], [C.KEPT_MASKS.name], to=TensorProto.UINT8),
    ]
    nodes.insert(0, _const("axes_all", [1, 2, 3], np.int64))
    nodes.insert(0, _const("minus_one", [-1], np.int64))
    inputs = [
        helper.make_tensor_value_info(low_res, TensorProto.FLOAT, ["prompts", C.NUM_MASK_OUTPUTS, size, size]),
        helper.make_tensor_value_info(iou, TensorProto.FLOAT, ["prompts", C.NUM_MASK_OUTPUTS]),
        helper.make_tensor_value_info(C.INPUT_SIZE.name, TensorProto.INT64, [2]),
        helper.make_tensor_value_info(C.CROP_SIZE.name, TensorProto.INT64, [2]),
        helper.make_tensor_value_info(C.AMG_THRESHOLDS.name, TensorProto.FLOAT, [3]),
    ]
    outputs = [
        helper.make_tensor_value_info(C.KEPT_INDEX.name, TensorProto.INT64, ["kept"]),
        helper.make_tensor_value_info(C.KEPT_IOU.name, TensorProto.FLOAT, ["kept"]),
        helper.make_tensor_value_info(C.KEPT_STABILITY.name, TensorProto.FLOAT, ["kept"]),
        helper.make_tensor_value_info(C.KEPT_MASKS.name, TensorProto.UINT8, ["kept", "packed"]),
    ]
    graph = helper.make_graph(nodes, "samtriton_amg_filter", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="samtriton")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_graph(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_graph(), str(path))
    return path
