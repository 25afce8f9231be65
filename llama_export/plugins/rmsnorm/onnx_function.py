"""RMSNorm as a model-local ONNX function of standard ops (opset >= 18: ReduceMean takes axes as input)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .. import spec
from ..onnx_support import make_function


def function_proto(opset: int) -> onnx.FunctionProto:
    eps = helper.make_node("Constant", [], ["eps"])
    # value_float comes from the calling node's epsilon attribute.
    eps.attribute.append(onnx.AttributeProto(name="value_float", ref_attr_name="epsilon",
                                             type=onnx.AttributeProto.FLOAT))
    nodes = [
        helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x32", "x32"], ["square"]),
        helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes", TensorProto.INT64, [1], [-1])),
        helper.make_node("ReduceMean", ["square", "axes"], ["mean_square"], keepdims=1),
        eps,
        helper.make_node("Add", ["mean_square", "eps"], ["variance"]),
        helper.make_node("Sqrt", ["variance"], ["rms"]),
        helper.make_node("Reciprocal", ["rms"], ["inv_rms"]),
        helper.make_node("Mul", ["x32", "inv_rms"], ["normed32"]),
        # Cast back before the weight, as model.RMSNorm does; CastLike keeps the function type-generic.
        helper.make_node("CastLike", ["normed32", "x"], ["normed"]),
        helper.make_node("Mul", ["normed", "weight"], ["y"]),
    ]
    return make_function(spec.RMSNORM, nodes, opset)

