"""spec.py: node construction, attribute round trip, shape/type rules, schema registration."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from llama_export.plugins import onnx_support, spec


def test_make_node_fills_defaults_and_tensorrt_attributes():
    node = spec.make_node("RMSNorm", ["x", "w"], ["y"], name="norm")
    assert (node.domain, node.op_type, node.name) == ("llama_export", "RMSNorm", "norm")
    assert spec.node_attributes(node) == {"epsilon": pytest.approx(1e-5), "plugin_namespace": "llama_export",
                                          "aot": 1}


@pytest.mark.parametrize("op, attrs", [("RMSNorm", {"epsilon": 1e-6}), ("RotaryEmbedding", {"interleaved": 1}),
                                       ("RotaryEmbedding", {"interleaved": 0, "aot": 0})])
def test_attributes_round_trip(op, attrs):
    n_in = len(spec.OPS[op].inputs)
    node = spec.make_node(op, [f"i{k}" for k in range(n_in)], ["y"], **attrs)
    read = spec.node_attributes(node)
    assert {k: read[k] for k in attrs} == pytest.approx(attrs)


def test_without_tensorrt_attributes():
    node = spec.make_node(spec.ROTARY, ["x", "c", "s"], ["y"], tensorrt=False)
    assert [a.name for a in node.attribute] == ["interleaved"]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"eps": 1e-6}, "no attribute(s) ['eps']"),
    ({"interleaved": 2}, "must be one of (0, 1)"),
    ({"interleaved": 0.5}, "must be an int"),
])
def test_make_node_rejects(kwargs, fragment):
    op = "RMSNorm" if "eps" in kwargs else "RotaryEmbedding"
    n_in = len(spec.OPS[op].inputs)
    with pytest.raises(ValueError) as err:
        spec.make_node(op, [f"i{k}" for k in range(n_in)], ["y"], **kwargs)
    assert fragment in str(err.value)


def test_make_node_rejects_wrong_arity():
    with pytest.raises(ValueError, match="takes inputs"):
        spec.make_node("RotaryEmbedding", ["x"], ["y"])


def test_shape_rules():
    assert spec.rms_norm_output((2, 7, 100), "float16", (100,), "float16") == ((2, 7, 100), "float16")
    assert spec.rotary_output((1, 8, 7, 80), "bfloat16", (1, 1, 7, 80), "float32", (1, 1, 7, 80), "float32") \
        == ((1, 8, 7, 80), "bfloat16")
    bad = [
        lambda: spec.rms_norm_output((2, 100), "float16", (100,), "float32"),
        lambda: spec.rms_norm_output((2, 100), "float32", (64,), "float32"),
        lambda: spec.rms_norm_output((2, 100), "int8", (100,), "int8"),
        lambda: spec.rotary_output((1, 8, 7, 80), "float16", (1, 1, 7, 80), "float16", (1, 1, 7, 80), "float16"),
        lambda: spec.rotary_output((8, 7, 80), "float32", (1, 7, 80), "float32", (1, 7, 80), "float32"),
        lambda: spec.rotary_output((1, 8, 7, 81), "float32", (1, 1, 7, 81), "float32", (1, 1, 7, 81), "float32"),
        lambda: spec.rotary_output((1, 8, 7, 80), "float32", (1, 8, 7, 80), "float32", (1, 1, 7, 80), "float32"),
    ]
    for rule in bad:
        with pytest.raises(ValueError):
            rule()


def test_symbolic_dims_pass_the_rules():
    batch = object()  # stands for a TensorRT symbolic dim: only int dims are compared
    assert spec.rotary_output((batch, 8, 7, 64), "float32", (batch, 1, 7, 64), "float32", (batch, 1, 7, 64),
                              "float32")[0][0] is batch


def test_schema_registration_is_idempotent_and_checks_models():
    onnx_support.register_schemas()
    onnx_support.register_schemas()
    for op in spec.OPS.values():
        schema = onnx.defs.get_schema(op.name, spec.VERSION, spec.DOMAIN)
        assert [i.name for i in schema.inputs] == [p.name for p in op.inputs]
        assert {a for a in schema.attributes} == {a.name for a in op.all_attributes}
    node = spec.make_node("RMSNorm", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 8]),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT16, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 8])])
    model = onnx_support.add_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.checker.check_model(model, full_check=True)
