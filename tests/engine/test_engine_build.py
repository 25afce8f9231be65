"""Real TensorRT-RTX builds (CPU) of exported tiny models, with both optimization profiles."""

import importlib.util

import pytest

from llama_export import io_spec
from llama_export.config import ModelArgs
from llama_export.engine.builder import build_engine
from llama_export.engine.profiles import ProfileLimits, input_shapes
from llama_export.exporter.export import export_onnx
from llama_export.exporter.options import ExportOptions
from llama_export.exporter.random_init import RandomCheckpoint

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="tensorrt-rtx-cu13 is not installed (pip install '.[tensorrt-rtx]')")

ARGS = ModelArgs(dim=128, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=96, multiple_of=32, max_seq_len=256)
LIMITS = ProfileLimits(max_batch=2, max_input=16, max_seq=64)


@pytest.mark.parametrize(("target", "precision", "float_dtype"), [
    ("none", "fp32", None), ("none", "fp16", None), ("onnx", "fp32", None), ("onnx", "fp16", None),
    ("none", "int8-wo", "fp32"), ("onnx", "int8-wo", "fp16"),  # W8A8: tests/graphs/test_quantize.py
])
def test_export_builds_with_prefill_and_decode_profiles(tmp_path, target, precision, float_dtype):
    exported = export_onnx(RandomCheckpoint(ARGS, seed=2), tmp_path,
                           ExportOptions(precision, target=target, float_dtype=float_dtype))
    built = build_engine(exported.model_path, ARGS, tmp_path / "engine.plan", LIMITS)
    assert (tmp_path / "engine.plan").stat().st_size > 0
    # The shapes TensorRT accepted (read back from its profile objects) are the io_spec-derived ones.
    expected = {p: {n: [list(s) for s in shapes] for n, shapes in per.items()}
                for p, per in input_shapes(ARGS, LIMITS).items()}
    assert built.profiles == expected
    prefill, decode = built.profiles["prefill"], built.profiles["decode"]
    assert prefill[io_spec.past_key(1)][2] == [2, 1, 0, 64]
    assert decode[io_spec.past_value(0)][2] == [2, 1, 63, 64]
    assert decode[io_spec.ATTENTION_MASK][2] == [2, 64]
    if target == "onnx":
        # The opset-23 Attention reaches TensorRT as IAttention, marked decomposable (TensorRT-RTX has no
        # dedicated kernel for it when building on CPU); the one attribute its parser refuses (fp16/bf16
        # softmax_precision) is dropped and recorded, not hidden.
        assert "ATTENTION_DECOMPOSABLE" in built.flags
        dropped = [f"softmax_precision dropped from {ARGS.n_layers} Attention nodes"]
        assert built.graph_changes == (dropped if "fp16" in (precision, float_dtype) else [])


@pytest.mark.parametrize("float_dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("method", ["int8-wo", "int8"])
def test_int8_tiny_model_builds_with_both_profiles(tmp_path, method, float_dtype):
    """The built-in tiny model's INT8 exports (weight-only, and W8A8 calibrated on its text) in fp32 and fp16."""
    from llama_export.exporter.options import prepare_quantization
    from llama_export.exporter.sources import resolve_checkpoint

    ckpt = resolve_checkpoint()
    quant = prepare_quantization(ckpt, method, samples=2)
    exported = export_onnx(ckpt, tmp_path, ExportOptions(method, float_dtype=float_dtype, quantization=quant))
    built = build_engine(exported.model_path, ckpt.args, tmp_path / "engine.plan", LIMITS)
    assert (tmp_path / "engine.plan").stat().st_size > 0
    expected = {p: {n: [list(s) for s in shapes] for n, shapes in per.items()}
                for p, per in input_shapes(ckpt.args, LIMITS).items()}
    assert built.profiles == expected and set(built.profiles) == {"prefill", "decode"}


@pytest.mark.parametrize("float_dtype", ["fp32", "fp16"])
def test_int4_tiny_model_builds_with_both_profiles(tmp_path, float_dtype):
    """The tiny model's int4-wo export (blocked INT4 DQ → MatMul) at the default block size 128: its w2 has 704
    inputs, which TensorRT only takes in whole blocks, so that linear gets block 64 (graphs/int4.py)."""
    from llama_export.exporter.options import prepare_int4
    from llama_export.exporter.sources import resolve_checkpoint

    ckpt = resolve_checkpoint()
    quant = prepare_int4(ckpt, int4_method="rtn")  # AWQ changes values, not the graph
    exported = export_onnx(ckpt, tmp_path, ExportOptions("int4-wo", float_dtype=float_dtype, quantization=quant))
    built = build_engine(exported.model_path, ckpt.args, tmp_path / "engine.plan", LIMITS)
    assert (tmp_path / "engine.plan").stat().st_size > 0
    expected = {p: {n: [list(s) for s in shapes] for n, shapes in per.items()}
                for p, per in input_shapes(ckpt.args, LIMITS).items()}
    assert built.profiles == expected and set(built.profiles) == {"prefill", "decode"}


def test_timing_cache_is_not_faked_with_tensorrt_rtx(tmp_path):
    # TensorRT-RTX's timing-cache calls are no-ops: no file may pretend to hold one.
    exported = export_onnx(RandomCheckpoint(ARGS, seed=2), tmp_path)
    cache = tmp_path / "timing.cache"
    built = build_engine(exported.model_path, ARGS, tmp_path / "a.plan", LIMITS, builder="tensorrt-rtx",
                         timing_cache=cache)
    assert built.timing_cache is None and not cache.exists()
