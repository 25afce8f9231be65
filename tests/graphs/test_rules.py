"""Each rewrite rule: fires the expected number of times on exported tiny models (opsets 18–23, fp32/fp16),
refuses near-miss graphs, and leaves ORT's outputs unchanged (ORT's own fusions disabled)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from graph_helpers import TINY_GQA, TINY_MHA, cleaned, exported, random_feeds, save

from llama_export.graphs import attention, cleanup, rms_norm, rotary, skip_norm
from llama_export.graphs.passes import FusionCountError, apply_target
from llama_export.validate.runners import OrtRunner

L = TINY_GQA.n_layers


def _count(model: ir.Model, op_type: str) -> int:
    return sum(1 for n in model.graph if n.op_type == op_type)


def _apply(model: ir.Model, ruleset) -> int:
    count = ruleset.apply_to_model(model)
    cleanup.remove_unused(model)
    return count


def _run(model: ir.Model, path, args) -> dict[str, np.ndarray]:
    runner = OrtRunner(save(model, path), args, graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return runner.run(random_feeds(args))


RULES = {  # name -> (ruleset factory(target, args), targets, expected count(args))
    "rms_norm": (lambda t, a: rms_norm.rules(t), ("onnx", "ort", "plugin"), lambda a: 2 * a.n_layers + 1),
    "rotary": (rotary.rules, ("onnx", "ort", "plugin"), lambda a: 2 * a.n_layers),
    "attention": (attention.rules, ("onnx", "ort"), lambda a: a.n_layers),
}
CASES = [(name, target) for name, (_, targets, _) in RULES.items() for target in targets]


@pytest.mark.parametrize("name,target", CASES)
@pytest.mark.parametrize("args", [TINY_MHA, TINY_GQA], ids=["mha", "gqa"])
def test_rule_fires_and_keeps_outputs(tmp_path, name, target, args):
    make, _, expected = RULES[name]
    before = _run(cleaned(args), tmp_path / "before.onnx", args)
    model = cleaned(args)
    if target == "plugin":
        from llama_export.graphs.passes import _attach_functions

        assert _apply(model, make(target, args)) == expected(args)
        _attach_functions(model)
    else:
        assert _apply(model, make(target, args)) == expected(args)
    after = _run(model, tmp_path / "after.onnx", args)
    for key, ref in before.items():
        np.testing.assert_allclose(after[key], ref, atol=1e-5, rtol=0, err_msg=key)


def test_skip_rms_norm_fires_on_residual_norms(tmp_path):
    args = TINY_GQA
    before = _run(cleaned(args), tmp_path / "before.onnx", args)
    model = cleaned(args)
    assert _apply(model, rms_norm.rules("ort")) == 2 * L + 1
    assert _apply(model, skip_norm.rules()) == 2 * L  # every norm but the first reads a residual Add
    after = _run(model, tmp_path / "after.onnx", args)
    for key, ref in before.items():
        np.testing.assert_allclose(after[key], ref, atol=1e-5, rtol=0, err_msg=key)


@pytest.mark.parametrize("opset", [18, 20, 22])
def test_rules_fire_at_older_opsets(opset):
    """The decomposed forms are the same at opsets 18–22 (the `onnx` target itself needs 23)."""
    model = cleaned(TINY_GQA, "fp32", opset)
    assert _apply(model, rms_norm.rules("plugin")) == 2 * L + 1
    assert _apply(model, rotary.rules("plugin", TINY_GQA)) == 2 * L
    model = cleaned(TINY_GQA, "fp32", opset)
    assert _apply(model, rotary.rules("ort", TINY_GQA)) == 2 * L
    assert _apply(model, attention.rules("ort", TINY_GQA, opset)) == L
    assert _count(model, "MultiHeadAttention") == L and _count(model, "Attention") == 0  # no ONNX Attention < 23


@pytest.mark.parametrize(("args", "op"), [(TINY_GQA, "Attention"), (TINY_MHA, "MultiHeadAttention")],
                         ids=["gqa", "mha"])
def test_ort_attention_op_avoids_repeating_the_cache(args, op):
    """`ort` at opset 23: GQA gets ONNX Attention (reads n_kv_heads; MHA would need the cache Expanded to
    n_heads every step), MHA models keep com.microsoft MultiHeadAttention."""
    model = cleaned(args, "fp32", 23)
    assert _apply(model, attention.rules("ort", args, 23)) == args.n_layers
    cleanup.remove_unused(model)
    assert _count(model, op) == args.n_layers and _count(model, "Expand") == 0


@pytest.mark.parametrize("precision", ["fp16"])
def test_rules_fire_through_casts(precision):
    for target in ("onnx", "plugin"):
        model = cleaned(TINY_GQA, precision)
        assert _apply(model, rms_norm.rules(target)) == 2 * L + 1
        assert _apply(model, rotary.rules(target, TINY_GQA)) == 2 * L
    model = cleaned(TINY_GQA, precision)
    assert _apply(model, attention.rules("onnx", TINY_GQA)) == L


# ---- near misses: edit one occurrence of an exported pattern, the rule must skip exactly that one -----------

def _first(model: ir.Model, op_type: str) -> ir.Node:
    return next(n for n in model.graph if n.op_type == op_type)


def _constant(model: ir.Model, array: np.ndarray, name: str) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    model.graph.register_initializer(value)
    return value


def _graph_input(model: ir.Model, like: ir.Value, name: str) -> ir.Value:
    value = ir.Value(name=name, shape=like.shape, type=like.type)
    model.graph.inputs.append(value)
    return value


def test_rms_norm_refuses_other_axis():
    model = cleaned(TINY_GQA)
    _first(model, "ReduceMean").replace_input_with(1, _constant(model, np.array([1], np.int64), "axis_1"))
    assert _apply(model, rms_norm.rules("onnx")) == 2 * L


def test_rms_norm_refuses_eps_from_graph_input():
    model = cleaned(TINY_GQA)
    add = next(n for n in model.graph if n.op_type == "Add" and n.inputs[0].producer() is not None
               and n.inputs[0].producer().op_type == "ReduceMean")
    add.replace_input_with(1, _graph_input(model, add.inputs[1], "eps"))
    assert _apply(model, rms_norm.rules("onnx")) == 2 * L


def test_rotary_refuses_cos_from_other_source():
    model = cleaned(TINY_GQA)
    cos = _first(model, "Cos").outputs[0]
    mul = next(u.node for u in cos.uses())
    mul.replace_input_with(1, _graph_input(model, cos, "other_cos"))
    assert _apply(model, rotary.rules("onnx", TINY_GQA)) == 2 * L - 1


def test_rotary_refuses_uneven_split():
    model = cleaned(TINY_GQA)
    split = _first(model, "Split")
    split.attributes["axis"] = ir.AttrInt64("axis", 2)
    assert _apply(model, rotary.rules("plugin", TINY_GQA)) == 2 * L - 1


def test_attention_refuses_wrong_scale():
    model = cleaned(TINY_GQA)
    _first(model, "Div").replace_input_with(1, _constant(model, np.array(3.0, np.float32), "not_sqrt_hd"))
    assert _apply(model, attention.rules("onnx", TINY_GQA)) == L - 1


def test_pipeline_names_the_pass_whose_count_is_off():
    model = exported(TINY_GQA)
    cleanup.cleanup(model)
    _first(model, "ReduceMean").replace_input_with(1, _constant(model, np.array([1], np.int64), "axis_1"))
    with pytest.raises(FusionCountError, match="'rms_norm'.*fired 4 times, expected 5"):
        apply_target(model, TINY_GQA, "onnx")


def test_onnx_target_needs_opset_23():
    with pytest.raises(ValueError, match="opset 23"):
        apply_target(exported(TINY_GQA, "fp32", 20), TINY_GQA, "onnx")
