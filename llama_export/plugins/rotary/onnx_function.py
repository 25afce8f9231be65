"""RotaryEmbedding (rotate-half) as a model-local ONNX function of standard ops (opset >= 18: Split num_outputs)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .. import spec
from ..onnx_support import make_function


def function_proto(opset: int) -> onnx.FunctionProto:
    """interleaved=1 has no decomposition here (our graphs are rotate-half); add_functions refuses it."""
    nodes = [
        helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("Split", ["x32"], ["x1", "x2"], axis=-1, num_outputs=2),
        helper.make_node("Neg", ["x2"], ["neg_x2"]),
        helper.make_node("Concat", ["neg_x2", "x1"], ["rotated"], axis=-1),
        helper.make_node("Mul", ["x32", "cos"], ["x_cos"]),
        helper.make_node("Mul", ["rotated", "sin"], ["rotated_sin"]),
        helper.make_node("Add", ["x_cos", "rotated_sin"], ["y32"]),
        helper.make_node("CastLike", ["y32", "x"], ["y"]),
    ]
    return make_function(spec.ROTARY, nodes, opset)
