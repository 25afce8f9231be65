"""Layer-major validation: one decoder block in memory at a time, every side advanced through it together.

Teacher-forced comparison never needs the whole model: the token stream is fixed up front, so for block i each
side (the fp32 Torch reference, the Torch model in the candidate's dtype, the ORT candidate) runs every position
through that block alone and keeps the hidden states for block i+1. The candidate runs the prefill and every
decode step with the block's own KV cache (its cache path is what is checked); the Torch sides run the stream
as one causal pass (the same function of the tokens, computed faster). The Torch side loads block i's weights from the checkpoint (Checkpoint.tensor, the same
streaming readers the exporter uses) and the ORT side runs block i's piece of the exported graph (blocks.py),
so each weight is read once and memory is one block plus activations. Logits, perplexity and the per-layer
errors of the bisection come out of the same pass.

What it cannot do: greedy decoding needs every layer before the next token is known, so the forced tokens are
not the reference's greedy choice (as in the whole-model comparison) but a stream chosen up front (the held-out
text's continuation), and free-running generation is not run.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io_spec
from ..config import ModelArgs
from .blocks import Piece, SplitGraph
from .compare import Trace
from .runners import cpu_session, ort_numpy_dtype


@dataclass(frozen=True)
class Chunk:
    """One call of the KV loop: the prefill (all prompt tokens) or one decode step (one token)."""

    input_ids: np.ndarray  # [1, n] int64
    position_ids: np.ndarray  # [1, n] int64
    attention_mask: np.ndarray  # [1, past + n] int64


def chunks(prompt_ids: list[int], forced_ids: list[int]) -> list[Chunk]:
    """The prefill then one chunk per forced token, as KVSession would feed them (batch 1, no padding)."""
    out = [Chunk(np.asarray([prompt_ids], np.int64), np.arange(len(prompt_ids), dtype=np.int64)[None],
                 np.ones((1, len(prompt_ids)), np.int64))]
    for k, token in enumerate(forced_ids):
        position = len(prompt_ids) + k
        out.append(Chunk(np.asarray([[token]], np.int64), np.asarray([[position]], np.int64),
                         np.ones((1, position + 1), np.int64)))
    return out


class TorchSide:
    """The reference model, one block at a time, in `dtype`. It runs the whole token stream as one causal pass
    per block (one matrix product instead of a matrix-vector product per decode step, several times faster on
    CPU; docs/BENCHMARKS.md, "Layer-major validation"): with
    causal attention, position k's output is the same function of tokens 0..k as decode step k's with the KV
    cache, so only float rounding differs (the KV path itself is what the candidate's side checks)."""

    def __init__(self, args: ModelArgs, dtype, name: str):
        self.args, self.dtype, self.name = args, dtype, name
        self.hidden = None  # [1, positions, dim] torch tensor in `dtype`

    def embed(self, weights: dict, stream: list[Chunk]) -> None:
        import torch

        table = weights["tok_embeddings.weight"].to(self.dtype)
        ids = np.concatenate([c.input_ids for c in stream], axis=1)
        self.hidden = torch.nn.functional.embedding(torch.from_numpy(ids), table)

    def block(self, weights: dict, stream: list[Chunk]) -> np.ndarray:
        """Run every position through one block (weights: its tensors without the `layers.i.` prefix); returns
        the block's output (float32, [positions, dim])."""
        import torch

        from ..model import TransformerBlock, attention_bias, rope_inv_freq, rope_tables

        with torch.device("meta"):
            module = TransformerBlock(self.args)
        module.load_state_dict({k: t.to(self.dtype) for k, t in weights.items()}, strict=True, assign=True)
        positions = self.hidden.shape[1]
        empty = torch.zeros((1, self.args.kv_heads, 0, self.args.head_dim), dtype=self.dtype)
        cos, sin = rope_tables(torch.arange(positions)[None], rope_inv_freq(self.args))
        bias = attention_bias(torch.ones((1, positions), dtype=torch.int64), positions)
        with torch.no_grad():
            self.hidden, _, _ = module(self.hidden, cos, sin, bias, empty, empty)
        return self.hidden[0].float().numpy().copy()

    def head(self, weights: dict) -> np.ndarray:
        import torch

        from ..model import RMSNorm

        norm = RMSNorm(self.args.dim, self.args.norm_eps)
        norm.weight = torch.nn.Parameter(weights["norm.weight"].to(self.dtype), requires_grad=False)
        output = weights["output"].to(self.dtype)
        with torch.no_grad():
            return torch.nn.functional.linear(norm(self.hidden), output).float()[0].numpy()


class OrtSide:
    """The exported graph's pieces in ONNX Runtime (CPU), one at a time."""

    name = "onnxruntime"

    def __init__(self, split: SplitGraph, folder: Path, args: ModelArgs):
        self.split, self.folder, self.args = split, Path(folder).absolute(), args
        self.hidden: list[np.ndarray] = []

    def _session(self, piece: Piece):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT warns about every fp16 cast it inserts; errors still raise
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.folder))
        return cpu_session(piece.model, options, f"{self.folder / 'model.onnx'} (one block at a time)")

    def embed(self, stream: list[Chunk]) -> None:
        session = self._session(self.split.embedding)
        self.hidden = [session.run(None, {io_spec.INPUT_IDS: c.input_ids})[0] for c in stream]

    def block(self, i: int, stream: list[Chunk]) -> list[np.ndarray]:
        piece = self.split.blocks[i]
        session = self._session(piece)
        kv_dtype = ort_numpy_dtype(next(a.type for a in session.get_inputs() if a.name.startswith("past_")))
        key = value = np.zeros((1, self.args.kv_heads, 0, self.args.head_dim), kv_dtype)
        outputs = []
        for c, chunk in enumerate(stream):
            feeds = {self.split.hidden_names[i]: self.hidden[c], io_spec.INPUT_IDS: chunk.input_ids,
                     io_spec.POSITION_IDS: chunk.position_ids, io_spec.ATTENTION_MASK: chunk.attention_mask}
            for name in piece.inputs:  # shared shape arithmetic may read another layer's past: same shape
                if name.startswith("past_key_values."):
                    feeds[name] = key if name.endswith(".key") else value
            hidden, key, value = session.run(piece.outputs, {n: feeds[n] for n in piece.inputs})
            self.hidden[c] = hidden
            outputs.append(np.asarray(hidden[0], np.float32))
        return outputs

    def head(self) -> np.ndarray:
        piece = self.split.head
        session = self._session(piece)
        name = self.split.hidden_names[-1]
        return np.concatenate([session.run(None, {name: h})[0][0] for h in self.hidden]).astype(np.float32)


