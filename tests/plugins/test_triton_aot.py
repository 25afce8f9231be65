"""Pins what plugins/triton_aot.py, the one adapter over OpenAI Triton's undocumented compiler API, relies on, so a
Triton upgrade that moves it fails here rather than inside a TensorRT engine build on a GPU machine."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement  # pytest's own dependency

triton = pytest.importorskip("triton", reason="OpenAI Triton not installed (pip install -e .[plugins])")

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_installed_triton_is_inside_the_pinned_range():
    """pyproject caps `triton` below the next minor; a newer one needs this file's checks re-read first."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["plugins"]
    (requirement,) = [Requirement(r) for r in extras if Requirement(r).name == "triton"]
    assert any(spec.operator == "<" for spec in requirement.specifier), "triton needs an upper bound"
    assert requirement.specifier.contains(triton.__version__), (triton.__version__, str(requirement.specifier))


def test_compile_entry_points_take_the_arguments_used():
    assert _parameters(triton.compiler.ASTSource)[:3] == ["fn", "signature", "constexprs"]
    assert _parameters(triton.compile)[:3] == ["src", "target", "options"]
    from triton.backends.compiler import GPUTarget

    assert [f.name for f in dataclasses.fields(GPUTarget)] == ["backend", "arch", "warp_size"]


def test_options_passed_to_compile_exist():
    """triton.compile's options become the backend's option dataclass; a renamed one would be an error or ignored."""
    from triton.backends.nvidia.compiler import CUDAOptions

    assert {"num_warps", "enable_fp_fusion"} <= {f.name for f in dataclasses.fields(CUDAOptions)}


def test_current_target_comes_from_the_active_driver():
    """cuda_target(None) reads triton.runtime.driver.active.get_current_target(); the driver is created lazily
    (it needs a GPU), so the property and the CUDA driver's method are checked without calling them."""
    assert isinstance(inspect.getattr_static(type(triton.runtime.driver), "active"), property)
    from triton.backends import backends

    assert _parameters(backends["nvidia"].driver.get_current_target) == ["self"]


AOT_SCRIPT = """
from llama_export.plugins.rmsnorm import triton_kernel as r
from llama_export.plugins.rotary import triton_kernel as q
for k in (r.compile_for_cuda("float16", 4096, 1e-5, 80), q.compile_for_cuda("bfloat16", 128, 0, 90)):
    assert k.scratch_bytes == 0 and ".entry " + k.name in k.ptx
    print(k.name, k.num_warps, k.shared_bytes, len(k.ptx))
"""


def test_ahead_of_time_ptx_compiles_without_a_gpu():
    """What the TensorRT aot_impl returns, built on CPU (Triton ships ptxas); needs the interpreter off. This also
    pins the compiled kernel's metadata (name, num_warps, shared) and asm["ptx"]."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", AOT_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rms_norm_kernel 4" in done.stdout and "rotary_kernel 1" in done.stdout


def test_scratch_sizes_are_where_the_adapter_reads_them():
    """A kernel that needs scratch memory cannot run as a TensorRT plugin; the adapter reads the sizes with a
    default of 0 (older Triton records none), so a rename would hide them: pin the names on the installed one."""
    from triton.backends.nvidia.compiler import CUDABackend

    source = inspect.getsource(CUDABackend)
    assert 'metadata["global_scratch_size"]' in source and 'metadata["profile_scratch_size"]' in source
