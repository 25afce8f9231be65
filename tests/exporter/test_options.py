"""ExportOptions checks itself on construction, and filling in the quantization defaults leaves it unchanged."""

from __future__ import annotations

import dataclasses

import pytest

from llama_export.build import BuildOptions
from llama_export.config import ModelArgs
from llama_export.errors import UserError
from llama_export.exporter.options import ExportOptions, prepare_quantization
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.graphs.quantize import QuantOptions

ARGS = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"target": "cuda"}, "unknown target 'cuda'"),
    ({"opset": 17}, "--opset 17 is too old"),
    ({"target": "onnx", "opset": 20}, "--target onnx needs --opset 23"),
    ({"precision": "fp16", "float_dtype": "fp32"}, "contradicts --precision fp16"),
    ({"precision": "int8-wo", "float_dtype": "fp64"}, "unknown --float-dtype 'fp64'"),
    ({"precision": "int8", "float_dtype": "bf16"}, "not bf16"),
    ({"precision": "int8-wo", "float_dtype": "fp16", "opset": 18}, "needs --opset 19"),
    ({"precision": "fp32", "quantization": QuantOptions("int8-wo")}, "do not fit --precision fp32"),
    ({"precision": "int8", "quantization": QuantOptions("int8-wo")}, "do not fit --precision int8"),
])
def test_invalid_options_are_refused_on_construction(kwargs, message):
    with pytest.raises(UserError, match=message):
        ExportOptions(**kwargs)


def test_replace_checks_again():
    with pytest.raises(UserError, match="unknown precision"):
        dataclasses.replace(ExportOptions(), precision="int3")


def test_float_dtype_of_each_precision():
    assert [ExportOptions(p).dtype_name for p in ("fp32", "fp16", "bf16", "int8-wo")] == ["fp32", "fp16", "bf16",
                                                                                          "fp32"]
    assert ExportOptions("int8-wo", float_dtype="bf16").dtype_name == "bf16"
    assert ExportOptions("fp16", float_dtype="fp16").dtype_name == "fp16"


def test_default_quantization_is_a_new_object():
    options = ExportOptions("int8-wo")
    filled = options.with_default_quantization(RandomCheckpoint(ARGS))
    assert options.quantization is None  # the caller's object is unchanged (and frozen)
    assert filled.quantization == QuantOptions("int8-wo") and filled.precision == "int8-wo"
    assert filled.with_default_quantization(RandomCheckpoint(ARGS)) is filled
    assert ExportOptions("fp16").with_default_quantization(RandomCheckpoint(ARGS)).quantization is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.precision = "fp32"


@pytest.mark.parametrize(("precision", "kwargs", "message"), [
    ("fp16", {"quantize_lm_head": True}, "--quantize-"),
    ("fp16", {"samples": 4}, "--calibration-samples"),
    ("fp16", {"alpha": 0.5}, "--alpha apply to --precision int8, not fp16"),
    ("int8-wo", {"alpha": 0.5}, "int8-wo needs no calibration"),
])
def test_quantization_flags_that_do_not_apply(precision, kwargs, message):
    with pytest.raises(UserError, match=message):
        prepare_quantization(RandomCheckpoint(ARGS), precision, **kwargs)


def test_build_options_check_the_engine_mode():
    with pytest.raises(UserError, match="--engine must be one of"):
        BuildOptions(engine="maybe")
    assert BuildOptions().export == ExportOptions()