def layer_weights(checkpoint, i: int) -> dict:
    """Block i's tensors from the checkpoint, keyed as TransformerBlock names them."""
    from ..exporter.checkpoints import expected_shapes

    prefix = f"layers.{i}."
    return {n.removeprefix(prefix): checkpoint.tensor(n) for n in expected_shapes(checkpoint.args)
            if n.startswith(prefix)}


def streamed_traces(checkpoint, split: SplitGraph, folder: Path, prompt_ids: list[int], forced_ids: list[int],
                    noise_dtype=None, progress: Callable[[str], None] | None = None) -> dict[str, Trace]:
    """Traces (logits and every layer's output) of the reference, the noise-floor model (when `noise_dtype`)
    and the candidate, computed block by block. Keys: reference, noise, candidate."""
    import torch

    from ..exporter.checkpoints import output_weight_name

    say = progress or (lambda _message: None)
    args = checkpoint.args
    stream = chunks(prompt_ids, forced_ids)
    torch_sides = {"reference": TorchSide(args, torch.float32, "torch fp32")}
    if noise_dtype is not None:
        torch_sides["noise"] = TorchSide(args, noise_dtype, f"torch {str(noise_dtype).removeprefix('torch.')}")
    candidate = OrtSide(split, folder, args)
    layers: dict[str, list[np.ndarray]] = {name: [] for name in [*torch_sides, "candidate"]}

    embedding = {"tok_embeddings.weight": checkpoint.tensor("tok_embeddings.weight")}
    for side in torch_sides.values():
        side.embed(embedding, stream)
    del embedding
    candidate.embed(stream)
    for i in range(args.n_layers):
        say(f"block {i + 1}/{args.n_layers}")
        weights = layer_weights(checkpoint, i)
        for name, side in torch_sides.items():
            layers[name].append(side.block(weights, stream))
        del weights
        layers["candidate"].append(np.concatenate(candidate.block(i, stream)))
        gc.collect()
    head = {"norm.weight": checkpoint.tensor("norm.weight"),
            "output": checkpoint.tensor(output_weight_name(args))}  # the embedding, when tied
    traces = {name: Trace(side.head(head), layers[name]) for name, side in torch_sides.items()}
    del head
    traces["candidate"] = Trace(candidate.head(), layers["candidate"])
    return traces


__all__ = ["Chunk", "OrtSide", "TorchSide", "chunks", "layer_weights", "streamed_traces"]
