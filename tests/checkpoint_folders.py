"""Small but realistic checkpoint folders of every kind users download, written by the real writers.

- hf-llama2:   transformers' save_pretrained in 2 safetensors shards + model.safetensors.index.json, config.json,
               generation_config.json, tokenizer.model + tokenizer.json + tokenizer_config.json (multi-head).
- hf-llama3.1: save_pretrained (2 shards), tokenizer.json only, generation_config eos list, rope_scaling llama3,
               grouped-query attention.
- hf-llama3.2: as 3.1 with tie_word_embeddings (save_pretrained writes no lm_head.weight) and rope factor 32.
- meta-llama2: params.json + consolidated.00/01.pth (torch.save, fairscale splits, interleaved RoPE rows) +
               SentencePiece tokenizer.model.
- meta-llama3: params.json + 2 shards with the vocab-parallel embedding + tiktoken tokenizer.model.
Shapes are tiny (dim 64, 2 layers); the vocabulary is the tokenizer's. Weights are random but drawn larger than
transformers' init (like tests/peers), so greedy continuations are decided by clear margins; rows of Llama 3's
special tokens are shrunk so random weights continue with text rather than ending at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizer_folders import (
    BPE_VOCAB,
    hf_llama2_tokenizer,
    hf_llama3_tokenizer,
    meta_llama2_tokenizer,
    meta_llama3_tokenizer,
)

from llama_export.config import ModelArgs, RopeScaling
from llama_export.exporter.hf_format import from_hf_state_dict, hf_config
from llama_export.exporter.meta_format import save_meta_checkpoint

LLAMA3_BASE_VOCAB = BPE_VOCAB  # ids from here on are Llama 3's special tokens


@dataclass(frozen=True)
class FolderKind:
    name: str
    layout: str  # "hf" or "meta"
    tokenizer: Callable[[Path], Path]  # writes the tokenizer files into a folder
    args: Callable[[int], ModelArgs]  # vocab size -> hyper-parameters
    llama3: bool = False

    @property
    def tied(self) -> bool:
        return self.args(1).tie_embeddings


def _llama2(vocab: int) -> ModelArgs:
    return ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=vocab, multiple_of=32, norm_eps=1e-5,
                     max_seq_len=4096)


def _llama3(vocab: int, **changes) -> ModelArgs:
    return ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab, multiple_of=32, norm_eps=1e-5,
                     rope_theta=500000.0, max_seq_len=8192).replace(**changes)


KINDS = {k.name: k for k in (
    FolderKind("hf-llama2", "hf", hf_llama2_tokenizer, _llama2),
    FolderKind("hf-llama3.1", "hf", hf_llama3_tokenizer, lambda v: _llama3(
        v, rope_scaling=RopeScaling(), max_seq_len=131072), llama3=True),
    FolderKind("hf-llama3.2", "hf", hf_llama3_tokenizer, lambda v: _llama3(
        v, rope_scaling=RopeScaling(factor=32.0), max_seq_len=131072, tie_embeddings=True), llama3=True),
    FolderKind("meta-llama2", "meta", meta_llama2_tokenizer, _llama2),
    FolderKind("meta-llama3", "meta", meta_llama3_tokenizer, _llama3, llama3=True),
)}


def hf_model(args: ModelArgs, seed: int = 0, bos: int | None = None, eos: int | list[int] | None = None,
             llama3: bool = False):
    """transformers' LlamaForCausalLM with `args`' shapes and seeded random weights."""
    import transformers

    config = transformers.LlamaConfig(**hf_config(args), bos_token_id=bos, eos_token_id=eos)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
        if llama3:
            for matrix in {id(m): m for m in (model.model.embed_tokens.weight, model.lm_head.weight)}.values():
                matrix[LLAMA3_BASE_VOCAB:] *= 0.1
    return model


def _shard_size(model) -> int:
    """A max_shard_size that splits the weights into exactly two files."""
    return sum(p.numel() * p.element_size() for p in model.state_dict().values()) * 3 // 5


def make_folder(kind: str, folder: Path, seed: int = 0) -> Path:
    """Write a `kind` checkpoint folder (KINDS) into `folder` and return it."""
    from llama_export.exporter.tokenization import load_tokenizer

    spec = KINDS[kind]
    folder = Path(folder)
    spec.tokenizer(folder)
    tokenizer = load_tokenizer(folder)
    args = spec.args(tokenizer.vocab_size)
    generation = folder / "generation_config.json"
    eos = json.loads(generation.read_text())["eos_token_id"] if generation.is_file() else tokenizer.eos_id
    model = hf_model(args, seed, tokenizer.bos_id, eos, spec.llama3)
    if spec.layout == "hf":
        saved = generation.read_text() if generation.is_file() else None
        model.save_pretrained(folder, max_shard_size=_shard_size(model))
        if saved is not None:  # the released file (eos list, sampling defaults), not transformers' derived one
            generation.write_text(saved)
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) == 2, "expected two safetensors shards"
    else:
        state = from_hf_state_dict(model.state_dict())
        save_meta_checkpoint(state, args, folder, n_shards=2, embedding_dim=0 if spec.llama3 else 1)
    return folder


__all__ = ["KINDS", "FolderKind", "hf_model", "make_folder"]
