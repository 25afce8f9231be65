"""Real TensorRT-RTX builds (CPU) of exported tiny models, with both optimization profiles."""

import importlib.util

import pytest

from llama_export import io_spec
from llama_export.config import ModelArgs
from llama_export.engine.builder import build_engine
from llama_export.engine.profiles import ProfileLimits, input_shapes
from llama_export.exporter.checkpoints import RandomCheckpoint
from llama_export.exporter.export import export_onnx

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="tensorrt-rtx-cu13 is not installed (pip install '.[tensorrt-rtx]')")

ARGS = ModelArgs(dim=128, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=96, multiple_of=32, max_seq_len=256)
LIMITS = ProfileLimits(max_batch=2, max_input=16, max_seq=64)


@pytest.mark.parametrize(("target", "precision"), [("none", "fp32"), ("none", "fp16"), ("onnx", "fp32"),
                                                  ("onnx", "fp16")])
def test_export_builds_with_prefill_and_decode_profiles(tmp_path, target, precision):
    exported = export_onnx(RandomCheckpoint(ARGS, seed=2), tmp_path, precision, target=target)
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
        assert built.graph_changes == (dropped if precision == "fp16" else [])


def test_timing_cache_is_not_faked_with_tensorrt_rtx(tmp_path):
    # TensorRT-RTX's timing-cache calls are no-ops: no file may pretend to hold one.
    exported = export_onnx(RandomCheckpoint(ARGS, seed=2), tmp_path, "fp32")
    cache = tmp_path / "timing.cache"
    built = build_engine(exported.model_path, ARGS, tmp_path / "a.plan", LIMITS, builder="tensorrt-rtx",
                         timing_cache=cache)
    assert built.timing_cache is None and not cache.exists()
