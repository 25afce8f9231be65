"""The memory roofline of a decode step: bytes it must read (weights + KV cache) over the rate this machine
streams weights at (an fp32 GEMV in ONNX Runtime). Used by peers.py for every row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np


def weight_bytes_per_token(model_path: Path) -> int:
    """Bytes a decode step reads from initializers: all of them, except the embedding table (one row)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    sizes = {}
    packed = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}  # two per byte (numpy's int4 itemsize says 1)
    for init in model.graph.initializer:
        itemsize = 0.5 if init.data_type in packed else onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        sizes[init.name] = int(np.prod(init.dims, dtype=np.int64) * itemsize)
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in sizes}
    table = max(gathered, key=sizes.get, default=None)
    row = sizes[table] // max(1, next(i.dims[0] for i in model.graph.initializer if i.name == table)) if table else 0
    return sum(sizes.values()) - (sizes[table] - row if table else 0)


GEMV_CODE = """
import statistics, sys, time
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
threads, k, n = int(sys.argv[1]), 4096, 32768
w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n), dtype=np.float32), "w")
graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemv",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [w])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
options = ort.SessionOptions(); options.intra_op_num_threads = threads; options.inter_op_num_threads = 1
session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
x = np.ones((1, k), np.float32); session.run(None, {"x": x}); times = []
for _ in range(20):
    start = time.perf_counter(); session.run(None, {"x": x}); times.append(time.perf_counter() - start)
print(k * n * 4 / statistics.median(times) / 1e9)
"""


def gemv_bandwidth(threads: int) -> float:
    """GB/s of one fp32 GEMV over a 512 MB weight in ONNX Runtime (MLAS, same threads; median of 20): the
    weight-streaming rate a decode step can reach here, so bytes/token over it is the memory roofline."""
    done = subprocess.run([sys.executable, "-c", GEMV_CODE, str(threads)], check=True, capture_output=True,
                          text=True)
    return float(done.stdout.strip().splitlines()[-1])
