"""The reference model loaded from an HF folder or a Meta consolidated checkpoint matches transformers' LLaMA.

One set of random weights is saved twice: by transformers (`save_pretrained`, rotate-half) and as a 2-shard Meta
checkpoint (interleaved RoPE rows, fairscale splits). Both load through `open_checkpoint` and must give HF's
logits, for a whole sequence and for prefill + decode through the explicit KV cache.
"""

from __future__ import annotations

import pytest
import torch

from llama_export.config import ModelArgs, RopeScaling
from llama_export.exporter.checkpoints import load_model, open_checkpoint
from llama_export.exporter.hf_format import from_hf_state_dict, hf_config
from llama_export.exporter.meta_format import save_meta_checkpoint

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=128, multiple_of=32),
    "gqa": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, norm_eps=1e-5),
    # original_max_position_embeddings 64 puts head_dim 16's frequencies in all three llama3 bands.
    "gqa-llama3-rope": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32,
                                 rope_theta=500000.0, norm_eps=1e-5,
                                 rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64)),
    # Llama 3.2 style: no lm_head.weight in the HF folder, no output.weight in the Meta shards
    "gqa-tied": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32,
                          norm_eps=1e-5, tie_embeddings=True),
}
ATOL = 1e-5
PREFILL, STEPS = 5, 6


def hf_model(args: ModelArgs, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**hf_config(args), attn_implementation="eager")
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms off 1.0 and larger weights, so mix-ups show
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def loaded(request, tmp_path_factory):
    """(args, HF model, {format: our model}) with one set of weights."""
    args = CONFIGS[request.param]
    hf = hf_model(args, seed=sorted(CONFIGS).index(request.param))
    root = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(root / "hf")
    save_meta_checkpoint(from_hf_state_dict(hf.state_dict()), args, root / "meta", n_shards=2)
    ours = {}
    for fmt in ("hf", "meta"):
        ckpt = open_checkpoint(root / fmt)
        assert ckpt.args.hidden_dim == args.hidden_dim and ckpt.args.kv_heads == args.kv_heads
        assert ckpt.args.rope_scaling == args.rope_scaling and ckpt.args.rope_theta == args.rope_theta
        assert ckpt.args.tie_embeddings == args.tie_embeddings
        ours[fmt] = load_model(ckpt)
    return args, hf, ours


def tokens(args: ModelArgs, batch: int = 2, seq: int = PREFILL + STEPS) -> torch.Tensor:
    return torch.randint(0, args.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("fmt", ["hf", "meta"])
def test_full_sequence_logits_match_hf(loaded, fmt):
    args, hf, ours = loaded
    ids = tokens(args)
    batch, seq = ids.shape
    model = ours[fmt]
    with torch.no_grad():
        expected = hf(ids).logits
        positions = torch.arange(seq).expand(batch, seq)
        logits = model(ids, positions, torch.ones(batch, seq, dtype=torch.int64), *model.empty_cache(batch))[0]
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fmt", ["hf", "meta"])
def test_prefill_then_decode_through_kv_cache_matches_hf(loaded, fmt):
    args, hf, ours = loaded
    ids = tokens(args)
    batch = ids.shape[0]
    model = ours[fmt]
    with torch.no_grad():
        expected = hf(ids).logits
        past = model.empty_cache(batch)
        got = []
        for start, stop in [(0, PREFILL), *((t, t + 1) for t in range(PREFILL, PREFILL + STEPS))]:
            positions = torch.arange(start, stop).expand(batch, stop - start)
            mask = torch.ones(batch, stop, dtype=torch.int64)
            logits, *past = model(ids[:, start:stop], positions, mask, *past)
            got.append(logits)
            assert past[0].shape == (batch, args.kv_heads, stop, args.head_dim)
    torch.testing.assert_close(torch.cat(got, dim=1), expected, atol=ATOL, rtol=0)
