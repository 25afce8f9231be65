"""Triton kernels (CPU, TRITON_INTERPRET=1 from conftest) against the numpy references (AOT PTX compile:
test_triton_aot.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton", reason="OpenAI Triton not installed (pip install -e .[plugins])")

from llama_export.plugins.rmsnorm import reference as rms_ref
from llama_export.plugins.rmsnorm import triton_kernel as rms_triton
from llama_export.plugins.rotary import reference as rotary_ref
from llama_export.plugins.rotary import triton_kernel as rotary_triton

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _assert_close(actual: torch.Tensor, expected: np.ndarray, tolerance: float):
    assert _numpy(actual).dtype == expected.dtype
    np.testing.assert_allclose(actual.float().numpy(), expected.astype(np.float32), rtol=tolerance,
                               atol=tolerance)


def test_interpreter_is_on():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert not isinstance(rms_triton.rms_norm_kernel, triton.runtime.jit.JITFunction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 7, 100), (3, 64), (1, 1, 128)])
def test_rms_norm_kernel(dtype, shape):
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    w = (1 + 0.1 * torch.randn(shape[-1])).to(dtype)
    _assert_close(rms_triton.rms_norm(x, w, 1e-6), rms_ref.rms_norm(x.numpy(), w.numpy(), 1e-6), TOLERANCE[dtype])


def test_rms_norm_kernel_bfloat16():
    torch.manual_seed(0)
    x, w = torch.randn(2, 7, 100).bfloat16(), (1 + 0.1 * torch.randn(100)).bfloat16()
    # One bf16 rounding step (2**-7 relative) may flip where the fp32 normalisations differ by an ulp.
    _assert_close(rms_triton.rms_norm(x, w), rms_ref.rms_norm(_numpy(x), _numpy(w)), 2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 80])
@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_kernel_gqa(dtype, head_dim, interleaved):
    """8 query heads and 2 kv heads rotate separately on the same tables; batch 2, odd seq 7."""
    torch.manual_seed(0)
    cos, sin = torch.randn(2, 1, 7, head_dim), torch.randn(2, 1, 7, head_dim)
    for heads in (8, 2):
        x = torch.randn(2, heads, 7, head_dim).to(dtype)
        expected = rotary_ref.rotary_embedding(x.numpy(), cos.numpy(), sin.numpy(), interleaved)
        _assert_close(rotary_triton.rotary_embedding(x, cos, sin, interleaved), expected, TOLERANCE[dtype])


def test_launchers_check_the_contract():
    with pytest.raises(ValueError, match="weight"):
        rms_triton.rms_norm(torch.randn(2, 8), torch.randn(4))
    with pytest.raises(ValueError, match="float32"):
        rotary_triton.rotary_embedding(torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8).half(),
                                       torch.randn(1, 1, 3, 8))
