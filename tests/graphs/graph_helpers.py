"""Shared by the graph-rewrite tests: tiny exports with in-memory weights, random feeds for one graph call, and a
Torch-vs-ORT comparison loop."""

from __future__ import annotations

import functools

import numpy as np
import onnx_ir as ir
import torch

from llama_export import io_spec
from llama_export.config import ModelArgs
from llama_export.exporter.export import trace_graph
from llama_export.exporter.random_init import RandomCheckpoint
from llama_export.graphs import cleanup
from llama_export.model import Transformer

TINY_MHA = ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=128, multiple_of=32, max_seq_len=128)
TINY_GQA = ModelArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32,
                     max_seq_len=128)
PRECISION = {"fp32": torch.float32, "fp16": torch.float16}


def random_weights(args: ModelArgs, seed: int = 1) -> dict[str, torch.Tensor]:
    """RandomCheckpoint's norms are all ones (and would be deduplicated into one); give them random values."""
    state = RandomCheckpoint(args, seed).state_dict()
    g = torch.Generator().manual_seed(seed)
    return {n: (1 + 0.1 * torch.randn(t.shape, generator=g) if t.dim() == 1 else t) for n, t in state.items()}


@functools.lru_cache(maxsize=16)
def _traced(args: ModelArgs, precision: str, opset: int) -> bytes:
    dtype = PRECISION[precision]
    model = trace_graph(args, dtype, opset)
    for name, tensor in random_weights(args).items():
        model.graph.initializers[name].const_value = ir.tensor(tensor.to(dtype).numpy(), name=name)
    for name, value in model.graph.initializers.items():  # tracer-lifted constants (inv_freq)
        raw = getattr(value.const_value, "raw", None)
        if isinstance(raw, torch.Tensor):
            value.const_value = ir.tensor(raw.numpy().copy(), name=name)
    return ir.serde.serialize_model(model).SerializeToString()


def exported(args: ModelArgs, precision: str = "fp32", opset: int = 23) -> ir.Model:
    """A fresh ir.Model of the traced export (tracing is cached; each caller gets its own copy)."""
    import onnx

    return ir.serde.deserialize_model(onnx.load_from_string(_traced(args, precision, opset)))


def cleaned(args: ModelArgs, precision: str = "fp32", opset: int = 23) -> ir.Model:
    """The traced export after graphs.cleanup: what every rewrite rule starts from."""
    model = exported(args, precision, opset)
    cleanup.cleanup(model)
    return model


def torch_model(args: ModelArgs, precision: str = "fp32") -> Transformer:
    model = Transformer(args)
    model.load_state_dict(random_weights(args))
    return model.to(PRECISION[precision]).eval()


def ops(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        key = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts


def save(model: ir.Model, path) -> str:
    ir.save(model, path)
    return str(path)


def decode_logits(runner, prompt: np.ndarray, steps: int, mask: np.ndarray | None = None) -> list[np.ndarray]:
    """Prefill + `steps` greedy decode steps through KVSession; the logits of every call."""
    from llama_export.validate.runners import KVSession

    session = KVSession(runner)
    out = [session.prefill(prompt, mask)]
    for _ in range(steps):
        out.append(session.step(out[-1][:, -1].argmax(-1)))
    return out


def random_feeds(args: ModelArgs, batch: int = 2, seq: int = 5, past: int = 3, dtype=np.float32) -> dict[str, np.ndarray]:
    """One call's feeds with a non-empty past and row 1's first two cache slots masked: a single run that
    exercises the cache, the mask and batching."""
    rng = np.random.default_rng(0)
    kv = (batch, args.kv_heads, past, args.head_dim)
    mask = np.ones((batch, past + seq), dtype=np.int64)
    mask[1, :2] = 0
    feeds = {io_spec.INPUT_IDS: rng.integers(0, args.vocab_size, (batch, seq)),
             io_spec.POSITION_IDS: np.tile(np.arange(past, past + seq), (batch, 1)),
             io_spec.ATTENTION_MASK: mask}
    feeds |= {name: rng.standard_normal(kv).astype(dtype) for name in io_spec.past_names(args.n_layers)}
    return feeds
