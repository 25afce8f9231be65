"""Token generation on top of a KVSession: greedy, or temperature + top-p sampling."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .runners import KVSession, Runner


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0


def fit_prompt(ids: list[int], max_new_tokens: int, max_seq_len: int, truncate: bool, what: str = "the prompt",
               keep_first: bool = True) -> list[int]:
    """`ids` when it and `max_new_tokens` fit the model's context; with `truncate`, its last tokens that fit
    (the first, BOS, kept when `keep_first`); otherwise a UserError naming the numbers."""
    from ..errors import UserError

    if max_new_tokens >= max_seq_len:
        raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context of "
                        f"{max_seq_len} tokens; lower it")
    room = max_seq_len - max_new_tokens
    if len(ids) <= room:
        return ids
    if not truncate:
        raise UserError(f"{what} is {len(ids)} tokens; with --max-new-tokens {max_new_tokens} that exceeds the "
                        f"model's context of {max_seq_len} tokens; shorten it, lower --max-new-tokens, or pass "
                        "--truncate to keep its last tokens")
    head = ids[:1] if keep_first and room > 1 else []
    return head + ids[len(ids) - (room - len(head)):]


def choose_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """logits [vocab] → token id."""
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / sampling.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]  # smallest nucleus with mass >= top_p
    return int(rng.choice(keep, p=probs[keep] / probs[keep].sum()))


def generate_tokens(runner: Runner, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling = Sampling(),
                    stop_ids: frozenset[int] = frozenset(), max_length: int | None = None) -> Iterator[int]:
    """Yield new token ids one at a time (batch 1), stopping at a stop id, max_new_tokens or max_length."""
    if not prompt_ids:
        raise ValueError("the prompt encodes to no tokens")
    rng = np.random.default_rng(sampling.seed)
    session = KVSession(runner)
    logits = session.prefill(np.asarray([prompt_ids]))[0, -1]
    for _ in range(max_new_tokens):
        token = choose_token(logits, sampling, rng)
        if token in stop_ids:
            return
        yield token
        if max_length is not None and session.length + 1 >= max_length:
            return
        logits = session.step(np.asarray([token]))[0, -1]
