"""The numpy references against the Torch reference model's own math: the correctness anchor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llama_export import model
from llama_export.config import SIZES, ModelArgs
from llama_export.plugins.rmsnorm.reference import rms_norm
from llama_export.plugins.rotary.reference import rotary_embedding

# Torch and numpy reduce in a different order: fp32 differs by a few ulps, fp16 by at most one rounding step.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hidden", [64, 100])
def test_rms_norm_matches_model(dtype, hidden):
    torch.manual_seed(0)
    norm = model.RMSNorm(hidden, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(hidden))
    norm = norm.to(dtype)
    x = torch.randn(2, 7, hidden).to(dtype)
    with torch.no_grad():
        expected = norm(x).float().numpy()
    actual = rms_norm(x.numpy(), norm.weight.detach().numpy(), 1e-6)
    assert actual.dtype == x.numpy().dtype
    np.testing.assert_allclose(actual.astype(np.float32), expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def _tables(args: ModelArgs, position_ids: torch.Tensor):
    return model.rope_tables(position_ids, model.rope_inv_freq(args))


@pytest.mark.parametrize("args", [
    ModelArgs(dim=512, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=32),   # head_dim 64, GQA 8/2
    ModelArgs(dim=640, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=32),   # head_dim 80
    SIZES["llama3.1-8b"].replace(n_layers=1),                                 # Llama 3.1 scaled frequencies
], ids=["hd64", "hd80", "llama3.1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rotary_matches_model(args, dtype):
    torch.manual_seed(0)
    # Two sequences at different offsets (a decode step with a past) and odd seq 7.
    position_ids = torch.stack([torch.arange(7), torch.arange(7) + 1000])
    cos, sin = _tables(args, position_ids)
    for heads in (args.n_heads, args.kv_heads):  # q and k rotate separately
        x = torch.randn(2, heads, 7, args.head_dim).to(dtype)
        expected = model.apply_rotary(x, cos, sin).float().numpy()
        actual = rotary_embedding(x.numpy(), cos.numpy(), sin.numpy())
        assert actual.dtype == x.numpy().dtype
        np.testing.assert_allclose(actual.astype(np.float32), expected, rtol=TOLERANCE[dtype],
                                   atol=TOLERANCE[dtype])


def test_interleaved_is_rotate_half_after_permuting_pairs(rng):
    """interleaved=1 on pair-ordered data equals interleaved=0 on the same data in half order."""
    d = 16
    x = rng.standard_normal((1, 2, 3, d)).astype(np.float32)
    cos, sin = (rng.standard_normal((1, 1, 3, d)).astype(np.float32) for _ in range(2))
    to_pairs = np.stack((np.arange(d // 2), np.arange(d // 2) + d // 2), axis=-1).reshape(-1)  # 0, 8, 1, 9, ...
    rotated = rotary_embedding(x[..., to_pairs], cos[..., to_pairs], sin[..., to_pairs], interleaved=1)
    np.testing.assert_array_equal(rotated, rotary_embedding(x, cos, sin)[..., to_pairs])
