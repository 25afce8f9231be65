"""q/k/v and w1/w3 → one MatMul + Split: fires twice per layer, refuses near-misses, keeps ORT's outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from graph_helpers import TINY_GQA, TINY_MHA, cleaned, random_feeds, save

from llama_export.config import ModelArgs
from llama_export.graphs.fused_projections import fuse_group, fuse_projections
from llama_export.validate.runners import OrtRunner


def _ops(model: ir.Model, op: str) -> int:
    return sum(1 for n in model.graph if n.op_type == op)


def _run(model: ir.Model, path, args, dtype=np.float32) -> dict[str, np.ndarray]:
    runner = OrtRunner(save(model, path), args, graph_optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return runner.run(random_feeds(args, dtype=dtype))


@pytest.mark.parametrize("args", [TINY_MHA, TINY_GQA], ids=["mha", "gqa"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fires_twice_per_layer_and_keeps_outputs(tmp_path, args, precision):
    dtype = np.float32 if precision == "fp32" else np.float16
    before = _run(cleaned(args, precision), tmp_path / "before.onnx", args, dtype)
    model = cleaned(args, precision)
    matmuls = _ops(model, "MatMul")
    assert fuse_projections(model, args.n_layers) == 2 * args.n_layers
    # 7 projections per layer become 4 (qkv, wo, w1w3, w2): 3 MatMuls fewer per layer, one Split per group.
    assert _ops(model, "MatMul") == matmuls - 3 * args.n_layers and _ops(model, "Split") >= 2 * args.n_layers
    after = _run(model, tmp_path / "after.onnx", args, dtype)
    tol = 1e-5 if precision == "fp32" else 2e-3
    for key, ref in before.items():
        np.testing.assert_allclose(after[key].astype(np.float32), ref.astype(np.float32), atol=tol, rtol=0,
                                   err_msg=key)


def test_refuses_siblings_that_do_not_share_the_input():
    model = cleaned(TINY_GQA)
    graph = model.graph
    wk_matmul = next(u.node for u in next(u.node for u in graph.initializers["layers.0.attention.wk.weight"].uses())
                     .outputs[0].uses())
    other = graph.inputs[0]  # any other value: k no longer reads attention_norm's output
    wk_matmul.replace_input_with(0, other)
    assert not fuse_group(graph, 0, "qkv")
    assert fuse_group(graph, 0, "gate_up") and fuse_group(graph, 1, "qkv")


def test_refuses_a_weight_with_a_second_reader():
    model = cleaned(TINY_GQA)
    graph = model.graph
    wv = graph.initializers["layers.1.attention.wv.weight"]
    extra = ir.node("Identity", [wv])
    graph.append(extra)
    graph.outputs.append(extra.outputs[0])  # keeps the second reader alive
    assert not fuse_group(graph, 1, "qkv")
    assert fuse_group(graph, 0, "qkv")


# vocab 2048: the calibration text of int8 (W8A8) is tokenized with the tiny asset's tokenizer
INT8_ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=2048, multiple_of=32, max_seq_len=128)


@pytest.mark.parametrize("method,fused_op", [("int8-wo", "MatMulNBits"), ("int8", "MatMulIntegerToFloat")])
def test_int8_weights_fuse_and_ort_folds_them(tmp_path, method, fused_op):
    """int8 q/k/v and w1/w3 fuse as DQ(Concat(int8), Concat(scales)) → MatMul; ORT folds the Concats and makes
    one int8 kernel per fused MatMul (4 per layer instead of 7); the graph computes what the unfused one does."""
    from llama_export.exporter.export import export_onnx
    from llama_export.exporter.options import ExportOptions, prepare_quantization
    from llama_export.exporter.random_init import RandomCheckpoint

    ckpt = RandomCheckpoint(INT8_ARGS, seed=1)
    quant = prepare_quantization(ckpt, method, samples=2)
    n = INT8_ARGS.n_layers
    results = {}
    for target in ("none", "ort"):
        (tmp_path / target).mkdir()
        results[target] = export_onnx(ckpt, tmp_path / target, ExportOptions(method, target=target, quantization=quant))
    counts = results["ort"].fusion_counts
    assert counts["fused_projections"] == 2 * n and counts["quantize_weights"] == 7 * n
    assert counts["quantize_activations"] == (4 * n if method == "int8" else 0)  # one pair per fused MatMul
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "ort" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx", load_external_data=False)
    assert sum(node.op_type == fused_op for node in optimized.graph.node) == 4 * n
    off = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graphs' own arithmetic (W8A8 on AVX2: test_quantize)
    outputs = {t: OrtRunner(tmp_path / t / "model.onnx", INT8_ARGS, graph_optimization_level=off)
               .run(random_feeds(INT8_ARGS)) for t in results}
    for key, ref in outputs["none"].items():
        np.testing.assert_allclose(outputs["ort"][key], ref, atol=1e-4, rtol=0, err_msg=key)


def test_onnx_target_keeps_int8_per_projection_so_tensorrt_builds(tmp_path):
    """TensorRT takes an int8 constant only straight into a DequantizeLinear, and engines are built from the
    `onnx` target: there int8 weights are not concatenated, and TensorRT-RTX builds the graph."""
    from llama_export.exporter.export import export_onnx
    from llama_export.exporter.options import ExportOptions
    from llama_export.exporter.random_init import RandomCheckpoint

    result = export_onnx(RandomCheckpoint(TINY_GQA, seed=1), tmp_path,
                         ExportOptions("int8-wo", target="onnx", float_dtype="fp16"))
    assert result.fusion_counts["fused_projections"] == 0 and result.fusion_counts["quantize_weights"] == 14
    pytest.importorskip("tensorrt_rtx")
    from llama_export.engine.builder import build_engine
    from llama_export.engine.profiles import ProfileLimits

    built = build_engine(tmp_path / "model.onnx", TINY_GQA, tmp_path / "engine.plan", ProfileLimits(1, 16, 32),
                         builder="tensorrt-rtx")
    assert built.plan.stat().st_size > 0
