"""ONNX side of the custom nodes: OpSchemas derived from spec.py, and model-local functions for a model.

A model carrying `add_functions` runs in ONNX Runtime and onnx.reference with no registration: both inline
the function. The schema only serves tools that check or infer (onnx.checker, shape inference, exporters).
"""

from __future__ import annotations

import onnx
from onnx import helper
from onnx.defs import OpSchema

from . import spec

MIN_OPSET = 18  # ReduceMean with an axes input, Split with num_outputs


def make_function(op: spec.OpSpec, nodes: list[onnx.NodeProto], opset: int) -> onnx.FunctionProto:
    """A FunctionProto for `op` whose attributes default as in spec.py (attribute_proto)."""
    f = helper.make_function(spec.DOMAIN, op.name, [p.name for p in op.inputs], [p.name for p in op.outputs],
                             nodes, [helper.make_opsetid("", opset)],
                             attributes=[a.name for a in spec.TENSORRT_ATTRS])
    for a in op.attributes:
        f.attribute_proto.append(helper.make_attribute(a.name, a.default))
    return f


def op_schema(op: spec.OpSpec) -> OpSchema:
    return OpSchema(
        op.name, spec.DOMAIN, spec.VERSION, doc=op.doc,
        inputs=[OpSchema.FormalParameter(p.name, p.type_param, p.doc) for p in op.inputs],
        outputs=[OpSchema.FormalParameter(p.name, p.type_param, p.doc) for p in op.outputs],
        type_constraints=[(name, list(types), f"{name} of {op.name}") for name, types in op.type_params.items()],
        attributes=[OpSchema.Attribute(a.name, helper.make_attribute(a.name, a.default), a.doc)
                    for a in op.all_attributes],
    )


def register_schemas() -> None:
    """Register every spec.OPS schema with onnx.defs; calling it again is a no-op."""
    for op in spec.OPS.values():
        if not onnx.defs.has(op.name, spec.VERSION, spec.DOMAIN):
            onnx.defs.register_schema(op_schema(op))


def function_for(op_name: str, opset: int) -> onnx.FunctionProto:
    from .rmsnorm.onnx_function import function_proto as rms_norm
    from .rotary.onnx_function import function_proto as rotary

    return {spec.RMSNORM.name: rms_norm, spec.ROTARY.name: rotary}[op_name](opset)


def add_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Attach the function of every llama_export op the model uses (in place; returns the model).

    The functions import the model's default-domain opset so ORT never has to reconcile two versions.
    """
    used = {}
    for node in _all_nodes(model.graph):
        if node.domain == spec.DOMAIN:
            if node.op_type not in spec.OPS:
                raise ValueError(f"unknown {spec.DOMAIN} op {node.op_type!r} in node {node.name!r}")
            if node.op_type == spec.ROTARY.name and spec.node_attributes(node)["interleaved"]:
                raise ValueError(f"node {node.name!r}: RotaryEmbedding interleaved=1 has no ONNX decomposition "
                                 "(our graphs are rotate-half)")
            used[node.op_type] = node
    if not used:
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ValueError(f"{spec.DOMAIN} functions need default opset >= {MIN_OPSET}, the model imports {opset}")
    if not any(o.domain == spec.DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(spec.DOMAIN, spec.VERSION))
    present = {(f.domain, f.name) for f in model.functions}
    for name in sorted(used):
        if (spec.DOMAIN, name) not in present:
            model.functions.append(function_for(name, opset))
    return model


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _all_nodes(sub)
