"""Sibling projections of one input → one MatMul + Split (`onnx` and `ort` targets): wq/wk/wv, and w1/w3.

Why: batch-1 decode is a chain of GEMVs, and three small ones (768 → 768, 256, 256 for `small`) cost more than
one of the summed width: fewer kernel launches and one pass over the input. onnxruntime-genai's builder does the
same for q/k/v. Measured in benchmarks/peers.py.

This is an onnx-ir pass over the weights by name, not a pattern: the tracer exports each nn.Linear as
`MatMul(x, Transpose(W, perm=[1, 0]))` with W the checkpoint initializer, so the siblings are found as the
MatMuls whose weights are `layers.{i}.attention.w{q,k,v}.weight` (or `feed_forward.w{1,3}.weight`) and that read
the same x. The replacement concatenates the transposed weights in the graph (`Concat(Wqᵀ, Wkᵀ, Wvᵀ, axis=1)`):
the file keeps one tensor per checkpoint weight, and runtimes fold the Concat once at load (ORT's constant
folding, TensorRT's build). Weights already replaced by int8 + DequantizeLinear are left alone: ORT fuses those
into MatMulNBits per projection.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

GROUPS = {"qkv": ("attention.wq", "attention.wk", "attention.wv"),
          "gate_up": ("feed_forward.w1", "feed_forward.w3")}


def _projection(graph: ir.Graph, name: str) -> tuple[ir.Node, ir.Node] | None:
    """(Transpose, MatMul) that apply initializer `name` as a linear layer, or None."""
    weight = graph.initializers.get(name)
    if weight is None:
        return None
    users = [u.node for u in weight.uses()]
    if len(users) != 1 or users[0].op_type != "Transpose" or list(users[0].attributes["perm"].as_ints()) != [1, 0]:
        return None
    transpose = users[0]
    matmuls = [u.node for u in transpose.outputs[0].uses()]
    if len(matmuls) != 1 or matmuls[0].op_type != "MatMul" or matmuls[0].inputs[1] is not transpose.outputs[0]:
        return None
    return transpose, matmuls[0]


def fuse_group(graph: ir.Graph, layer: int, group: str) -> bool:
    found = [_projection(graph, f"layers.{layer}.{p}.weight") for p in GROUPS[group]]
    if None in found or len({m.inputs[0] for _, m in found}) != 1:
        return False
    x = found[0][1].inputs[0]
    widths = [int(t.outputs[0].shape[1]) for t, _ in found]
    prefix = f"layers.{layer}.{group}"
    concat = ir.node("Concat", [t.outputs[0] for t, _ in found], attributes={"axis": 1}, name=f"{prefix}/Concat")
    matmul = ir.node("MatMul", [x, concat.outputs[0]], name=f"{prefix}/MatMul")
    sizes = ir.Value(name=f"{prefix}.split_sizes", shape=ir.Shape([len(widths)]),
                     type=ir.TensorType(ir.DataType.INT64), const_value=ir.tensor(np.array(widths, np.int64)))
    graph.register_initializer(sizes)
    split = ir.node("Split", [matmul.outputs[0], sizes], attributes={"axis": -1}, num_outputs=len(widths),
                    name=f"{prefix}/Split")
    concat.outputs[0].name, matmul.outputs[0].name = f"{prefix}.weight", f"{prefix}.out"
    first = found[0][1]
    graph.insert_before(first, [concat, matmul, split])
    for (_, old), new in zip(found, split.outputs):
        new.name, new.shape, new.type = old.outputs[0].name, old.outputs[0].shape, old.outputs[0].type
        old.outputs[0].name = None
        old.outputs[0].replace_all_uses_with(new)
        graph.remove(old, safe=True)
    return True


def fuse_projections(model: ir.Model, n_layers: int) -> int:
    """Fuse every group in every layer; returns how many groups it fused (2 per layer when all are float)."""
    count = sum(fuse_group(model.graph, i, group) for i in range(n_layers) for group in GROUPS)
    model.graph.sort()  # the fused MatMul sits before the first sibling; its inputs may come later in order
    return count


def fusable(model: ir.Model) -> bool:
    """Whether the linear weights are plain float initializers (not int8-wo / W8A8 DequantizeLinear inputs)."""
    return "layers.0.attention.wq.weight" in model.graph.initializers


__all__ = ["GROUPS", "fusable", "fuse_group", "fuse_projections"]
