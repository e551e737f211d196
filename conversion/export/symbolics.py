"""ONNX symbolics for `torchvision::deform_conv2d`: standard `DeformConv` (opset 19) or Ascend `DeformableConv2D`."""
from __future__ import annotations

import contextlib

import torch
from torch.onnx import symbolic_helper as sh

OPSETS = {"onnxruntime": 19, "ascend": 11}  # ascend: the recipe's opset, which every ATC release parses
ASCEND_DOMAIN = "ascend"  # emitted in this domain, then moved to the default domain where ATC looks for them
DEFORM_CONV = "torchvision::deform_conv2d"


def _const(g, values, dtype=torch.int64):
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


@sh.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def deform_conv_onnx(g, x, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                     n_weight_groups, n_offset_groups, use_mask):
    """ONNX DeformConv: same (dy, dx)-interleaved offset layout as torchvision, mask only when used."""
    kernel = sh._get_tensor_sizes(weight)[2:]
    inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op("DeformConv", *inputs, dilations_i=[dil_h, dil_w], group_i=n_weight_groups,
                kernel_shape_i=kernel, offset_group_i=n_offset_groups, pads_i=[pad_h, pad_w, pad_h, pad_w],
                strides_i=[stride_h, stride_w])


@sh.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def deform_conv_ascend(g, x, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                       n_weight_groups, n_offset_groups, use_mask):
    """Ascend DeformableConv2D as the recipe's mmcv patch emits it (MODEL_SPEC B.3).

    Offsets are re-ordered from torchvision's [y0, x0, ..., y8, x8] to [x0..x8, y0..y8, m0..m8] with
    an all-ones mask (DCN v1 = DCN v2 with mask 1); the shapes must be static (ATC's are).
    """
    if use_mask or n_offset_groups != 1:
        raise ValueError("the Ascend export supports DCN v1 with one offset group")
    sizes = sh._get_tensor_sizes(offset)
    if sizes is None or any(s is None for s in sizes):
        raise ValueError("the Ascend export needs static shapes (fixed batch and input size)")
    n, c, h, w = sizes
    taps = c // 2
    pairs = g.op("Reshape", offset, _const(g, [n, taps, 2, h, w]))
    dy = g.op("Gather", pairs, _const(g, 0), axis_i=2)
    dx = g.op("Gather", pairs, _const(g, 1), axis_i=2)
    ones = g.op("Constant", value_t=torch.ones(n, taps, h, w, dtype=torch.float32))
    offsets = g.op("Concat", dx, dy, ones, axis_i=1)
    out = g.op(f"{ASCEND_DOMAIN}::DeformableConv2D", x, weight, offsets, strides_i=[stride_h, stride_w],
               pads_i=[pad_h, pad_w], dilations_i=[dil_h, dil_w], groups_i=n_weight_groups,
               deformable_groups_i=n_offset_groups, bias_i=0, data_format_s="NCHW", im2col_step_i=32)
    # A custom op has no shape inference: give its output type, or every later shape is lost.
    out.setType(x.type().with_sizes([n, sh._get_tensor_sizes(weight)[0], h, w]))
    return out


@contextlib.contextmanager
def deform_conv_symbolic(target: str):
    """Register the deform_conv2d symbolic of `target` ('onnxruntime' or 'ascend') for the duration."""
    fn = {"onnxruntime": deform_conv_onnx, "ascend": deform_conv_ascend}[target]
    torch.onnx.register_custom_op_symbolic(DEFORM_CONV, fn, OPSETS[target])
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(DEFORM_CONV, OPSETS[target])
