"""The exported graph cut into pieces that run one after another: embedding, decoder block 0..n-1, head.

Layer-major validation (streamed.py) runs one piece at a time in ONNX Runtime, so only that piece's weights are
loaded. A piece is the set of nodes needed to compute its outputs from its boundary: block i computes
`layer_output.i` (found by layers.find_layer_outputs) and `present.i.*` from block i-1's output (or the
embedding's) and the graph inputs. The nodes every block shares (RoPE cos/sin, the attention bias, shape
arithmetic) are cheap and are copied into every piece. Initializers stay in the folder's external data: a
piece's TensorProtos keep their (location, offset, length), and ORT reads only those ranges.

The cut is only clean when a block's output is a plain residual Add that nothing of the next block computes
together with it. The `ort` target fuses that Add into the next block's SkipSimplifiedLayerNormalization, so its
blocks do not separate: `split_graph` raises LookupError and validation runs the whole model instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .. import io_spec
from .layers import find_layer_outputs

EMBEDDING_WEIGHT = "tok_embeddings."
_LAYER_WEIGHT = re.compile(r"layers\.(\d+)\.")
_MAX_HOPS = 4  # tok_embeddings → (DequantizeLinear / Cast) → Gather


@dataclass(frozen=True)
class Piece:
    """One runnable part of the graph: a serialized ModelProto whose weights are external data references."""

    name: str
    model: bytes
    inputs: list[str]  # graph inputs and boundary tensors it reads
    outputs: list[str]


@dataclass(frozen=True)
class SplitGraph:
    embedding: Piece  # input_ids -> hidden
    blocks: list[Piece]  # hidden (+ graph inputs, past.i) -> hidden, present.i.key, present.i.value
    head: Piece  # hidden -> logits
    hidden_names: list[str]  # the boundary tensors: embedding output, then each block's output


def split_graph(model_path: str | Path, n_layers: int) -> SplitGraph:
    """Cut the model at the embedding output and each block's output. Raises LookupError when it cannot."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    layer_outputs = find_layer_outputs(graph, n_layers)
    producers = {out: node for node in graph.node for out in node.output if out}
    for i, name in enumerate(layer_outputs):
        if producers[name].op_type != "Add":
            raise LookupError(f"block {i} ends in a fused {producers[name].op_type}, which also computes the next "
                              "block's norm: the blocks do not separate")
    embedding = _embedding_output(graph)
    hidden = [embedding, *layer_outputs]
    kv_type = next(i.type.tensor_type.elem_type for i in graph.input if i.name == io_spec.past_key(0))

    def piece(name: str, outputs: list[str], boundary: list[str], layer: int | None) -> Piece:
        return _extract(model, name, outputs, boundary, kv_type, layer)

    blocks = [piece(f"block {i}", [layer_outputs[i], io_spec.present_key(i), io_spec.present_value(i)],
                    [hidden[i]], i) for i in range(n_layers)]
    return SplitGraph(embedding=piece("embedding", [embedding], [], None), blocks=blocks,
                      head=piece("head", [io_spec.LOGITS], [layer_outputs[-1]], None), hidden_names=hidden)


def _embedding_output(graph) -> str:
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier = [i.name for i in graph.initializer if i.name.startswith(EMBEDDING_WEIGHT)]
    for _ in range(_MAX_HOPS):
        following = []
        for tensor in frontier:
            for node in consumers.get(tensor, []):
                if node.op_type == "Gather":
                    return node.output[0]
                following += [o for o in node.output if o]
        frontier = following
    raise LookupError("no Gather reads the embedding table (tok_embeddings.*)")


def _extract(model, name: str, outputs: list[str], boundary: list[str], kv_type: int, layer: int | None) -> Piece:
    """The nodes that compute `outputs` from `boundary` and the graph inputs, as a model of their own."""
    from onnx import helper

    graph = model.graph
    producers = {out: index for index, node in enumerate(graph.node) for out in node.output if out}
    graph_inputs = {i.name: i for i in graph.input}
    initializers = {i.name: i for i in graph.initializer}
    stop = set(boundary)
    needed_nodes, needed_inputs, needed_inits = set(), [], []
    todo, seen = list(outputs), set()
    while todo:
        tensor = todo.pop()
        if not tensor or tensor in seen:
            continue
        seen.add(tensor)
        if tensor in stop:
            continue
        if tensor in graph_inputs:
            needed_inputs.append(tensor)
        elif tensor in initializers:
            needed_inits.append(tensor)
        elif tensor in producers:
            index = producers[tensor]
            if index not in needed_nodes:
                needed_nodes.add(index)
                todo.extend(graph.node[index].input)
        else:
            raise LookupError(f"{name}: nothing produces {tensor!r}")
    foreign = sorted({int(m.group(1)) for n in needed_inits if (m := _LAYER_WEIGHT.match(n))} - {layer})
    if foreign:
        raise LookupError(f"{name} reads the weights of layer(s) {foreign}: the blocks do not separate")
    graph_outputs = {o.name: o for o in graph.output}
    inputs = [graph_inputs[n] for n in graph_inputs if n in set(needed_inputs)]
    inputs += [helper.make_tensor_value_info(b, kv_type, None) for b in boundary]
    outputs_info = [graph_outputs[o] if o in graph_outputs else helper.make_tensor_value_info(o, kv_type, None)
                    for o in outputs]
    sub = helper.make_graph([graph.node[i] for i in sorted(needed_nodes)], name.replace(" ", "_"), inputs,
                            outputs_info, initializer=[initializers[n] for n in sorted(needed_inits)])
    piece = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version,
                              functions=model.functions)
    return Piece(name, piece.SerializeToString(), [i.name for i in inputs], list(outputs))


__all__ = ["Piece", "SplitGraph", "split_graph"]
