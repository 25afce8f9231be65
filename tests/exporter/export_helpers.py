"""Shared by the export tests: a state-dict checkpoint, a checkpoint interrupted mid-stream, a previous output
folder, and a prefill + decode run through any runner."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from llama_export.config import ModelArgs
from llama_export.exporter.checkpoints import Checkpoint
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.validate.runners import KVSession, Runner

PROMPT_LEN, DECODE_STEPS = 7, 16
PAD = 3  # row 1 of the batch is left-padded by this many tokens


class DictCheckpoint(Checkpoint):
    """Weights held in memory (tests build unusual weights, e.g. huge activations)."""

    def __init__(self, args: ModelArgs, state: dict[str, torch.Tensor], description: str = "in-memory"):
        self.args, self.state, self.description = args, state, description

    def tensor(self, name: str) -> torch.Tensor:
        return self.state[name]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name in self.names():
            digest.update(name.encode() + self.state[name].float().numpy().tobytes())
        return digest.hexdigest()


class InterruptingCheckpoint(RandomCheckpoint):
    """Raises KeyboardInterrupt (what SIGINT raises) after a few tensors, i.e. while weights stream."""

    def tensor(self, name: str, dtype: torch.dtype = torch.float32, buffers=None) -> torch.Tensor:
        if name == "layers.1.attention.wq.weight":
            raise KeyboardInterrupt
        return super().tensor(name, dtype, buffers)


PREVIOUS = '{"previous": true, "tool": {"name": "llama-export"}}'


def previous_output(folder: Path) -> None:
    folder.mkdir()
    (folder / "manifest.json").write_text(PREVIOUS)  # marked as llama-export's: a rerun may replace it


def batch_inputs(vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt ids [2, 7], attention mask [2, 7] with row 1 left-padded, decode ids [16, 2]).

    Decode tokens are fixed (teacher forcing), so runners are compared on identical inputs at every step."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(2, PROMPT_LEN))
    mask = np.ones_like(ids)
    mask[1, :PAD] = 0
    ids[1, :PAD] = 0
    decode = rng.integers(0, vocab, size=(DECODE_STEPS, 2))
    return ids, mask, decode


def run_session(runner: Runner, ids: np.ndarray, mask: np.ndarray, decode: np.ndarray) -> np.ndarray:
    """Logits [batch, 7 + 16, vocab]: prefill of the prompt, then one decode step per row of `decode`."""
    session = KVSession(runner)
    logits = [session.prefill(ids, mask)]
    for tokens in decode:
        logits.append(session.step(tokens))
    return np.concatenate(logits, axis=1).astype(np.float32)


def real_positions(logits: np.ndarray) -> np.ndarray:
    """Drop the padded prompt positions of row 1 (their logits are never used) → [n, vocab]."""
    return np.concatenate([logits[0], logits[1, PAD:]])
