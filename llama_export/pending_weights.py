"""Weights declared in the graph before their bytes exist: `PendingWeight` placeholders on the meta device.

The exporter traces on the meta device and streams the weight bytes while graph passes run (exporter/weights.py);
the passes (graphs/) declare new weights the same way (quantized weights and scales). Both layers use this
module, so graphs/ needs nothing from exporter/.
"""

from __future__ import annotations

import onnx_ir as ir
import torch


class PendingWeight(ir.tensor_adapters.TorchTensor):
    """A declared weight whose bytes are still streaming: a meta tensor with shape, dtype and size, no data.

    Graph passes run on these while the stream writes (export.export_onnx). Reading one raises
    FileNotFoundError, which onnxscript's pattern matcher takes as "constant value not available" (a weight is
    never the scalar constant a pattern looks for), and which fails loudly anywhere else."""

    def __init__(self, tensor: torch.Tensor, name: str | None = None):
        if tensor.dtype == torch.int4:  # onnx-ir's torch adapter has no int4 mapping (packed INT4 weights)
            ir.Tensor.__init__(self, tensor, dtype=ir.DataType.INT4, name=name)
        else:
            super().__init__(tensor, name=name)

    def numpy(self):
        raise FileNotFoundError(f"{self.name}: this weight is still being written (no bytes before attach)")

    def tobytes(self) -> bytes:
        raise FileNotFoundError(f"{self.name}: this weight is still being written (no bytes before attach)")


def mark_pending(model: ir.Model) -> None:
    """The tracer's meta initializers become PendingWeight placeholders."""
    for name, value in model.graph.initializers.items():
        if is_meta(value.const_value) and not isinstance(value.const_value, PendingWeight):
            value.const_value = PendingWeight(value.const_value.raw, name=name)


def meta_initializer(graph: ir.Graph, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> ir.Value:
    """Declare a weight initializer without data (a PendingWeight, like the tracer's); `attach` gives it bytes."""
    tensor = PendingWeight(torch.empty(shape, dtype=dtype, device="meta"), name=name)
    value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def is_meta(tensor) -> bool:
    raw = getattr(tensor, "raw", None)
    return isinstance(raw, torch.Tensor) and raw.device.type == "meta"


__all__ = ["PendingWeight", "is_meta", "mark_pending", "meta_initializer"]
