"""Builder selection and parser errors, with the real TensorRT-RTX parser where it is installed."""

import importlib.util

import onnx
import pytest
from onnx import TensorProto, helper

from llama_export.config import ModelArgs
from llama_export.engine.builder import EngineError, build_engine, find_builder
from llama_export.errors import UserError

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt-rtx-cu13 is not installed (pip install '.[tensorrt-rtx]')")


def test_unknown_builder_is_a_user_error():
    with pytest.raises(UserError, match="unknown builder"):
        find_builder("tensorflow")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="full TensorRT is installed here")
def test_missing_builder_names_the_install_command():
    with pytest.raises(UserError, match=r"pip install 'llama-export\[tensorrt"):
        find_builder("tensorrt")


@needs_rtx
def test_parser_error_names_the_failing_node_and_op(tmp_path):
    # A node of an op no parser knows, without a plugin: the error must point at it.
    x = helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("MysteryNorm", ["input_ids"], ["logits"], name="layers.0.mystery", domain="example.ops")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.ops", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    args = ModelArgs(dim=64, n_layers=1, n_heads=1, vocab_size=4)
    with pytest.raises(EngineError) as info:
        build_engine(path, args, tmp_path / "engine.plan")
    message = str(info.value)
    assert "layers.0.mystery" in message and "MysteryNorm" in message
    assert "\n" not in message
    assert not (tmp_path / "engine.plan").exists()
