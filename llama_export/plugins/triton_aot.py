"""Ahead-of-time compilation of the plugin kernels to PTX, as TensorRT's aot_impl needs it.

Compiling needs no GPU (Triton ships ptxas), so the AOT path is exercised on CPU too; only launching it
inside a TensorRT engine needs one. It must run in a process without TRITON_INTERPRET=1: that mode turns
every @triton.jit function, triton.language's own included, into a Python function that cannot be compiled.
"""

from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget

TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def cuda_target(compute_capability: int | None = None) -> GPUTarget:
    """The given compute capability (e.g. 90), else the current GPU's."""
    if compute_capability is None:
        return triton.runtime.driver.active.get_current_target()
    return GPUTarget("cuda", compute_capability, 32)


def compile_kernel(kernel, signature: dict[str, str], constexprs: dict, num_warps: int,
                   compute_capability: int | None = None):
    """triton.compile of `kernel`; constexprs also appear in the signature as 'constexpr' (Triton >= 3.2)."""
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    # fp fusion (FMA) stated explicitly: Triton 3.9 warns that its default flips in 3.10.
    options = {"num_warps": num_warps, "enable_fp_fusion": True}
    return triton.compile(source, target=cuda_target(compute_capability), options=options)
