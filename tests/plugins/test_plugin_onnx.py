"""The model-local ONNX functions run in ONNX Runtime and the reference evaluator; the numpy OpRuns too."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from llama_export.plugins import onnx_support, spec
from llama_export.plugins.rmsnorm.reference import RMSNorm, rms_norm
from llama_export.plugins.rotary.reference import RotaryEmbedding, rotary_embedding

ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}
TOLERANCE = {np.float32: 1e-5, np.float16: 2e-3}


def _model(node, inputs: dict[str, np.ndarray], opset: int, functions: bool = True) -> onnx.ModelProto:
    info = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in inputs.items()]
    first = next(iter(inputs.values()))
    out = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(first.dtype), first.shape)
    model = helper.make_model(helper.make_graph([node], "g", info, [out]),
                              opset_imports=[helper.make_opsetid("", opset),
                                             helper.make_opsetid(spec.DOMAIN, spec.VERSION)])
    return onnx_support.add_functions(model) if functions else model


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _rms_case(rng, dtype):
    feeds = {"x": rng.standard_normal((2, 7, 100)).astype(dtype),
             "weight": (1 + 0.1 * rng.standard_normal(100)).astype(dtype)}
    return spec.make_node("RMSNorm", ["x", "weight"], ["y"], epsilon=1e-6), feeds, rms_norm(**feeds, epsilon=1e-6)


def _rotary_case(rng, dtype, heads=8, head_dim=80):
    feeds = {"x": rng.standard_normal((2, heads, 7, head_dim)).astype(dtype),
             "cos": rng.standard_normal((2, 1, 7, head_dim)).astype(np.float32),
             "sin": rng.standard_normal((2, 1, 7, head_dim)).astype(np.float32)}
    return spec.make_node("RotaryEmbedding", ["x", "cos", "sin"], ["y"]), feeds, rotary_embedding(**feeds)


CASES = {"rmsnorm": _rms_case, "rotary": _rotary_case}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("opset", [18, 23])
def test_function_in_onnxruntime(case, dtype, opset, rng):
    node, feeds, expected = CASES[case](rng, dtype)
    actual = _ort(_model(node, feeds, opset), feeds)
    assert actual.dtype == expected.dtype
    np.testing.assert_allclose(actual.astype(np.float32), expected.astype(np.float32), rtol=TOLERANCE[dtype],
                               atol=TOLERANCE[dtype])


@pytest.mark.parametrize("case", CASES)
def test_reference_evaluator(case, rng):
    node, feeds, expected = CASES[case](rng, np.float32)
    # new_ops alone (no function in the model): proves the OpRun registration.
    by_op = ReferenceEvaluator(_model(node, feeds, 18, functions=False), new_ops=[RMSNorm, RotaryEmbedding])
    np.testing.assert_allclose(by_op.run(None, feeds)[0], expected, rtol=1e-5, atol=1e-5)
    by_function = ReferenceEvaluator(_model(node, feeds, 18))
    np.testing.assert_allclose(by_function.run(None, feeds)[0], expected, rtol=1e-5, atol=1e-5)


def test_gqa_q_and_k_share_tables(rng):
    """One graph with two rotary nodes (8 query heads, 2 kv heads) on the same cos/sin, as graphs/ emits."""
    _, feeds, _ = _rotary_case(rng, np.float32, heads=8, head_dim=64)
    k = rng.standard_normal((2, 2, 7, 64)).astype(np.float32)
    nodes = [spec.make_node("RotaryEmbedding", ["x", "cos", "sin"], ["y"], name="q_rope"),
             spec.make_node("RotaryEmbedding", ["k", "cos", "sin"], ["k_rot"], name="k_rope")]
    model = _model(nodes[0], feeds, 23)
    model.graph.node.append(nodes[1])
    model.graph.input.append(helper.make_tensor_value_info("k", TensorProto.FLOAT, k.shape))
    model.graph.output.append(helper.make_tensor_value_info("k_rot", TensorProto.FLOAT, k.shape))
    onnx_support.add_functions(model)
    assert len(model.functions) == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    q_rot, k_rot = session.run(None, {**feeds, "k": k})
    np.testing.assert_allclose(q_rot, rotary_embedding(**feeds), atol=1e-5)
    np.testing.assert_allclose(k_rot, rotary_embedding(k, feeds["cos"], feeds["sin"]), atol=1e-5)


def test_add_functions_refuses_what_it_cannot_decompose(rng):
    _, feeds, _ = _rotary_case(rng, np.float32)
    node = spec.make_node("RotaryEmbedding", ["x", "cos", "sin"], ["y"], name="r", interleaved=1)
    with pytest.raises(ValueError, match="interleaved=1"):
        _model(node, feeds, 23)
    node = spec.make_node("RotaryEmbedding", ["x", "cos", "sin"], ["y"])
    with pytest.raises(ValueError, match="opset >= 18"):
        _model(node, feeds, 17)
