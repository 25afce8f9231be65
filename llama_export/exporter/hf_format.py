"""Hugging Face LLaMA checkpoints: `config.json` + `model.safetensors` (or a sharded `model.safetensors.index.json`).

HF's conversion script already permuted wq/wk into the rotate-half layout the reference model uses, so tensors
are only renamed. The SwiGLU width is stored directly (intermediate_size); ModelArgs derives it from Meta's
formula, so a (multiple_of, ffn_dim_multiplier) pair reproducing it is chosen.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import SIZES, ModelArgs, RopeScaling
from ..errors import UserError
from .checkpoints import (
    Checkpoint,
    SafetensorsFiles,
    args_from,
    check_tensors,
    files_fingerprint,
    read_json,
    read_safetensors_header,
    some,
    with_known_size,
)

_LAYER_NAMES = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}
_TOP_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
              "lm_head.weight": "output.weight"}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")
_OUR_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.weight")
IGNORED = re.compile(r".*\.rotary_emb\.inv_freq")  # older transformers saved the RoPE table
HF_KEYS = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "vocab_size": "vocab_size",
           "n_kv_heads": "num_key_value_heads", "hidden_dim": "intermediate_size"}


def our_name(hf: str) -> str | None:
    """The reference model's name for an HF tensor name; None when it has none."""
    if hf in _TOP_NAMES:
        return _TOP_NAMES[hf]
    if (m := _HF_LAYER.fullmatch(hf)) and m.group(2) in _LAYER_NAMES:
        return f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def hf_name(ours: str) -> str:
    """The HF tensor name for one of the reference model's names."""
    for hf, o in _TOP_NAMES.items():
        if o == ours:
            return hf
    m = _OUR_LAYER.fullmatch(ours)
    if m:
        for hf, o in _LAYER_NAMES.items():
            if o == m.group(2):
                return f"model.layers.{m.group(1)}.{hf}.weight"
    return ours


def ffn_params(dim: int, intermediate_size: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) for which Meta's formula gives `intermediate_size`.

    Prefers a named size's own pair, then round values; the last resort (multiple_of 1 with an exact multiplier)
    always works for a positive width.
    """
    def width(m: int, f: float | None) -> int:
        return ModelArgs(dim=dim, n_layers=1, n_heads=1, vocab_size=1, multiple_of=m, ffn_dim_multiplier=f).hidden_dim

    known = [(a.multiple_of, a.ffn_dim_multiplier) for a in SIZES.values() if a.dim == dim]
    round_values = [(m, f) for f in (None, 1.3, 1.5, 2.0, 1.0)
                    for m in (256, 1024, 4096, 512, 2048, 128, 64, 32, 16, 8, 4, 2, 1)]
    base = int(2 * (4 * dim) / 3)
    for m, f in [*known, *round_values, (1, (intermediate_size + 0.5) / max(base, 1))]:
        if width(m, f) == intermediate_size:
            return m, f
    raise ValueError(f"intermediate_size {intermediate_size} cannot be expressed with Meta's hidden size formula")


def rope_settings(config: dict) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from transformers 4 (`rope_theta`, `rope_scaling`) or 5 (`rope_parameters`)."""
    params = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    theta = float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = params.get("rope_type", params.get("type")) or "default"
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ValueError(f"rope_type {kind!r} is not supported (only default and llama3)")
    default = RopeScaling()
    return theta, RopeScaling(
        factor=float(params.get("factor", default.factor)),
        low_freq_factor=float(params.get("low_freq_factor", default.low_freq_factor)),
        high_freq_factor=float(params.get("high_freq_factor", default.high_freq_factor)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings",
                                                        default.original_max_position_embeddings)))


