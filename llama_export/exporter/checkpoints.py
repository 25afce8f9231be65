"""Checkpoints: where the weights come from.

Every source yields tensors under the reference model's names (Meta's names) in the reference model's
rotate-half RoPE layout, one tensor at a time, so the exporter can stream a 70B checkpoint with bounded memory.

Sources:
- RandomCheckpoint: a named size + seed. Each tensor is generated from its own seed, so streaming one tensor
  gives the same values as building the whole model.
- SafetensorsCheckpoint: our own format, `params.json` (ModelArgs) + `model.safetensors`.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from ..config import ModelArgs
from ..errors import UserError
from .model import Transformer

INIT_STD = 0.02


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every tensor the reference model has, with its shape, in model order."""
    d, kv, hd, hid = args.dim, args.kv_heads * args.head_dim, args.n_heads * args.head_dim, args.hidden_dim
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (args.vocab_size, d)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (hd, d),
            p + "attention.wk.weight": (kv, d),
            p + "attention.wv.weight": (kv, d),
            p + "attention.wo.weight": (d, hd),
            p + "feed_forward.w1.weight": (hid, d),
            p + "feed_forward.w2.weight": (d, hid),
            p + "feed_forward.w3.weight": (hid, d),
            p + "attention_norm.weight": (d,),
            p + "ffn_norm.weight": (d,),
        }
    shapes |= {"norm.weight": (d,), "output.weight": (args.vocab_size, d)}
    return shapes


class Checkpoint:
    """A source of weights. Subclasses implement `tensor` (and may override `iter_tensors`)."""

    args: ModelArgs
    description: str

    def names(self) -> list[str]:
        return list(expected_shapes(self.args))

    def tensor(self, name: str) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement tensor()")

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) in model order, one at a time, in the checkpoint's own dtype."""
        for name in self.names():
            yield name, self.tensor(name)

    def fingerprint(self) -> str:
        """sha256 identifying the weights (recorded in the manifest)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement fingerprint()")

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        return {n: (t if dtype is None else t.to(dtype)) for n, t in self.iter_tensors()}


class RandomCheckpoint(Checkpoint):
    def __init__(self, args: ModelArgs, seed: int = 0):
        self.args, self.seed = args, seed
        self.description = f"random-init seed={seed}"

    def tensor(self, name: str) -> torch.Tensor:
        shape = expected_shapes(self.args)[name]
        if len(shape) == 1:  # norm weights
            return torch.ones(shape)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.randn(shape, generator=generator) * INIT_STD

    def fingerprint(self) -> str:
        payload = json.dumps({"random_init": self.seed, "args": self.args.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


OWN_FORMAT = "llama-export"


class SafetensorsCheckpoint(Checkpoint):
    """Our own format: `params.json` (ModelArgs fields) + `model.safetensors` (reference names, rotate-half)."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        self.args = ModelArgs.from_dict(json.loads((self.folder / "params.json").read_text()))
        self.path = self.folder / "model.safetensors"
        self._file = safe_open(str(self.path), framework="pt")
        self.description = str(self.folder)

    def names(self) -> list[str]:
        return list(expected_shapes(self.args))

    def tensor(self, name: str) -> torch.Tensor:
        return self._file.get_tensor(name)

    def fingerprint(self) -> str:
        return file_sha256(self.path)


def save_checkpoint(state_dict: dict[str, torch.Tensor], args: ModelArgs, folder: Path,
                    dtype: torch.dtype | None = None) -> None:
    """Write our own format (see SafetensorsCheckpoint)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: (t if dtype is None else t.to(dtype)).contiguous() for n, t in state_dict.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": OWN_FORMAT, "rope_layout": "rotate_half"})
    (folder / "params.json").write_text(json.dumps(args.to_dict(), indent=2, sort_keys=True) + "\n")


def load_model(checkpoint: Checkpoint, dtype: torch.dtype = torch.float32) -> Transformer:
    """Build the reference model on the meta device, then assign the checkpoint's tensors (strict)."""
    with torch.device("meta"):
        model = Transformer(checkpoint.args)
    model.load_state_dict(checkpoint.state_dict(dtype), strict=True, assign=True)
    return model.eval()


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["Checkpoint", "RandomCheckpoint", "SafetensorsCheckpoint", "expected_shapes", "file_sha256", "load_model",
           "save_checkpoint"]
