"""Sibling projections of one input → one MatMul + Split (`onnx` and `ort` targets): wq/wk/wv, and w1/w3.

Why: batch-1 decode is a chain of GEMVs, and three small ones (768 → 768, 256, 256 for `small`) cost more than
one of the summed width: fewer kernel launches and one pass over the input. onnxruntime-genai's builder does the
same for q/k/v. Measured in benchmarks/peers.py.

This is an onnx-ir pass over the weights by name, not a pattern: the tracer exports each nn.Linear as
`MatMul(x, Transpose(W, perm=[1, 0]))` with W the checkpoint initializer, so the siblings are found as the
MatMuls whose weights are `layers.{i}.attention.w{q,k,v}.weight` (or `feed_forward.w{1,3}.weight`) and that read
the same x. The replacement concatenates the transposed weights in the graph (`Concat(Wqᵀ, Wkᵀ, Wvᵀ, axis=1)`):
the file keeps one tensor per checkpoint weight, and runtimes fold the Concat once at load (ORT's constant
folding, TensorRT's build). int8 weights (after graphs/quantize.py: `DequantizeLinear(W.int8 [in, out],
W.scale [out], axis=1) → MatMul`) fuse the same way one step earlier: `DequantizeLinear(Concat(int8s, axis=1),
Concat(scales), axis=1)`, which ORT folds and turns into one MatMulNBits (W8A8: one MatMulIntegerToFloat) per
group: fewer, wider int8 kernels with identical logits (docs/BENCHMARKS.md, "Peers"). Only
for the `ort` target: TensorRT refuses an int8 constant that feeds anything but a DequantizeLinear ("Quantized
constant ... is only allowed before DQ", TensorRT-RTX 1.7.1), and the `onnx` target's graph is also built
into engines; there int8 weights stay one DQ → MatMul per projection.
INT4 weights (int4_weights.py: `DequantizeLinear(W.int4 [in, out], W.scale [n_blocks, out], axis=0,
block_size=B)`) cannot be concatenated in the graph (ORT has no INT4 Concat kernel), so the fused group reads one
`layers.{i}.{group}.weight.int4` / `.scale` pair that the int4 weight transform writes already concatenated;
also only on `ort`.
W8A8's activation Q/DQ is added after this pass, one pair per fused MatMul (quantize.quantize_activations,
with the members' largest calibrated range; they read the same tensor and share their smoothing factors).
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir

GROUPS = {"qkv": ("attention.wq", "attention.wk", "attention.wv"),
          "gate_up": ("feed_forward.w1", "feed_forward.w3")}


_FUSED_NAME = re.compile(r"layers\.(\d+)\.(" + "|".join(GROUPS) + r")\.weight")


def members(weight_name: str) -> list[str]:
    """Checkpoint weights behind a (possibly fused) weight name: `layers.3.qkv.weight` → wq, wk, wv of layer 3."""
    match = _FUSED_NAME.fullmatch(weight_name)
    if match is None:
        return [weight_name]
    return [f"layers.{match[1]}.{p}.weight" for p in GROUPS[match[2]]]


def _only_user(value: ir.Value, op_type: str) -> ir.Node | None:
    users = [u.node for u in value.uses()]
    return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _projection(graph: ir.Graph, name: str) -> tuple[ir.Node, ir.Node] | None:
    """(weight node, MatMul) that apply checkpoint weight `name` as a linear layer, or None. The weight node is
    the float weight's Transpose(perm [1, 0]) or the int8 weight's DequantizeLinear (axis 1, per output channel)."""
    if name in graph.initializers:
        reader = _only_user(graph.initializers[name], "Transpose")
        if reader is None or list(reader.attributes["perm"].as_ints()) != [1, 0]:
            return None
    elif name + ".int8" in graph.initializers or name + ".int4" in graph.initializers:
        int8 = name + ".int8" in graph.initializers
        reader = _only_user(graph.initializers[name + (".int8" if int8 else ".int4")], "DequantizeLinear")
        if (reader is None or reader.attributes.get_int("axis", 1) != (1 if int8 else 0) or len(reader.inputs) != 2
                or reader.inputs[1] is not graph.initializers.get(name + ".scale")):
            return None
    else:
        return None
    matmul = _only_user(reader.outputs[0], "MatMul")
    if matmul is None or matmul.inputs[1] is not reader.outputs[0]:
        return None
    return reader, matmul


def _fused_weight(graph: ir.Graph, found: list[tuple[ir.Node, ir.Node]], prefix: str) -> list[ir.Node]:
    """Nodes that compute the concatenated [in, sum(out)] weight (the last node's output)."""
    readers = [r for r, _ in found]
    if readers[0].op_type == "DequantizeLinear" and readers[0].inputs[0].dtype == ir.DataType.INT4:
        return [_fused_int4(graph, readers, prefix)]
    if readers[0].op_type == "Transpose":
        concat = ir.node("Concat", [r.outputs[0] for r in readers], attributes={"axis": 1}, name=f"{prefix}/Concat")
        concat.outputs[0].name = f"{prefix}.weight"
        return [concat]
    ints = ir.node("Concat", [r.inputs[0] for r in readers], attributes={"axis": 1}, name=f"{prefix}/int8/Concat")
    scales = ir.node("Concat", [r.inputs[1] for r in readers], attributes={"axis": 0}, name=f"{prefix}/scale/Concat")
    dq = ir.node("DequantizeLinear", [ints.outputs[0], scales.outputs[0]], attributes={"axis": 1},
                 name=f"{prefix}/DequantizeLinear")
    ints.outputs[0].name, scales.outputs[0].name = f"{prefix}.weight.int8", f"{prefix}.weight.scale"
    dq.outputs[0].name = f"{prefix}.weight.dequantized"  # quantize_activations finds W8A8 MatMuls by this name
    return [ints, scales, dq]


def _fused_int4(graph: ir.Graph, readers: list[ir.Node], prefix: str) -> ir.Node:
    """One DQ over the group's pre-concatenated INT4 weight; the members' initializers are dropped (the weight
    transform writes only the fused pair)."""
    from ..pending_weights import meta_initializer

    members = [(r.inputs[0], r.inputs[1]) for r in readers]
    for r in readers:  # detach the members' DQs (removed by fuse_group) from the initializers dropped below
        r.replace_input_with(0, None)
        r.replace_input_with(1, None)

    def declare(suffix: str, values: list[ir.Value]) -> ir.Value:
        for value in values:
            del graph.initializers[value.name]
        shape = (values[0].shape[0], sum(v.shape[1] for v in values))
        return meta_initializer(graph, f"{prefix}.weight{suffix}", shape, values[0].const_value.raw.dtype)

    q = declare(".int4", [q for q, _ in members])
    scale = declare(".scale", [s for _, s in members])
    dq = ir.node("DequantizeLinear", [q, scale],
                 attributes={"axis": 0, "block_size": readers[0].attributes.get_int("block_size")},
                 name=f"{prefix}/DequantizeLinear")
    dq.outputs[0].name = f"{prefix}.weight.dequantized"
    return dq


def fuse_group(graph: ir.Graph, layer: int, group: str, int8: bool = True) -> bool:
    """Fuse one group; `int8=False` leaves int8 weights alone (graphs that TensorRT builds)."""
    found = [_projection(graph, f"layers.{layer}.{p}.weight") for p in GROUPS[group]]
    if None in found or len({m.inputs[0] for _, m in found}) != 1:
        return False
    if not int8 and any(r.op_type == "DequantizeLinear" for r, _ in found):
        return False
    if len({r.op_type for r, _ in found}) != 1 or len({r.outputs[0].dtype for r, _ in found}) != 1:
        return False  # e.g. one sibling int8 and one float: nothing to concatenate
    x = found[0][1].inputs[0]
    widths = [int(r.outputs[0].shape[1]) for r, _ in found]
    prefix = f"layers.{layer}.{group}"
    weight = _fused_weight(graph, found, prefix)
    matmul = ir.node("MatMul", [x, weight[-1].outputs[0]], name=f"{prefix}/MatMul")
    sizes = ir.Value(name=f"{prefix}.split_sizes", shape=ir.Shape([len(widths)]),
                     type=ir.TensorType(ir.DataType.INT64), const_value=ir.tensor(np.array(widths, np.int64)))
    graph.register_initializer(sizes)
    split = ir.node("Split", [matmul.outputs[0], sizes], attributes={"axis": -1}, num_outputs=len(widths),
                    name=f"{prefix}/Split")
    matmul.outputs[0].name = f"{prefix}.out"
    graph.insert_before(found[0][1], [*weight, matmul, split])
    for (reader, old), new in zip(found, split.outputs):
        new.name, new.shape, new.type = old.outputs[0].name, old.outputs[0].shape, old.outputs[0].type
        old.outputs[0].name = None
        old.outputs[0].replace_all_uses_with(new)
        graph.remove(old, safe=True)
        if reader.op_type == "DequantizeLinear":  # a float weight's Transpose now feeds the Concat
            graph.remove(reader, safe=True)
    return True


def fuse_projections(model: ir.Model, n_layers: int, int8: bool = True) -> int:
    """Fuse every group in every layer; returns how many groups it fused (2 per layer, 0 for int8 weights
    with `int8=False`)."""
    count = sum(fuse_group(model.graph, i, group, int8) for i in range(n_layers) for group in GROUPS)
    model.graph.sort()  # the fused MatMul sits before the first sibling; its inputs may come later in order
    return count


def float_weights(model: ir.Model) -> bool:
    """Whether the linear weights are plain float initializers (not int8 + DequantizeLinear)."""
    return "layers.0.attention.wq.weight" in model.graph.initializers


__all__ = ["GROUPS", "float_weights", "fuse_group", "fuse_projections", "members"]
