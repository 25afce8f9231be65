"""The LLaMA reference model: pre-norm RMSNorm, SwiGLU, rotary embeddings, grouped-query attention.

A bottom-layer module (it needs only config.py), because three stages run it: the exporter traces it, graphs/
calibrates quantization on it (calibration.py whole, awq.py one block at a time) and validate/ compares
against it. Loading a checkpoint into it is the exporter's (exporter/checkpoints.py).

Follows Meta's model.py with three deliberate differences, all for export:
- RoPE is real-valued in the *rotate-half* layout (the layout of HF checkpoints, ONNX RotaryEmbedding with
  interleaved=0 and ONNX Runtime's fused op). Meta's consolidated checkpoints use the interleaved layout; their
  wq/wk rows are permuted at load (exporter/checkpoints.py), which gives identical logits.
- The KV cache is explicit: forward takes the past keys/values and returns the presents (names in io_spec.py),
  so one traced graph serves prefill (past = 0) and decode (seq = 1).
- An int64 attention_mask [batch, past + seq] marks real tokens, so left-padded batches work.
Norms, softmax and the rotary product run in fp32 and are cast back, as in Meta's code.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelArgs


@functools.lru_cache(maxsize=32)
def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies [head_dim / 2], fp32, with Llama 3.1 scaling when the config asks for it."""
    dim = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = args.rope_scaling
    if scaling is None:
        return inv_freq
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_tables(position_ids: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [batch, 1, seq, head_dim] in fp32 for the rotate-half layout."""
    freqs = position_ids.float()[..., None] * inv_freq.to(position_ids.device)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    return (x32 * cos + torch.cat((-x2, x1), dim=-1) * sin).type_as(x)


def attention_bias(attention_mask: torch.Tensor, seq: int) -> torch.Tensor:
    """Additive fp32 bias [batch, 1, seq, total]: causal over cache slots, padding keys masked.

    Query i sits in cache slot past + i. A padded query may attend only to itself, so no row is fully
    masked (its output is never used, but a NaN there would poison nothing else either way).
    """
    total = attention_mask.shape[-1]
    key_slot = torch.arange(total, device=attention_mask.device)
    query_slot = torch.arange(seq, device=attention_mask.device) + (total - seq)
    causal = key_slot[None, :] <= query_slot[:, None]
    allowed = (causal & attention_mask[:, None, :].bool()) | (key_slot[None, :] == query_slot[:, None])
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, n_kv, t, d = x.shape
    return x[:, :, None].expand(b, n_kv, n_rep, t, d).reshape(b, n_kv * n_rep, t, d)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x, cos, sin, bias, past_key, past_value):
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        key = torch.cat((past_key, k), dim=2)
        value = torch.cat((past_value, v), dim=2)

        n_rep = self.n_heads // self.n_kv_heads
        scores = torch.matmul(q, repeat_kv(key, n_rep).transpose(2, 3)) / math.sqrt(self.head_dim)
        probs = F.softmax(scores.float() + bias, dim=-1).type_as(q)
        out = torch.matmul(probs, repeat_kv(value, n_rep)).transpose(1, 2).reshape(b, s, -1)
        return self.wo(out), key, value


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, bias, past_key, past_value):
        attn, key, value = self.attention(self.attention_norm(x), cos, sin, bias, past_key, past_value)
        h = x + attn
        return h + self.feed_forward(self.ffn_norm(h)), key, value


class Transformer(nn.Module):
    """forward(input_ids, position_ids, attention_mask, *past) -> (logits, *presents).

    past / presents are flat: key0, value0, key1, value1, ... (io_spec.past_names order).
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        # Tied (Llama 3.2): no output parameter at all, so the state dict, the traced graph and model.onnx.data
        # hold the matrix once (one initializer read by the Gather and the final MatMul).
        self.output = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)

    @classmethod
    def from_state_dict(cls, args: ModelArgs, state_dict: dict[str, torch.Tensor]) -> Transformer:
        """The model in eval mode holding `state_dict`'s tensors themselves (strict): built on the meta device and
        assigned, so no weight is allocated twice."""
        with torch.device("meta"):
            model = cls(args)
        model.load_state_dict(state_dict, strict=True, assign=True)
        return model.eval()

    def forward(self, input_ids, position_ids, attention_mask, *past):
        if len(past) != 2 * self.args.n_layers:
            raise ValueError(f"expected {2 * self.args.n_layers} past tensors, got {len(past)}")
        h = self.tok_embeddings(input_ids)
        cos, sin = rope_tables(position_ids, rope_inv_freq(self.args))
        bias = attention_bias(attention_mask, input_ids.shape[1])
        presents = []
        for i, layer in enumerate(self.layers):
            h, key, value = layer(h, cos, sin, bias, past[2 * i], past[2 * i + 1])
            presents += [key, value]
        h = self.norm(h)
        logits = (F.linear(h, self.tok_embeddings.weight) if self.output is None else self.output(h)).float()
        return (logits, *presents)

    def empty_cache(self, batch: int) -> list[torch.Tensor]:
        """Zero-length past tensors for a prefill."""
        p = self.tok_embeddings.weight
        shape = (batch, self.args.kv_heads, 0, self.args.head_dim)
        return [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(2 * self.args.n_layers)]
