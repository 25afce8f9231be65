"""RMSNorm as an OpenAI Triton kernel: one program per row, fp32 reduction, the reference model's cast order.

The argument order is TensorRT's AOT plugin convention (input pointers, int32 scalars, output pointers), so
tensorrt_plugin.py compiles this very function; the torch launcher below runs it for tests, on a GPU or on
CPU with TRITON_INTERPRET=1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton
import triton.language as tl

from .. import spec

if TYPE_CHECKING:
    from ..triton_aot import PtxKernel

NUM_WARPS = 4


@triton.jit
def rms_norm_kernel(x_ptr, w_ptr, n_cols, y_ptr, EPS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    mean_square = tl.sum(x * x, axis=0) / n_cols
    inv_rms = 1.0 / tl.sqrt(mean_square + EPS)
    # Round to the I/O type before the weight, as model.RMSNorm does (normed.type_as(x) * weight).
    normed = (x * inv_rms).to(y_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * n_cols + cols, (normed * w).to(y_ptr.dtype.element_ty), mask=mask)


def block_size(n_cols: int) -> int:
    """The whole row in one block: hidden sizes are at most 8192 in the size table."""
    return triton.next_power_of_2(n_cols)


def grid(shape) -> tuple:
    """One program per row; works on ints and on TensorRT symbolic dims alike."""
    rows = 1
    for d in shape[:-1]:
        rows = rows * d
    return (rows,)


def rms_norm(x, weight, epsilon: float = spec.RMSNORM.attribute("epsilon").default):
    """torch launcher: x [..., hidden], weight [hidden], same dtype; returns a new tensor like x."""
    import torch

    spec.rms_norm_output(x.shape, _dtype(x), weight.shape, _dtype(weight))
    x, weight = x.contiguous(), weight.contiguous()
    y = torch.empty_like(x)
    n_cols = x.shape[-1]
    rms_norm_kernel[grid(x.shape)](x, weight, n_cols, y, EPS=float(epsilon), BLOCK=block_size(n_cols),
                                   num_warps=NUM_WARPS)
    return y


def _dtype(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def compile_for_cuda(dtype: str, n_cols: int, epsilon: float, compute_capability: int | None = None) -> PtxKernel:
    """PTX for one dtype and hidden size (TensorRT's aot_impl): epsilon and the block are compiled in."""
    from ..triton_aot import TRITON_DTYPES, compile_kernel

    ptr = "*" + TRITON_DTYPES[dtype]
    return compile_kernel(rms_norm_kernel, {"x_ptr": ptr, "w_ptr": ptr, "n_cols": "i32", "y_ptr": ptr},
                          {"EPS": float(epsilon), "BLOCK": block_size(n_cols)}, NUM_WARPS, compute_capability)
