"""Run a built engine through the shared Runner protocol (needs an NVIDIA GPU and full TensorRT).

Kept thin on purpose: profiles, I/O names and the KV loop come from the tested code (engine/profiles.py,
io_spec.py, validate/runners.KVSession); only buffer handling lives here. Buffers are torch CUDA tensors.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .. import io_spec
from ..config import ModelArgs
from ..errors import UserError

PREFILL, DECODE = 0, 1  # profile indices, in the order engine/builder.py adds them


def runtime_mismatches(engine_manifest: dict, trt_version: str, gpu: str | None) -> list[str]:
    """Reasons an engine may not load or run as built: TensorRT plans are tied to the version (and, for full
    TensorRT, the GPU) they were built with."""
    problems = []
    built = engine_manifest.get("builder_version")
    if built and built != trt_version:
        problems.append(f"engine built with {engine_manifest.get('builder')} {built}, running {trt_version}")
    targets = " ".join(engine_manifest.get("compute_capabilities", []))
    if gpu and engine_manifest.get("builder") == "tensorrt" and targets and gpu.split()[0] not in targets:
        problems.append(f"engine built for {targets}, running on {gpu}")
    return problems


class TensorRTRunner:
    name = "tensorrt"

    def __init__(self, plan: Path, args: ModelArgs, engine_manifest: dict):
        try:
            import tensorrt as trt
            import torch
        except ImportError:
            raise UserError("the TensorRT backend needs full TensorRT and a CUDA torch on an NVIDIA GPU") from None
        if not torch.cuda.is_available():
            raise UserError("the TensorRT backend needs an NVIDIA GPU; none is visible")
        gpu = f"SM{''.join(map(str, torch.cuda.get_device_capability()))} {torch.cuda.get_device_name()}"
        for problem in runtime_mismatches(engine_manifest, trt.__version__, gpu):
            warnings.warn(f"{plan}: {problem}; rebuild the engine if it fails to load", stacklevel=2)
        self.trt, self.torch, self.args = trt, torch, args
        self.engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise UserError(f"{plan}: TensorRT could not deserialize the engine (version or GPU mismatch?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.profile = None
        kv_type = self.engine.get_tensor_dtype(io_spec.past_key(0))
        self.kv_dtype = np.dtype(trt.nptype(kv_type))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        past = feeds[io_spec.past_key(0)].shape[2]
        profile = PREFILL if past == 0 else DECODE
        if profile != self.profile:
            self.context.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self.profile = profile
        keep = []
        for name in io_spec.input_names(self.args.n_layers):
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in io_spec.output_names(self.args.n_layers):
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            out = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return {name: t.cpu().numpy() for name, t in outputs.items()}
