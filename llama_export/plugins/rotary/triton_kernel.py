"""RotaryEmbedding as an OpenAI Triton kernel: one program per (batch, head, position) row, fp32 math.

Each program loads the two halves of a pair set (i, i + head_dim/2), or (2i, 2i+1) when INTERLEAVED, and
writes y_a = a*cos_a - b*sin_a, y_b = b*cos_b + a*sin_b: x*cos + rotate(x)*sin of the reference. The
argument order is TensorRT's AOT plugin convention (input pointers, int32 scalars, output pointers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton
import triton.language as tl

from .. import spec

if TYPE_CHECKING:
    from ..triton_aot import PtxKernel

NUM_WARPS = 1  # a row is at most 128 elements


@triton.jit
def rotary_kernel(x_ptr, cos_ptr, sin_ptr, n_heads, seq, head_dim, y_ptr,
                  INTERLEAVED: tl.constexpr, HALF_BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # over batch * heads * seq, x contiguous [b, h, s, d]
    batch = row // (n_heads * seq)
    table_row = batch * seq + row % seq  # cos/sin [b, 1, s, d]
    i = tl.arange(0, HALF_BLOCK)
    mask = i < head_dim // 2
    if INTERLEAVED:
        ia = 2 * i
        ib = 2 * i + 1
    else:
        ia = i
        ib = i + head_dim // 2
    x_row = x_ptr + row * head_dim
    t_row = table_row * head_dim
    a = tl.load(x_row + ia, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(x_row + ib, mask=mask, other=0.0).to(tl.float32)
    cos_a = tl.load(cos_ptr + t_row + ia, mask=mask, other=0.0)
    sin_a = tl.load(sin_ptr + t_row + ia, mask=mask, other=0.0)
    cos_b = tl.load(cos_ptr + t_row + ib, mask=mask, other=0.0)
    sin_b = tl.load(sin_ptr + t_row + ib, mask=mask, other=0.0)
    y_row = y_ptr + row * head_dim
    tl.store(y_row + ia, (a * cos_a - b * sin_a).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_row + ib, (b * cos_b + a * sin_b).to(y_ptr.dtype.element_ty), mask=mask)


def half_block(head_dim: int) -> int:
    return triton.next_power_of_2(head_dim // 2)


def grid(x_shape) -> tuple:
    """One program per row of head_dim; works on ints and on TensorRT symbolic dims alike."""
    return (x_shape[0] * x_shape[1] * x_shape[2],)


def rotary_embedding(x, cos, sin, interleaved: int = 0):
    """torch launcher: x [b, h, s, d] (fp32/fp16/bf16), cos/sin [b, 1, s, d] fp32; returns a new tensor."""
    import torch

    spec.rotary_output(x.shape, _dtype(x), cos.shape, _dtype(cos), sin.shape, _dtype(sin))
    x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
    y = torch.empty_like(x)
    _, n_heads, seq, head_dim = x.shape
    rotary_kernel[grid(x.shape)](x, cos, sin, n_heads, seq, head_dim, y, INTERLEAVED=int(interleaved),
                                 HALF_BLOCK=half_block(head_dim), num_warps=NUM_WARPS)
    return y


def _dtype(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def compile_for_cuda(dtype: str, head_dim: int, interleaved: int, compute_capability: int | None = None) -> PtxKernel:
    """PTX for one dtype and head_dim (TensorRT's aot_impl)."""
    from ..triton_aot import TRITON_DTYPES, compile_kernel

    ptr = "*" + TRITON_DTYPES[dtype]
    signature = {"x_ptr": ptr, "cos_ptr": "*fp32", "sin_ptr": "*fp32", "n_heads": "i32", "seq": "i32",
                 "head_dim": "i32", "y_ptr": ptr}
    return compile_kernel(rotary_kernel, signature,
                          {"INTERLEAVED": int(interleaved), "HALF_BLOCK": half_block(head_dim)},
                          NUM_WARPS, compute_capability)
