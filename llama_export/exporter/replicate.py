"""Trace one decoder block, replicate it n_layers times: the graph of a deep model without tracing every block.

Why: torch.onnx's dynamo trace costs seconds per block for 7B shapes (symbolic shape reasoning per op), so
tracing time grows with depth, to minutes for a 70B's 80 blocks (docs/BENCHMARKS.md, "Figures behind the
code"), while every block is the same graph with other weights. So `trace_graph` traces the model with ONE
block and this pass copies that block's nodes for blocks 1..n-1 in ONNX IR.

What a block is comes from the tracer itself: each node's `pkg.torch.onnx.name_scopes` metadata lists the
nn.Module path it was recorded under, and block 0's nodes are those under `layers.0`. A copy of block 0 for
block i reads
- block i-1's hidden-state output where block 0 reads the embedding output,
- `layers.i.*` where block 0 reads `layers.0.*` (new initializers, declared without data like the tracer's),
- graph inputs `past_key_values.i.*` where block 0 reads `past_key_values.0.*`,
- and everything else block 0 reads from outside itself (RoPE cos/sin, the attention bias, shape values) as is,
and writes `present.i.*`. The final norm then reads the last block's output. The result has the same nodes, per
block, as a full trace (tests/exporter/test_replicate.py compares the two).
"""

from __future__ import annotations

import ast

import onnx_ir as ir

from .. import io_spec
from ..pending_weights import meta_initializer

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
BLOCK0 = "layers.0"


def block_nodes(graph: ir.Graph, scope: str = BLOCK0) -> list[ir.Node]:
    """Nodes the tracer recorded inside module `scope`, in graph order, but for input-less ones (Constant):
    the exporter shares one constant between every user (the final norm reuses block 0's eps), so they stay
    where they are and every copy reads them."""
    found = []
    for node in graph:
        scopes = node.metadata_props.get(SCOPES_KEY)
        if scopes and node.inputs and scope in ast.literal_eval(scopes):
            found.append(node)
    return found


def replicate_block(model: ir.Model, n_layers: int) -> None:
    """Grow a one-block traced model (metadata intact) to `n_layers` blocks, in place."""
    graph = model.graph
    nodes = block_nodes(graph)
    if not nodes:
        raise RuntimeError(f"no node of the traced graph is scoped {BLOCK0!r}: the tracer's metadata changed")
    inside = set(nodes)
    reads = list(dict.fromkeys(v for n in nodes for v in n.inputs if v is not None and v.producer() not in inside))
    outputs = set(graph.outputs)
    hidden_out = [v for n in nodes for v in n.outputs
                  if v not in outputs and any(use.node not in inside for use in v.uses())]
    if len(hidden_out) != 1:
        raise RuntimeError(f"block 0 hands {len(hidden_out)} values to the rest of the graph, expected one")
    hidden_out = hidden_out[0]
    hidden_in = [v for v in reads if v.producer() is not None and v.dtype == hidden_out.dtype
                 and v.shape == hidden_out.shape]
    if len(hidden_in) != 1:
        raise RuntimeError(f"block 0 has {len(hidden_in)} inputs shaped like its output, expected one")
    hidden_in = hidden_in[0]
    inputs = {v.name: v for v in graph.inputs}
    presents = [next((v for v in graph.outputs if v.name == name), None)
                for name in (io_spec.present_key(0), io_spec.present_value(0))]
    pasts = [inputs.get(name) for name in (io_spec.past_key(0), io_spec.past_value(0))]
    if None in presents or None in pasts:
        raise RuntimeError("the one-block trace lacks past_key_values.0.* inputs or present.0.* outputs")

    after_hidden = [(use.node, use.idx) for use in hidden_out.uses() if use.node not in inside]
    _rename_block(nodes, 0, outputs)
    previous, last = hidden_out, nodes[-1]
    for i in range(1, n_layers):
        mapping: dict[ir.Value, ir.Value] = {hidden_in: previous}
        for value, name in zip(pasts, (io_spec.past_key(i), io_spec.past_value(i))):
            mapping[value] = ir.Value(name=name, shape=_copy_shape(value.shape), type=value.type)
            graph.inputs.append(mapping[value])
        for value in reads:
            if value.name and value.name.startswith(f"{BLOCK0}."):
                mapping[value] = meta_initializer(graph, f"layers.{i}." + value.name[len(BLOCK0) + 1:],
                                                  tuple(value.shape.numpy()), value.const_value.raw.dtype)
        copies = [_copy_node(node, mapping, i) for node in nodes]
        graph.insert_after(last, copies)
        last = copies[-1]
        for value, name in zip(presents, (io_spec.present_key(i), io_spec.present_value(i))):
            mapping[value].name = name
            graph.outputs.append(mapping[value])
        previous = mapping[hidden_out]
    for node, index in after_hidden:
        node.replace_input_with(index, previous)
    graph.sort()


def _rename_block(nodes: list[ir.Node], i: int, keep: set[ir.Value]) -> None:
    """Block 0's own nodes and values get the same `layers.{i}/` names as the copies."""
    for node in nodes:
        node.name = f"layers.{i}/{node.name}"
        for value in node.outputs:
            if value not in keep and value.name:
                value.name = f"layers.{i}/{value.name}"


def _copy_node(node: ir.Node, mapping: dict[ir.Value, ir.Value], i: int) -> ir.Node:
    outputs = []
    for value in node.outputs:
        base = value.name.split("/", 1)[-1] if value.name else None
        copy = ir.Value(name=f"layers.{i}/{base}" if base else None, shape=_copy_shape(value.shape),
                        type=value.type)
        mapping[value] = copy
        outputs.append(copy)
    inputs = [None if v is None else mapping.get(v, v) for v in node.inputs]
    base = node.name.split("/", 1)[-1] if node.name else None
    return ir.Node(node.domain, node.op_type, inputs, node.attributes.values(), overload=node.overload,
                   outputs=outputs, version=node.version, name=f"layers.{i}/{base}" if base else None,
                   metadata_props=dict(node.metadata_props))


def _copy_shape(shape: ir.Shape | None) -> ir.Shape | None:
    return None if shape is None else ir.Shape(list(shape))


__all__ = ["block_nodes", "replicate_block"]
