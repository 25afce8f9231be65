"""Helpers shared by the TensorRT plugin registrations (imported only where full TensorRT is installed)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .triton_aot import PtxKernel

# TensorRT DataType name -> the dtype names of spec.py.
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16"}
TYPE_COMBINATION = "FP32|FP16|BF16"  # positions paired index-wise: all FP32, all FP16 or all BF16


def dtype_name(trt_dtype) -> str:
    name = getattr(trt_dtype, "name", str(trt_dtype)).upper()
    if name not in TRT_DTYPES:
        raise ValueError(f"unsupported TensorRT dtype {trt_dtype}; the plugins take {sorted(TRT_DTYPES.values())}")
    return TRT_DTYPES[name]


def constant_dim(expr, what: str) -> int:
    """A dim the kernel is specialised on (block size) must be known when the engine is built."""
    if not expr.is_constant:
        raise ValueError(f"{what} must be a static dimension to compile the plugin kernel")
    return int(expr.constant_value)


def compute_capability() -> int | None:
    """LLAMA_EXPORT_CUDA_ARCH (e.g. 90) pins the PTX target; otherwise the builder's current GPU."""
    value = os.environ.get("LLAMA_EXPORT_CUDA_ARCH")
    return int(value) if value else None


def aot_result(kernel: PtxKernel, grid, extra_args):
    """(kernel name, PTX, launch params, extra int32 args) for @trtp.aot_impl."""
    import tensorrt.plugin as trtp

    launch = trtp.KernelLaunchParams()
    launch.grid_x = grid[0]
    launch.block_x = kernel.num_warps * 32
    launch.shared_mem = kernel.shared_bytes
    args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in extra_args])
    return kernel.name.encode(), kernel.ptx.encode(), launch, args