def args_from_config(config: dict) -> ModelArgs:
    model_type = config.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"model_type is {model_type!r}; only LLaMA (model_type llama) checkpoints are supported")
    dim, n_heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    if config.get("head_dim") not in (None, dim // n_heads):
        raise ValueError(f"head_dim {config['head_dim']} differs from hidden_size / num_attention_heads")
    if config.get("hidden_act", "silu") != "silu" or config.get("attention_bias") or config.get("mlp_bias"):
        raise ValueError("only silu activations without attention/MLP biases are supported")
    multiple_of, multiplier = ffn_params(dim, int(config["intermediate_size"]))
    theta, scaling = rope_settings(config)
    kv = int(config.get("num_key_value_heads") or n_heads)
    args = ModelArgs(dim=dim, n_layers=int(config["num_hidden_layers"]), n_heads=n_heads,
                     n_kv_heads=None if kv == n_heads else kv, vocab_size=int(config["vocab_size"]),
                     multiple_of=multiple_of, ffn_dim_multiplier=multiplier,
                     norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
                     tie_embeddings=bool(config.get("tie_word_embeddings", False)))  # LlamaConfig's default
    return with_known_size(args, int(config.get("max_position_embeddings") or 2048))


class HFCheckpoint(Checkpoint):
    """A transformers LlamaForCausalLM folder saved with safetensors (single file or sharded index)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.config_path = self.folder / "config.json"
        config = read_json(self.config_path)
        self.args = args_from(lambda: args_from_config(config), self.config_path)
        index_path = self.folder / "model.safetensors.index.json"
        if index_path.is_file():
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise UserError(f"{index_path} has no weight_map; re-download it")
            files = sorted(set(weight_map.values()))
            source = str(index_path)
        else:
            files, weight_map, source = ["model.safetensors"], None, str(self.folder / "model.safetensors")
        absent = [f for f in files if not (self.folder / f).is_file()]
        if absent:
            raise UserError(f"{source} refers to missing file(s) {some(absent)}; download every shard")
        headers = {f: read_safetensors_header(self.folder / f)[0] for f in files}
        if weight_map is None:
            weight_map = dict.fromkeys(headers["model.safetensors"], "model.safetensors")
        self._where: dict[str, tuple[Path, str]] = {}
        shapes, unmapped = {}, []
        for hf, file in weight_map.items():
            if IGNORED.fullmatch(hf):
                continue
            if hf not in headers[file]:
                raise UserError(f"{source} places {hf} in {file}, which does not hold it; re-download the "
                                "checkpoint")
            ours = our_name(hf)
            if ours == "output.weight" and self.args.tie_embeddings:
                continue  # saved anyway by some tools; transformers ties it to the embedding and ignores it
            if ours is None:
                unmapped.append(hf)
                continue
            self._where[ours] = (self.folder / file, hf)
            shapes[ours] = headers[file][hf]
        check_tensors(self.args, shapes, source=source, config=str(self.config_path), unmapped=unmapped,
                      label=hf_name, keys=HF_KEYS)
        self._files = SafetensorsFiles()
        self._weight_files = [self.folder / f for f in files]
        self.description = f"{self.folder} (Hugging Face)"

    def tensor(self, name: str) -> torch.Tensor:
        path, hf = self._where[name]
        return self._files.get(path, hf)

    def fingerprint(self) -> str:
        return files_fingerprint([self.config_path, *self._weight_files])

    def source(self) -> dict:
        return {"format": "hf", "path": str(self.folder.resolve())}


def hf_config(args: ModelArgs) -> dict:
    """LlamaConfig keyword arguments describing `args` (for building HF peers and writing config.json)."""
    config = {"hidden_size": args.dim, "intermediate_size": args.hidden_dim, "num_hidden_layers": args.n_layers,
              "num_attention_heads": args.n_heads, "num_key_value_heads": args.kv_heads,
              "vocab_size": args.vocab_size, "rms_norm_eps": args.norm_eps,
              "max_position_embeddings": args.max_seq_len, "tie_word_embeddings": args.tie_embeddings, "hidden_act": "silu",
              "attention_bias": False, "mlp_bias": False, "head_dim": args.head_dim}
    rope = None
    if (s := args.rope_scaling) is not None:
        rope = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings}
    return config | {"rope_theta": args.rope_theta, "rope_scaling": rope}


def from_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM names -> reference names (same layout; unknown names are dropped)."""
    return {ours: t for hf, t in state_dict.items() if (ours := our_name(hf)) is not None}


def to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference names -> HF LlamaForCausalLM names."""
    return {hf_name(n): t for n, t in state_dict.items()}


__all__ = ["HFCheckpoint", "args_from_config", "ffn_params", "from_hf_state_dict", "hf_config", "hf_name",
           "our_name", "rope_settings", "to_hf_state_dict"]
