"""Meta's consolidated checkpoints: `params.json` + `consolidated.NN.pth`, one file per model-parallel rank.

Shards follow fairscale's layout: ColumnParallelLinear (wq, wk, wv, w1, w3, output) splits output rows, so
shards concatenate on dim 0; RowParallelLinear (wo, w2) splits input columns, dim 1; LLaMA 1/2's
ParallelEmbedding splits the embedding width (dim 1) while Llama 3's VocabParallelEmbedding splits the vocabulary
(dim 0) — told apart by the shard's width; norms are replicated (shard 0 is used).

Meta's RoPE is interleaved (pairs of adjacent rows of wq/wk form one rotation); the reference model is
rotate-half (row i pairs with row i + head_dim/2), so wq/wk rows are permuted at load — the same permutation as
Hugging Face's conversion script — and permuted back by `save_meta_checkpoint`.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from ..config import ModelArgs, RopeScaling
from ..errors import UserError
from .checkpoints import (
    Checkpoint,
    args_from,
    check_tensors,
    files_fingerprint,
    fmt_shape,
    read_json,
    some,
    with_known_size,
)

COLUMN_PARALLEL = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "feed_forward.w1.weight",
                   "feed_forward.w3.weight", "output.weight")
ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight")
IGNORED = ("rope.freqs",)  # LLaMA 1 stored its RoPE table; the model computes it
_SHARD = re.compile(r"consolidated\.(\d+)\.pth")


def interleaved_to_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of wq/wk from Meta's interleaved RoPE layout to rotate-half (HF's `permute`)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_half`."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def split_dim(name: str, embedding_dim: int = 1) -> int | None:
    """The dim model-parallel shards split `name` along; None when every shard holds all of it."""
    if name.endswith(COLUMN_PARALLEL):
        return 0
    if name.endswith(ROW_PARALLEL):
        return 1
    if name == "tok_embeddings.weight":
        return embedding_dim
    return None


def meta_params(args: ModelArgs) -> dict:
    """params.json as Meta writes it."""
    params = {"dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads}
    if args.n_kv_heads is not None:
        params["n_kv_heads"] = args.n_kv_heads
    params |= {"vocab_size": args.vocab_size, "multiple_of": args.multiple_of}
    if args.ffn_dim_multiplier is not None:
        params["ffn_dim_multiplier"] = args.ffn_dim_multiplier
    params |= {"norm_eps": args.norm_eps, "rope_theta": args.rope_theta}
    if (scaling := args.rope_scaling) is not None:
        params["use_scaled_rope"] = True
        if scaling != RopeScaling():  # Meta's params carry only a flag; other values need explicit keys
            params |= {"rope_scaling_factor": scaling.factor, "low_freq_factor": scaling.low_freq_factor,
                       "high_freq_factor": scaling.high_freq_factor,
                       "original_max_position_embeddings": scaling.original_max_position_embeddings}
    params["max_seq_len"] = args.max_seq_len
    return params


def args_from_params(params: dict, vocab_size: int | None, tied: bool = False) -> ModelArgs:
    """ModelArgs from params.json; `vocab_size` from the embedding when params says -1 (LLaMA 1); `tied` when the
    shards hold no output.weight (params.json has no key for it: the embedding is then the output projection)."""
    scaling = None
    if params.get("use_scaled_rope"):
        default = RopeScaling()
        scaling = RopeScaling(
            factor=float(params.get("rope_scaling_factor") or default.factor),
            low_freq_factor=float(params.get("low_freq_factor", default.low_freq_factor)),
            high_freq_factor=float(params.get("high_freq_factor", default.high_freq_factor)),
            original_max_position_embeddings=int(params.get("original_max_position_embeddings",
                                                            default.original_max_position_embeddings)))
    n_heads = int(params["n_heads"])
    kv = params.get("n_kv_heads")
    vocab = int(params.get("vocab_size", -1))
    args = ModelArgs(
        dim=int(params["dim"]), n_layers=int(params["n_layers"]), n_heads=n_heads,
        n_kv_heads=None if kv is None or int(kv) == n_heads else int(kv),
        vocab_size=vocab if vocab > 0 or vocab_size is None else vocab_size,  # LLaMA 1 says -1
        multiple_of=int(params.get("multiple_of", 256)),
        ffn_dim_multiplier=None if params.get("ffn_dim_multiplier") is None else float(params["ffn_dim_multiplier"]),
        norm_eps=float(params.get("norm_eps", 1e-5)), rope_theta=float(params.get("rope_theta", 10000.0)),
        rope_scaling=scaling, tie_embeddings=tied)
    return with_known_size(args, params.get("max_seq_len"))


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    """One consolidated.NN.pth, memory-mapped: tensors are read from disk only when touched."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) torch.save
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise UserError(f"{path} holds objects other than tensors ({found.group(1)}), which are not loaded "
                            "for safety (weights_only); re-save only the weights: "
                            "torch.save(model.state_dict(), path)") from None
        if "Weights only load failed" in str(exc):  # refused for safety, not damaged
            first = str(exc).split("Weights only load failed")[-1].strip(" .:\n").splitlines()[0][:160]
            raise UserError(f"{path} was refused by torch.load(weights_only=True), which never runs code from a "
                            f"checkpoint ({first}); re-save only the tensors: torch.save(model.state_dict(), path)"
                            ) from None
        raise UserError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated); re-download it") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            pickle.PickleError) as exc:  # zip, EOF and pickle-stream errors all mean a damaged file
        first = str(exc).split(". ")[0].splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({first}); it is corrupt or truncated: "
                        "re-download it") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict of tensors; re-save it with "
                        "torch.save(model.state_dict(), path)")
    other = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if other:
        raise UserError(f"{path} holds non-tensor entries: {some(other)}; it looks like a training checkpoint: "
                        "save only the model's state_dict()")
    return state


