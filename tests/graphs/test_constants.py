"""graphs.constants: one-element constants read through onnx-ir's public API; streamed weights never read."""

import numpy as np
import onnx_ir as ir
import torch

from llama_export.graphs.constants import is_scalar, scalar_value
from llama_export.pending_weights import PendingWeight


def test_one_element_initializer_and_constant_node():
    init = ir.Value(name="eps", const_value=ir.tensor(np.array([1e-5], dtype=np.float32)))
    assert abs(scalar_value(init) - 1e-5) < 1e-12
    node = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(2, dtype=np.int64))})
    assert is_scalar(node.outputs[0], 2) and not is_scalar(node.outputs[0], 1)


def test_not_a_scalar():
    assert scalar_value(ir.Value(name="v", const_value=ir.tensor(np.zeros(3, np.float32)))) is None
    assert scalar_value(ir.Value(name="x")) is None and scalar_value(None) is None


def test_a_streamed_weight_is_not_read():
    pending = PendingWeight(torch.empty((4, 4), device="meta"), name="w")
    assert scalar_value(ir.Value(name="w", const_value=pending)) is None  # numpy() would raise FileNotFoundError
