"""Shared fixtures: tiny model configs and checkpoints on disk, good and broken."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llama_export.config import ModelArgs
from llama_export.exporter.checkpoints import save_checkpoint
from llama_export.exporter.hf_format import hf_config, to_hf_state_dict
from llama_export.exporter.meta_format import save_meta_checkpoint
from llama_export.exporter.random_init import RandomCheckpoint

TINY_GQA = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)


@pytest.fixture
def tiny_args() -> ModelArgs:
    """dim 64, 2 layers, 4 heads, 2 kv heads, vocab 128: every format's tests run on it in milliseconds."""
    return TINY_GQA


def random_state_dict(args: ModelArgs, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random weights, norms included (RandomCheckpoint's norms are all ones, which hides norm mix-ups)."""
    state = RandomCheckpoint(args, seed).state_dict()
    generator = torch.Generator().manual_seed(seed)
    return {n: (1 + 0.1 * torch.randn(t.shape, generator=generator) if t.dim() == 1 else t) for n, t in state.items()}


@pytest.fixture
def tiny_state(tiny_args) -> dict[str, torch.Tensor]:
    return random_state_dict(tiny_args)


def write_hf_checkpoint(state: dict[str, torch.Tensor], args: ModelArgs, folder: Path) -> Path:
    """An HF folder (config.json + model.safetensors) without building a transformers model."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **hf_config(args)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({n: t.contiguous() for n, t in to_hf_state_dict(state).items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


@pytest.fixture
def write_hf() -> Callable[[dict[str, torch.Tensor], ModelArgs, Path], Path]:
    """write_hf(state, args, folder): our state dict as an HF folder (config.json + model.safetensors)."""
    return write_hf_checkpoint


def _edit_params(folder: Path, **changes) -> None:
    path = folder / "params.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


class BadCase:
    """A broken checkpoint on disk and fragments its one-line error message must contain."""

    def __init__(self, path: Path, *fragments: str):
        self.path, self.fragments = path, fragments


@pytest.fixture
def make_bad_checkpoint(tmp_path, tiny_args, tiny_state) -> Callable[[str], BadCase]:
    """make_bad_checkpoint(kind) -> BadCase, each in a fresh folder; kinds are the `builders` below."""
    args, state = tiny_args, tiny_state

    def fresh(name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_path))

    def own(edit: Callable[[dict], None] | None = None) -> Path:
        tensors = dict(state)
        if edit:
            edit(tensors)
        folder = fresh("own")
        save_checkpoint(tensors, args, folder)
        return folder

    def missing_path():
        return BadCase(tmp_path / "does-not-exist", "does-not-exist", "does not exist")

    def not_a_checkpoint():
        folder = fresh("stuff")
        (folder / "notes.txt").write_text("hello")
        return BadCase(folder, "stuff", "not a recognised checkpoint")

    def missing_tensor():
        return BadCase(own(lambda t: t.pop("layers.1.attention.wv.weight")), "layers.1.attention.wv.weight",
                       "missing 1 tensor")

    def unexpected_tensor():
        return BadCase(own(lambda t: t.update({"layers.0.attention.bias": torch.zeros(4)})),
                       "layers.0.attention.bias", "unexpected")

    def misshaped_tensor():
        return BadCase(own(lambda t: t.update({"layers.0.feed_forward.w2.weight": torch.zeros(64, 100)})),
                       "layers.0.feed_forward.w2.weight", "[64, 100]", "expected [64, 192]")

    def contradicting_params():
        folder = own()
        _edit_params(folder, dim=128)
        return BadCase(folder, "params.json", "dim=128", "64")

    def contradicting_layers():
        folder = own()
        _edit_params(folder, n_layers=3)
        return BadCase(folder, "params.json", "n_layers=3", "2 layers")

    def invalid_json():
        folder = own()
        (folder / "params.json").write_text('{"dim": 64,')
        return BadCase(folder, "params.json", "not valid JSON")

    def truncated_safetensors():
        folder = own()
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
        return BadCase(folder, "model.safetensors", "truncated")

    def not_safetensors():
        folder = own()
        (folder / "model.safetensors").write_text("this is a text file, not tensors\n" * 10)
        return BadCase(folder, "model.safetensors", "not a safetensors file")

    def meta(n_shards: int = 2) -> Path:
        folder = fresh("meta")
        save_meta_checkpoint(state, args, folder, n_shards=n_shards)
        return folder

    def pth_non_tensor():
        folder = meta(1)
        torch.save({"model": argparse.Namespace(lr=0.1)}, folder / "consolidated.00.pth")
        return BadCase(folder, "consolidated.00.pth", "argparse.Namespace", "other than tensors")

    def pth_training_state():
        folder = meta(1)
        torch.save({**{k: v.clone() for k, v in state.items()}, "epoch": 3}, folder / "consolidated.00.pth")
        return BadCase(folder, "consolidated.00.pth", "epoch (int)", "non-tensor")

    def pth_corrupt():
        folder = meta(1)
        data = (folder / "consolidated.00.pth").read_bytes()
        (folder / "consolidated.00.pth").write_bytes(data[: len(data) // 3])
        return BadCase(folder, "consolidated.00.pth", "corrupt")

    def shards_disagree():
        folder = meta(2)
        shard = torch.load(folder / "consolidated.01.pth", weights_only=True)
        shard["layers.1.feed_forward.w1.weight"] = shard["layers.1.feed_forward.w1.weight"][:, :32].clone()
        torch.save(shard, folder / "consolidated.01.pth")
        return BadCase(folder, "shards disagree", "layers.1.feed_forward.w1.weight", "consolidated.01.pth")

    def shard_missing_tensor():
        folder = meta(2)
        shard = torch.load(folder / "consolidated.01.pth", weights_only=True)
        del shard["layers.0.attention.wo.weight"]
        torch.save(shard, folder / "consolidated.01.pth")
        return BadCase(folder, "shards disagree", "consolidated.01.pth", "lacks layers.0.attention.wo.weight")

    def meta_contradicting_params():
        folder = meta(2)
        _edit_params(folder, n_kv_heads=4)
        return BadCase(folder, "params.json", "n_kv_heads=4", "width 32")

    def hf_missing_tensor():
        folder = write_hf_checkpoint({n: t for n, t in state.items() if n != "norm.weight"}, args, fresh("hf"))
        return BadCase(folder, "model.norm.weight", "missing 1 tensor")

    def hf_contradicting_config():
        folder = write_hf_checkpoint(state, args, fresh("hf"))
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"intermediate_size": 256}))
        return BadCase(folder, "config.json", "intermediate_size=256", "192")

    builders = {f.__name__: f for f in (
        missing_path, not_a_checkpoint, missing_tensor, unexpected_tensor, misshaped_tensor, contradicting_params,
        contradicting_layers, invalid_json, truncated_safetensors, not_safetensors, pth_non_tensor,
        pth_training_state, pth_corrupt, shards_disagree, shard_missing_tensor, meta_contradicting_params,
        hf_missing_tensor, hf_contradicting_config)}
    return lambda kind: builders[kind]()
