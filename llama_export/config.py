"""Model hyper-parameters and the one table of named sizes.

Everything derivable (head_dim, hidden_dim, parameter count) is computed from the table, never typed in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 frequency-dependent RoPE scaling ("llama3" rope_type in HF configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int | None = None  # None: multi-head attention (n_kv_heads == n_heads)
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048
    family: str = "llama"
    # The output projection is the embedding matrix (Llama 3.2 1B/3B): one [vocab, dim] tensor serves both.
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for field_name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field_name} must be a positive integer, not {value!r}")
        if self.n_kv_heads is not None and (not isinstance(self.n_kv_heads, int) or self.n_kv_heads < 1):
            raise ValueError(f"n_kv_heads must be a positive integer, not {self.n_kv_heads!r}")
        if not (math.isfinite(self.norm_eps) and self.norm_eps > 0 and math.isfinite(self.rope_theta)
                and self.rope_theta > 0):
            raise ValueError(f"norm_eps and rope_theta must be positive numbers, not {self.norm_eps!r} and "
                             f"{self.rope_theta!r}")
        kv = self.kv_heads
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % kv:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {kv}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width, Meta's formula: 2/3 of 4·dim, scaled, rounded up to multiple_of."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def n_params(self) -> int:
        d, kv_dim = self.dim, self.kv_heads * self.head_dim
        attention = 2 * d * d + 2 * d * kv_dim  # wq, wo, wk, wv
        feed_forward = 3 * d * self.hidden_dim  # w1, w2, w3
        norms = 2 * d
        vocab_matrices = 1 if self.tie_embeddings else 2  # embedding (+ output projection)
        return vocab_matrices * self.vocab_size * d + self.n_layers * (attention + feed_forward + norms) + d

    def replace(self, **changes) -> ModelArgs:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelArgs:
        data = dict(data)
        if data.get("rope_scaling") is not None:
            data["rope_scaling"] = RopeScaling(**data["rope_scaling"])
        return cls(**data)


_LLAMA1 = {"vocab_size": 32000, "norm_eps": 1e-6, "max_seq_len": 2048, "family": "llama"}
_LLAMA2 = {"vocab_size": 32000, "norm_eps": 1e-5, "max_seq_len": 4096, "family": "llama2"}
_LLAMA3 = {"vocab_size": 128256, "norm_eps": 1e-5, "rope_theta": 500000.0, "max_seq_len": 8192,
               "ffn_dim_multiplier": 1.3, "family": "llama3"}

# fmt: off
SIZES: dict[str, ModelArgs] = {
    "7b":          ModelArgs(dim=4096, n_layers=32, n_heads=32, **_LLAMA1),
    "13b":         ModelArgs(dim=5120, n_layers=40, n_heads=40, **_LLAMA1),
    "33b":         ModelArgs(dim=6656, n_layers=60, n_heads=52, **_LLAMA1),
    "65b":         ModelArgs(dim=8192, n_layers=80, n_heads=64, **_LLAMA1),
    "llama2-7b":   ModelArgs(dim=4096, n_layers=32, n_heads=32, **_LLAMA2),
    "llama2-13b":  ModelArgs(dim=5120, n_layers=40, n_heads=40, **_LLAMA2),
    "llama2-70b":  ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.3,
                             multiple_of=4096, **_LLAMA2),
    "llama3-8b":   ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024, **_LLAMA3),
    "llama3-70b":  ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096, **_LLAMA3),
    "llama3.1-8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024,
                             rope_scaling=RopeScaling(), **{**_LLAMA3, "max_seq_len": 131072}),
    "llama3.1-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                             rope_scaling=RopeScaling(), **{**_LLAMA3, "max_seq_len": 131072}),
    "llama3.1-405b": ModelArgs(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, multiple_of=4096,
                               rope_scaling=RopeScaling(), **{**_LLAMA3, "ffn_dim_multiplier": 1.2,
                                                             "max_seq_len": 131072}),
    "llama3.2-1b": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, multiple_of=256,
                             rope_scaling=RopeScaling(factor=32.0), tie_embeddings=True,
                             **{**_LLAMA3, "ffn_dim_multiplier": 1.5, "max_seq_len": 131072}),
    "llama3.2-3b": ModelArgs(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, multiple_of=256,
                             rope_scaling=RopeScaling(factor=32.0), tie_embeddings=True,
                             **{**_LLAMA3, "ffn_dim_multiplier": 1.0, "max_seq_len": 131072}),
    "small":       ModelArgs(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, vocab_size=32000, norm_eps=1e-5,
                             max_seq_len=2048, family="small"),
    "tiny":        ModelArgs(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=2048, multiple_of=64,
                             norm_eps=1e-5, max_seq_len=512, family="tiny"),
}
# fmt: on

# The seed family's sizes are also accepted with their family prefix.
ALIASES = {f"llama-{name}": name for name in ("7b", "13b", "33b", "65b")} | {
    f"llama1-{name}": name for name in ("7b", "13b", "33b", "65b")
}


def get_size(name: str) -> ModelArgs:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SIZES:
        raise KeyError(f"unknown size {name!r}; choose one of: {', '.join(SIZES)}")
    return SIZES[key]


def size_name(args: ModelArgs) -> str | None:
    """The named size whose hyper-parameters `args` are exactly, if any."""
    return next((name for name, known in SIZES.items() if known == args), None)


def size_summary(name: str, args: ModelArgs) -> dict:
    return {
        "name": name,
        "family": args.family,
        "params": args.n_params,
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "hidden_dim": args.hidden_dim,
        "vocab_size": args.vocab_size,
        "max_seq_len": args.max_seq_len,
        "rope_theta": args.rope_theta,
        "rope_scaling": args.rope_scaling is not None,
        "tie_embeddings": args.tie_embeddings,
    }


__all__ = ["ALIASES", "SIZES", "ModelArgs", "RopeScaling", "get_size", "size_name", "size_summary"]
