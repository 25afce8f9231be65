"""Every target's graph matches Torch over prefill + 16 decode steps (KVSession: TorchRunner vs OrtRunner)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from graph_helpers import TINY_GQA, TINY_MHA, decode_logits, exported, ops, save, torch_model

from llama_export.config import SIZES
from llama_export.graphs import apply_target
from llama_export.validate.runners import OrtRunner, TorchRunner

STEPS = 16


def _compare(reference: list[np.ndarray], actual: list[np.ndarray], atol: float) -> None:
    for step, (ref, got) in enumerate(zip(reference, actual)):
        np.testing.assert_allclose(got, ref, atol=atol, rtol=0, err_msg=f"call {step}")


@pytest.mark.parametrize("target", ["onnx", "ort", "none", "plugin"])
@pytest.mark.parametrize("args", [TINY_MHA, TINY_GQA], ids=["mha", "gqa"])
def test_target_matches_torch(tmp_path, target, args, prompt):
    model, _ = apply_target(exported(args), args, target)
    runner = OrtRunner(save(model, tmp_path / "model.onnx"), args)
    reference = decode_logits(TorchRunner(torch_model(args)), prompt, STEPS)
    _compare(reference, decode_logits(runner, prompt, STEPS), 1e-4)


@pytest.mark.parametrize("target", ["onnx", "ort"])
def test_left_padded_batch(tmp_path, target):
    """Two rows, the second left-padded: the fused attention reads the additive mask like the reference."""
    args = TINY_GQA
    model, _ = apply_target(exported(args), args, target)
    runner = OrtRunner(save(model, tmp_path / "model.onnx"), args)
    ids = np.random.default_rng(1).integers(1, 100, size=(2, 6))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    reference = decode_logits(TorchRunner(torch_model(args)), ids, 4, mask)
    actual = decode_logits(runner, ids, 4, mask)
    for ref, got in zip(reference, actual):  # padded query rows are never used: compare real tokens only
        np.testing.assert_allclose(got[0], ref[0], atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[1, -min(got.shape[1], 3):], ref[1, -min(got.shape[1], 3):], atol=1e-4,
                                   rtol=0)


def test_plugin_target_in_reference_evaluator(prompt):
    """The plugin graph runs in onnx.reference through the numpy references of plugins/*/reference.py."""
    import onnx.reference

    from llama_export.plugins.rmsnorm.reference import RMSNorm
    from llama_export.plugins.rotary.reference import RotaryEmbedding

    args = TINY_MHA
    model, _ = apply_target(exported(args), args, "plugin")
    import onnx_ir as ir

    proto = ir.serde.serialize_model(model)
    del proto.functions[:]  # make the evaluator use the numpy references, not the decompositions
    evaluator = onnx.reference.ReferenceEvaluator(proto, new_ops=[RMSNorm, RotaryEmbedding])
    names = [o.name for o in proto.graph.output]

    class EvaluatorRunner:
        name, kv_dtype = "reference", np.dtype(np.float32)

        def __init__(self):
            self.args = args

        def run(self, feeds):
            return dict(zip(names, evaluator.run(None, feeds)))

    reference = decode_logits(TorchRunner(torch_model(args)), prompt, STEPS)
    _compare(reference, decode_logits(EvaluatorRunner(), prompt, STEPS), 1e-4)


def test_fp16_graphs_fuse_keep_fp32_islands_and_match_torch(tmp_path, prompt):
    """Every fused fp16 graph runs in ORT and is as close to the fp32 reference as Torch's own fp16 model is: at
    most 3x Torch's fp16-vs-fp32 distance over prefill + 4 decode steps (fp16 rounding of weights, matmuls and the
    KV cache; kernels accumulate differently)."""
    args = TINY_GQA
    reference = decode_logits(TorchRunner(torch_model(args)), prompt, 4)
    torch_fp16 = decode_logits(TorchRunner(torch_model(args, "fp16")), prompt, 4)
    torch_error = max(np.abs(ref16.astype(np.float32) - ref).max() for ref16, ref in zip(torch_fp16, reference))
    assert 0 < torch_error < 0.01 * max(np.abs(ref).max() for ref in reference)
    for target in ("onnx", "ort", "plugin"):
        model, counts = apply_target(exported(args, "fp16"), args, target)
        found = ops(model)
        assert counts["rms_norm"] == 2 * args.n_layers + 1 and counts["rotary"] == 2 * args.n_layers
        if target == "onnx":
            attention = [n for n in model.graph if n.op_type == "Attention"]
            assert all(n.attributes.get_int("softmax_precision") == 1 for n in attention)
            assert all(n.attributes.get_int("stash_type") == 1 for n in model.graph if n.op_type == "RMSNormalization")
        if target in ("onnx", "ort"):  # rotary runs on Cast(x, FLOAT) with fp32 caches
            rope = [n for n in model.graph if n.op_type == "RotaryEmbedding"]
            assert all(n.inputs[0].dtype == 1 for n in rope), found
        runner = OrtRunner(save(model, tmp_path / f"{target}.onnx"), args)
        assert runner.kv_dtype == np.float16
        actual = decode_logits(runner, prompt, 4)
        for step, (ref, got) in enumerate(zip(reference, actual)):
            error = np.abs(got.astype(np.float32) - ref).max()
            assert np.isfinite(got).all() and error <= 3 * torch_error, (target, step, error, torch_error)


def test_tiny_size_all_targets(tmp_path, prompt):
    """SIZES['tiny']'s shapes with random weights: every target within 1e-4 of Torch (the trained asset:
    tests/exporter/test_export.py)."""
    args = SIZES["tiny"]
    reference = decode_logits(TorchRunner(torch_model(args)), prompt, STEPS)
    for target in ("onnx", "ort", "none", "plugin"):
        model, _ = apply_target(exported(args), args, target)
        runner = OrtRunner(save(model, tmp_path / f"{target}.onnx"), args,
                           graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        _compare(reference, decode_logits(runner, prompt, STEPS), 1e-4)
