"""Reference vs candidate over prefill + decode, through any two runners.

Teacher forcing: the reference decodes greedily; every other side is then fed exactly the reference's token
stream (the prompt, then the reference's greedy tokens one step at a time), so step k compares logits on
identical inputs and an early small error cannot snowball into a different continuation. Separately, a
free-running greedy generation on each side shows what a user would see: the first step where they diverge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics
from .generation import generate_tokens
from .layers import layer_output_name
from .runners import KVSession, Runner


@dataclass
class Trace:
    """One side's run over the token stream: logits for every position, prompt positions first then one row per
    decode step; optionally each decoder layer's output at every position."""

    logits: np.ndarray  # [positions, vocab] float32
    layers: list[np.ndarray] | None = None  # n_layers × [positions, dim] float32


class _Recorder:
    def __init__(self, session: KVSession, n_layers: int, capture_layers: bool):
        self.session, self.n_layers, self.capture = session, n_layers, capture_layers
        self.logits: list[np.ndarray] = []
        self.layers: list[list[np.ndarray]] = [[] for _ in range(n_layers)]

    def add(self, logits: np.ndarray) -> np.ndarray:
        self.logits.append(np.asarray(logits[0], dtype=np.float32))
        if self.capture:
            outputs = self.session.last_outputs
            for i in range(self.n_layers):
                name = layer_output_name(i)
                if name not in outputs:
                    raise RuntimeError(f"runner {self.session.runner.name} does not expose {name}")
                self.layers[i].append(np.asarray(outputs[name][0], dtype=np.float32))
        return self.logits[-1][-1]

    def trace(self) -> Trace:
        layers = [np.concatenate(rows) for rows in self.layers] if self.capture else None
        return Trace(np.concatenate(self.logits), layers)


def reference_run(runner: Runner, prompt_ids: list[int], steps: int,
                  capture_layers: bool = False) -> tuple[Trace, list[int]]:
    """Greedy decoding of `steps` tokens (batch 1). Returns the trace and the greedy tokens, which are the
    token stream every other side is forced through."""
    session = KVSession(runner)
    recorder = _Recorder(session, runner.args.n_layers, capture_layers)
    last = recorder.add(session.prefill(np.asarray([prompt_ids])))
    tokens = []
    for _ in range(steps):
        tokens.append(int(np.argmax(last)))
        last = recorder.add(session.step(np.asarray([tokens[-1]])))
    return recorder.trace(), tokens


def forced_run(runner: Runner, prompt_ids: list[int], forced_ids: list[int], capture_layers: bool = False) -> Trace:
    """Prefill the prompt, then feed `forced_ids` one decode step at a time, whatever this side would pick."""
    session = KVSession(runner)
    recorder = _Recorder(session, runner.args.n_layers, capture_layers)
    recorder.add(session.prefill(np.asarray([prompt_ids])))
    for token in forced_ids:
        recorder.add(session.step(np.asarray([token])))
    return recorder.trace()


def free_running(runner: Runner, prompt_ids: list[int], steps: int, stop_ids: frozenset[int] = frozenset()
                 ) -> list[int]:
    """Greedy generation up to `steps` tokens or a stop id: what this side says on its own."""
    return list(generate_tokens(runner, prompt_ids, steps, stop_ids=stop_ids))


def until_stop(tokens: list[int], stop_ids: frozenset[int]) -> list[int]:
    """`tokens` before the first stop id: a free-running generation that saw the same tokens would end there."""
    return next((tokens[:i] for i, token in enumerate(tokens) if token in stop_ids), list(tokens))


def first_divergence(reference: list[int], candidate: list[int]) -> int | None:
    """0-based index of the first generated token that differs, or None when the generations agree."""
    for i, (a, b) in enumerate(zip(reference, candidate)):
        if a != b:
            return i
    return None if len(reference) == len(candidate) else min(len(reference), len(candidate))


def compare_logits(reference: Trace, candidate: Trace, prompt_ids: list[int]) -> dict:
    """Per-step and overall logit metrics, per-position errors and text perplexity of both sides.

    Step 0 is the prefill (all prompt positions); step s ≥ 1 is decode step s (one position)."""
    ref, cand = reference.logits, candidate.logits
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape}, candidate {cand.shape}")
    n_prompt = len(prompt_ids)
    per_step = [{"step": 0, "kind": "prefill", "positions": n_prompt,
                 **metrics.logit_metrics(ref[:n_prompt], cand[:n_prompt])}]
    for step, row in enumerate(range(n_prompt, len(ref)), start=1):
        per_step.append({"step": step, "kind": "decode", "positions": 1,
                         **metrics.logit_metrics(ref[row:row + 1], cand[row:row + 1])})
    # Row i predicts token i + 1: the text's perplexity uses the prompt rows that have a next prompt token.
    targets = np.asarray(prompt_ids[1:])
    ppl_ref = metrics.perplexity(ref[: n_prompt - 1], targets)
    ppl_cand = metrics.perplexity(cand[: n_prompt - 1], targets)
    return {
        "overall": metrics.logit_metrics(ref, cand),
        "per_step": per_step,
        "per_position": {"max_abs": metrics.abs_error_per_position(ref, cand).tolist(),
                         "kl": metrics.kl_per_position(ref, cand).tolist()},
        "perplexity": {"reference": ppl_ref, "candidate": ppl_cand, "delta": abs(ppl_cand / ppl_ref - 1.0)},
    }


def compare_layers(reference: Trace, candidate: Trace) -> list[float]:
    """Relative RMS error of each decoder layer's output over all positions."""
    if reference.layers is None or candidate.layers is None:
        raise ValueError("both traces need layer outputs (capture_layers=True)")
    return [metrics.relative_rms_error(r, c) for r, c in zip(reference.layers, candidate.layers)]


__all__ = ["Trace", "compare_layers", "compare_logits", "first_divergence", "forced_run", "free_running",
           "reference_run", "until_stop"]
