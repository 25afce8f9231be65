"""Ahead-of-time compilation of the plugin kernels to PTX, as TensorRT's aot_impl needs it.

The one module that touches OpenAI Triton's undocumented compiler API (triton.compile, triton.compiler.ASTSource,
triton.runtime.driver.active, triton.backends.compiler.GPUTarget and the compiled kernel's metadata / asm):
Triton documents only writing kernels (triton.jit, triton.language), and these change between minor releases
(ASTSource's `constants` became `constexprs` in 3.2). Everything else sees a `PtxKernel`;
tests/plugins/test_triton_aot.py pins the signatures used here and pyproject caps `triton` below the next minor.

Compiling needs no GPU (Triton ships ptxas), so the AOT path is exercised on CPU too; only launching it
inside a TensorRT engine needs one. It must run in a process without TRITON_INTERPRET=1: that mode turns
every @triton.jit function, triton.language's own included, into a Python function that cannot be compiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget

TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class PtxKernel:
    """What a TensorRT AOT plugin needs of a compiled kernel."""

    name: str  # the PTX entry point
    ptx: str
    num_warps: int
    shared_bytes: int  # dynamic shared memory to launch with
    scratch_bytes: int  # global + profiler scratch Triton's own launcher would allocate; a TensorRT launch has none


def cuda_target(compute_capability: int | None = None) -> GPUTarget:
    """The given compute capability (e.g. 90), else the current GPU's."""
    if compute_capability is None:
        return triton.runtime.driver.active.get_current_target()
    return GPUTarget("cuda", compute_capability, 32)


def compile_kernel(kernel, signature: dict[str, str], constexprs: dict, num_warps: int,
                   compute_capability: int | None = None) -> PtxKernel:
    """triton.compile of `kernel`; constexprs also appear in the signature as 'constexpr' (Triton >= 3.2)."""
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    # fp fusion (FMA) stated explicitly: Triton 3.9 warns that its default flips in 3.10.
    options = {"num_warps": num_warps, "enable_fp_fusion": True}
    compiled = triton.compile(source, target=cuda_target(compute_capability), options=options)
    meta = compiled.metadata
    # Older Triton records neither scratch size; newer ones may add the profiler's.
    scratch = getattr(meta, "global_scratch_size", 0) + getattr(meta, "profile_scratch_size", 0)
    return PtxKernel(meta.name, compiled.asm["ptx"], meta.num_warps, meta.shared, scratch)
