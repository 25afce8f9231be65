"""Per-layer outputs for bisection: both runners return `layer_output.{i}` (decoder block i's residual output,
[batch, seq, dim]) next to the io_spec outputs, so one KVSession loop drives both sides.

Torch: a forward hook on `model.layers[i]`. ONNX: the exporter strips the tracer's name-scope metadata, so the
layer's output is found structurally: it is the residual Add fed (through the w2 MatMul) by the initializer
`layers.{i}.feed_forward.w2.weight` — the last thing a decoder block does. Fused graphs end the block in a
Skip*Normalization instead; its optional 4th output is the same residual sum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import io_spec

_RESIDUAL_OPS = {"Add"}
_SKIP_NORM_OPS = {"SkipSimplifiedLayerNormalization", "SkipLayerNormalization"}
_MAX_HOPS = 6  # w2 → (Transpose / Cast / DequantizeLinear) → MatMul → Add: a handful of nodes at most


def layer_output_name(i: int) -> str:
    return f"layer_output.{i}"


class TorchLayerRunner:
    """TorchRunner plus `layer_output.{i}` outputs (float32), captured by forward hooks."""

    def __init__(self, runner):
        self.runner = runner
        self.name, self.args, self.kv_dtype = runner.name, runner.args, runner.kv_dtype

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        captured: dict[int, np.ndarray] = {}

        def hook(index):
            def keep(_module, _inputs, output):
                captured[index] = output[0].detach().float().numpy().copy()
            return keep

        handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(self.runner.model.layers)]
        try:
            outputs = self.runner.run(feeds)
        finally:
            for handle in handles:
                handle.remove()
        return {**outputs, **{layer_output_name(i): captured[i] for i in sorted(captured)}}


def find_layer_outputs(graph, n_layers: int) -> list[str]:
    """Names of the tensors holding each decoder block's output in an ONNX GraphProto. Raises LookupError
    naming the layer when the structure is not recognised."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = [init.name for init in graph.initializer]
    names = []
    for i in range(n_layers):
        prefix = f"layers.{i}.feed_forward.w2."
        weights = [n for n in initializers if n.startswith(prefix)]
        found = _residual_after(weights, consumers)
        if found is None:
            raise LookupError(f"no residual Add after {prefix}weight in the graph (layer {i})")
        names.append(found)
    return names


def _residual_after(starts: list[str], consumers: dict[str, list]) -> str | None:
    frontier, seen = list(starts), set(starts)
    for _ in range(_MAX_HOPS):
        following = []
        for tensor in frontier:
            for node in consumers.get(tensor, []):
                if node.op_type in _RESIDUAL_OPS:
                    return node.output[0]
                if node.op_type in _SKIP_NORM_OPS:  # the block ends here whether or not the sum is exposed
                    return node.output[3] if len(node.output) > 3 and node.output[3] else None
                following += [o for o in node.output if o and o not in seen]
        seen.update(following)
        frontier = following
    return None


def with_layer_outputs(model_path: Path, n_layers: int) -> tuple[bytes, list[str]]:
    """The model (graph only; weights stay in the external data) with `layer_output.{i}` graph outputs added
    through Identity nodes. Returns (serialized model, the original tensor names found)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    found = find_layer_outputs(graph, n_layers)
    elem_type = next(i.type.tensor_type.elem_type for i in graph.input if i.name == io_spec.past_key(0))
    for i, tensor in enumerate(found):
        graph.node.append(helper.make_node("Identity", [tensor], [layer_output_name(i)],
                                           name=f"validate_layer_output_{i}"))
        graph.output.append(helper.make_tensor_value_info(layer_output_name(i), elem_type, None))
    return model.SerializeToString(), found


def ort_layer_runner(model_path: Path, args):
    """An OrtRunner over the model with layer outputs exposed; returns (runner, tensor names found)."""
    from .runners import OrtRunner

    model_path = Path(model_path)
    serialized, found = with_layer_outputs(model_path, args.n_layers)
    return OrtRunner(serialized, args, external_data_dir=model_path.parent.absolute()), found


__all__ = ["TorchLayerRunner", "find_layer_outputs", "layer_output_name", "ort_layer_runner", "with_layer_outputs"]
