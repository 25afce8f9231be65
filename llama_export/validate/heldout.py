"""Held-out perplexity and greedy agreement for any runner (Torch, ORT, ...): the measures the INT8 acceptance
and benchmarks/int8.py quote. Perplexity itself is metrics.perplexity; this only feeds it windows.

The protocol is tools/train_tiny.py's: non-overlapping windows of `window` tokens, each starting with BOS,
covering the held-out text once, so the fp32 number reproduces the asset README's 29.76.
"""

from __future__ import annotations

import numpy as np

from .generation import generate_tokens
from .metrics import perplexity
from .runners import KVSession, Runner

PERPLEXITY_WINDOW = 256  # the tiny asset's training / evaluation sequence length


def heldout_windows(token_ids: list[int], bos: int, window: int = PERPLEXITY_WINDOW,
                    limit: int | None = None) -> list[list[int]]:
    step = window - 1
    windows = [[bos, *token_ids[i:i + step]] for i in range(0, len(token_ids), step)]
    windows = [w for w in windows if len(w) > 1]
    return windows if limit is None else windows[:limit]


def windowed_perplexity(runner: Runner, windows: list[list[int]]) -> float:
    """Token-level perplexity over every window's next-token predictions (one prefill per window)."""
    logits, targets = [], []
    for w in windows:
        out = KVSession(runner).prefill(np.asarray([w]))[0]
        logits.append(out[:-1].astype(np.float32))
        targets.append(np.asarray(w[1:]))
    return perplexity(np.concatenate(logits), np.concatenate(targets))


def greedy_agreement(reference: Runner, candidate: Runner, prompts: list[list[int]], new_tokens: int = 32) -> float:
    """Fraction of the first `new_tokens` greedy tokens that match position by position, over all prompts."""
    same = total = 0
    for prompt in prompts:
        ref = list(generate_tokens(reference, prompt, new_tokens))
        cand = list(generate_tokens(candidate, prompt, new_tokens))
        same += sum(a == b for a, b in zip(ref, cand))
        total += len(ref)
    return same / max(total, 1)


def forced_agreement(reference: Runner, candidate: Runner, prompts: list[list[int]], new_tokens: int = 32) -> float:
    """Top-1 agreement along the reference's greedy continuation (both fed the same tokens). Unlike
    greedy_agreement, one flipped near-tie does not make every later position count as a miss."""
    same = total = 0
    for prompt in prompts:
        ref = list(generate_tokens(reference, prompt, new_tokens))
        path = np.asarray([[*prompt, *ref]])
        ref_top = KVSession(reference).prefill(path)[0, len(prompt) - 1:-1].argmax(-1)
        cand_top = KVSession(candidate).prefill(path)[0, len(prompt) - 1:-1].argmax(-1)
        same += int((ref_top == cand_top).sum())
        total += len(ref)
    return same / max(total, 1)


__all__ = ["PERPLEXITY_WINDOW", "forced_agreement", "greedy_agreement", "heldout_windows", "windowed_perplexity"]