class MetaCheckpoint(Checkpoint):
    """`params.json` + consolidated.00.pth … consolidated.NN.pth, merged and permuted one tensor at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.params_path = self.folder / "params.json"
        params = read_json(self.params_path, " (a Meta checkpoint needs it next to consolidated.NN.pth)")
        found = {int(m.group(1)): p for p in self.folder.iterdir() if (m := _SHARD.fullmatch(p.name))}
        if not found:
            raise UserError(f"{self.folder} holds no consolidated.NN.pth shards")
        if sorted(found) != list(range(len(found))):
            absent = [f"consolidated.{i:02d}.pth" for i in range(max(found) + 1) if i not in found]
            raise UserError(f"{self.folder} lacks shard(s) {some(absent)}; copy every consolidated.NN.pth")
        self.paths = [found[i] for i in range(len(found))]
        self._shards = [load_shard(p) for p in self.paths]
        for shard in self._shards:
            for name in IGNORED:
                shard.pop(name, None)
        self._check_shards_agree()
        self._embedding_dim = self._embedding_split(params)
        shapes = {name: self._merged_shape(name) for name in self._shards[0]}
        self._check_no_trailing_shard_missing(params, shapes)
        vocab = shapes.get("tok_embeddings.weight", (None,))[0]
        tied = "output.weight" not in shapes and "tok_embeddings.weight" in shapes
        self.args = args_from(lambda: args_from_params(params, vocab, tied), self.params_path)
        source = str(self.paths[0]) if len(self.paths) == 1 else f"{self.folder}/consolidated.*.pth"
        check_tensors(self.args, shapes, source=source, config=str(self.params_path))
        n = len(self.paths)
        self.description = f"{self.folder} (Meta, {n} shard{'s' if n > 1 else ''})"

    def _check_no_trailing_shard_missing(self, params: dict, shapes: dict[str, tuple[int, ...]]) -> None:
        """Shards are numbered 00..NN with nothing saying how many there are: when the last ones are missing
        the rest look complete, and only the row-split q projection is narrower than params.json's dim by the
        missing factor. Say so, rather than blaming params.json."""
        rows = shapes.get("layers.0.attention.wq.weight", (0,))[0]
        dim = params.get("dim")
        if isinstance(dim, int) and rows and dim > rows and dim % rows == 0:
            n = len(self.paths)
            raise UserError(f"{self.folder} holds {n} consolidated.NN.pth shard(s) but params.json's dim={dim} "
                            f"needs {n * dim // rows} (the q projection has {rows} of {dim} rows): shard(s) from "
                            f"consolidated.{n:02d}.pth on are missing (or params.json is for a bigger model); copy every shard")

    def __reduce__(self):
        # Pickled (for the stream's process) as its folder: pickling the mmapped shards would copy every weight.
        return type(self), (self.folder,), {"allow_nonfinite": self.allow_nonfinite}

    def _check_shards_agree(self) -> None:
        first, names = self.paths[0].name, set(self._shards[0])
        for path, shard in zip(self.paths[1:], self._shards[1:]):
            if set(shard) != names:
                lacks, extra = sorted(names - set(shard)), sorted(set(shard) - names)
                what = [f"lacks {some(lacks, 3)}"] * bool(lacks) + [f"adds {some(extra, 3)}"] * bool(extra)
                raise UserError(f"shards disagree in {self.folder}: {path.name} {' and '.join(what)} compared with {first}; the "
                                "shards come from different checkpoints or a copy was cut short")
            for name, t in shard.items():
                ref = self._shards[0][name]
                if t.dtype != ref.dtype or t.dim() != ref.dim():
                    raise UserError(f"shards disagree in {self.folder}: {name} is {ref.dtype} {fmt_shape(ref.shape)} in {first} but "
                                    f"{t.dtype} {fmt_shape(t.shape)} in {path.name}")

    def _embedding_split(self, params: dict) -> int:
        emb = self._shards[0].get("tok_embeddings.weight")
        if len(self._shards) == 1 or emb is None or emb.dim() != 2:
            return 1
        norm = self._shards[0].get("norm.weight")
        width = norm.shape[0] if norm is not None and norm.dim() == 1 else params.get("dim")
        return 0 if emb.shape[1] == width else 1  # full width per shard: Llama 3's vocab-parallel embedding

    def _merged_shape(self, name: str) -> tuple[int, ...]:
        shapes = [tuple(s[name].shape) for s in self._shards]
        axis = split_dim(name, self._embedding_dim)
        if len(shapes) == 1:
            return shapes[0]
        if axis is None or len(shapes[0]) <= axis:
            bad = [i for i, s in enumerate(shapes) if s != shapes[0]]
            if bad:
                raise UserError(f"shards disagree in {self.folder}: {name} is {fmt_shape(shapes[0])} in {self.paths[0].name} but "
                                f"{fmt_shape(shapes[bad[0]])} in {self.paths[bad[0]].name}; it should be identical")
            return shapes[0]
        rest = [s[:axis] + s[axis + 1:] for s in shapes]
        for i, r in enumerate(rest):
            if r != rest[0]:
                raise UserError(f"shards disagree in {self.folder}: {name} is {fmt_shape(shapes[0])} in {self.paths[0].name} but "
                                f"{fmt_shape(shapes[i])} in {self.paths[i].name}; they may only differ in dim {axis}")
        merged = list(shapes[0])
        merged[axis] = sum(s[axis] for s in shapes)
        return tuple(merged)

    def tensor(self, name: str) -> torch.Tensor:
        parts = [s[name] for s in self._shards]
        axis = split_dim(name, self._embedding_dim)
        t = parts[0] if axis is None or len(parts) == 1 else torch.cat(parts, dim=axis)
        if name.endswith("attention.wq.weight"):
            t = interleaved_to_half(t, self.args.n_heads)
        elif name.endswith("attention.wk.weight"):
            t = interleaved_to_half(t, self.args.kv_heads)
        return t

    def fingerprint(self) -> str:
        return files_fingerprint([self.params_path, *self.paths])

    def source(self) -> dict:
        return {"format": "meta", "path": str(self.folder.resolve()), "shards": len(self.paths)}


def save_meta_checkpoint(state_dict: dict[str, torch.Tensor], args: ModelArgs, folder: str | Path,
                         n_shards: int = 1, embedding_dim: int = 1) -> list[Path]:
    """Write `state_dict` (reference names, rotate-half) as Meta's params.json + consolidated.NN.pth shards.

    wq/wk rows go back to the interleaved layout and each tensor is split as fairscale splits it;
    `embedding_dim=0` writes Llama 3's vocab-parallel embedding. Returns the shard paths.
    """
    folder = Path(folder)
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    for name, t in state_dict.items():
        if name == "output.weight" and args.tie_embeddings:
            continue  # tied: the shards hold the embedding only (a state dict from transformers lists both)
        if name.endswith("attention.wq.weight"):
            t = half_to_interleaved(t, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            t = half_to_interleaved(t, args.kv_heads)
        axis = split_dim(name, embedding_dim)
        if axis is not None and t.shape[axis] % n_shards:
            raise ValueError(f"{name} {fmt_shape(t.shape)} does not split into {n_shards} shards along dim {axis}")
        parts = [t] * n_shards if axis is None else list(t.chunk(n_shards, dim=axis))
        for shard, part in zip(shards, parts):
            shard[name] = part.clone().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(meta_params(args), indent=2) + "\n")
    paths = [folder / f"consolidated.{i:02d}.pth" for i in range(n_shards)]
    for path, shard in zip(paths, shards):
        torch.save(shard, path)
    return paths


__all__ = ["MetaCheckpoint", "half_to_interleaved", "interleaved_to_half", "load_shard", "meta_params",
           "save_meta_checkpoint", "split_dim"]
