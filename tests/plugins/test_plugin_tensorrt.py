"""TensorRT AOT plugins: build an engine from an ONNX graph with llama_export nodes and run it.

Needs an NVIDIA GPU, full TensorRT with `tensorrt.plugin`, Triton and a CUDA torch: `pytest -m gpu`.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from llama_export.plugins import spec
from llama_export.plugins.rmsnorm.reference import rms_norm
from llama_export.plugins.rotary.reference import rotary_embedding

pytestmark = pytest.mark.gpu


def _trt():
    trt = pytest.importorskip("tensorrt", reason="full TensorRT is not installed (tensorrt_rtx has no plugins)")
    pytest.importorskip("tensorrt.plugin", reason="this TensorRT has no Python plugin module")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of torch")
    return trt, torch


def _engine_run(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> np.ndarray:
    trt, torch = _trt()
    from llama_export.plugins.rmsnorm import tensorrt_plugin as rms_plugin
    from llama_export.plugins.rotary import tensorrt_plugin as rotary_plugin

    rms_plugin.register()
    rotary_plugin.register()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model_bytes), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert plan is not None
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    tensors = {n: torch.from_numpy(a).cuda() for n, a in feeds.items()}
    first = next(iter(feeds.values()))
    tensors["y"] = torch.empty(first.shape, dtype=torch.from_numpy(first).dtype, device="cuda")
    for name, t in tensors.items():
        context.set_tensor_address(name, t.data_ptr())
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    return tensors["y"].cpu().numpy()


def _model(node, feeds: dict[str, np.ndarray]) -> bytes:
    info = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in feeds.items()]
    first = next(iter(feeds.values()))
    out = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(first.dtype), first.shape)
    graph = helper.make_graph([node], "g", info, [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_rms_norm_engine(dtype):
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 7, 4096)).astype(dtype),
             "weight": (1 + 0.1 * rng.standard_normal(4096)).astype(dtype)}
    y = _engine_run(_model(spec.make_node("RMSNorm", ["x", "weight"], ["y"], epsilon=1e-6), feeds), feeds)
    np.testing.assert_allclose(y.astype(np.float32), rms_norm(**feeds, epsilon=1e-6).astype(np.float32),
                               atol=2e-3 if dtype == np.float16 else 1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_rotary_engine(dtype):
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 8, 7, 128)).astype(dtype),
             "cos": rng.standard_normal((2, 1, 7, 128)).astype(np.float32),
             "sin": rng.standard_normal((2, 1, 7, 128)).astype(np.float32)}
    y = _engine_run(_model(spec.make_node("RotaryEmbedding", ["x", "cos", "sin"], ["y"]), feeds), feeds)
    np.testing.assert_allclose(y.astype(np.float32), rotary_embedding(**feeds).astype(np.float32),
                               atol=2e-3 if dtype == np.float16 else 1e-5)
