"""The batched KV loop: sequences join and leave between decode steps, one runner call per step for all of them.

Cache layout: one batch cache [batch, n_kv_heads, columns, head_dim] per past tensor, LEFT-padded, rows
right-aligned. Every row's real tokens are the last `length` columns; the columns before them hold zeros and
`attention_mask` 0 there, and `position_ids` count real tokens only (so a row sees the positions it would alone).
Why padding + mask and not slots sized to `max_seq_len`: the exported graph appends each step's key/value at
the END of the past it is fed (present = Concat(past, new)), so right-aligned rows stay aligned by construction,
and the attention over `columns` = the longest live row costs what that row costs alone — slots would attend
over `max_seq_len` columns every step. The price is a copy of the cache when a sequence joins (its prefilled
cache padded to the batch's width, or the batch padded to a longer newcomer) or leaves (its row dropped and the
all-padding columns on the left trimmed); the graph copies the cache every step anyway (Concat).

A sequence joins through `join()`: a batch-1 prefill of its prompt (prefill logits are then exactly its batch-1
logits) and its first token; it decodes in the next `step()`. Every `step()` runs all live rows through the
runner once and picks each row's next token. A row leaves the moment it finishes (a stop id, max_new_tokens, the
context limit) or `cancel()` is called. The exported graph's attention honours the mask anywhere in the cache
(tests/validate/test_batching.py checks it with garbage in the masked slots, for every fusion target), so each
row's greedy tokens equal its batch-1 tokens.

The cache tensors are whatever the runner returns as `present.*`: numpy arrays (ORT, Torch), or torch CUDA tensors
that never leave the GPU (engine/runtime.TensorRTRunner); joining and leaving pad, stack and slice either kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import io_spec
from .generation import Sampling, choose_token
from .runners import KVSession, Runner


@dataclass(eq=False)
class Sequence:
    """One generation request and its progress. `tokens` are the generated ids so far."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop_ids: frozenset[int] = frozenset()
    max_length: int | None = None  # prompt + generated tokens the KV cache can hold
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (a stop id), "length" (max_new_tokens / max_length), "cancelled"
    key: object = None  # the caller's handle (request, sender, index...)

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("the prompt encodes to no tokens")
        self.rng = np.random.default_rng(self.sampling.seed)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def length(self) -> int:
        """Tokens in this sequence's KV cache once its pending token is fed: prompt + generated."""
        return len(self.prompt_ids) + len(self.tokens)


@dataclass(frozen=True)
class Update:
    """What one join or step did to one sequence: a new token (or None when it stopped without one)."""

    sequence: Sequence
    token: int | None

    @property
    def finished(self) -> bool:
        return self.sequence.finished


class BatchedGeneration:
    """Continuous batching over any Runner (see the module docstring for the cache layout)."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.args = runner.args
        self.rows: list[Sequence] = []  # row i of the batch cache
        self.past: dict[str, np.ndarray] = {}
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.forwards = 0  # runner calls made by step(), for tests and metrics

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    def join(self, sequence: Sequence) -> Update:
        """Prefill `sequence` alone, pick its first token and, unless that finishes it, add it to the batch."""
        if sequence.max_new_tokens <= 0:
            sequence.finish_reason = "length"
            return Update(sequence, None)
        session = KVSession(self.runner)
        logits = session.prefill(np.asarray([sequence.prompt_ids]))[0, -1]
        update = self._advance(sequence, logits)
        if not sequence.finished:
            self._merge(session.past, session.attention_mask)
            self.rows.append(sequence)
        return update

    def step(self) -> list[Update]:
        """One runner call for every live row; returns each row's update. Finished rows leave the batch."""
        if not self.rows:
            return []
        pending = np.asarray([[s.tokens[-1]] for s in self.rows], dtype=np.int64)
        positions = self.mask.sum(axis=1, keepdims=True).astype(np.int64)  # real tokens so far = next position
        mask = np.concatenate([self.mask, np.ones_like(pending)], axis=1)
        outputs = self.runner.run({io_spec.INPUT_IDS: pending, io_spec.POSITION_IDS: positions,
                                   io_spec.ATTENTION_MASK: mask, **self.past})
        self.forwards += 1
        n = self.args.n_layers
        self.past = {p: outputs[q] for p, q in zip(io_spec.past_names(n), io_spec.present_names(n))}
        self.mask = mask
        logits = outputs[io_spec.LOGITS][:, -1]
        updates = [self._advance(sequence, row_logits) for sequence, row_logits in zip(self.rows, logits)]
        self._drop([i for i, s in enumerate(self.rows) if s.finished])
        return updates

    def cancel(self, sequence: Sequence) -> None:
        """Drop `sequence` from the batch now (no-op when it already left)."""
        if sequence.finish_reason is None:
            sequence.finish_reason = "cancelled"
        self._drop([i for i, s in enumerate(self.rows) if s is sequence])

    def _advance(self, sequence: Sequence, logits: np.ndarray) -> Update:
        """Pick the next token from `logits`, with generate_tokens' stopping rules."""
        token = choose_token(logits, sequence.sampling, sequence.rng)
        if token in sequence.stop_ids:
            sequence.finish_reason = "stop"
            return Update(sequence, None)
        sequence.tokens.append(token)
        full = sequence.max_length is not None and sequence.length >= sequence.max_length
        if len(sequence.tokens) >= sequence.max_new_tokens or full:
            sequence.finish_reason = "length"
        return Update(sequence, token)

    def _merge(self, past: dict[str, np.ndarray], mask: np.ndarray) -> None:
        """Append a batch-1 cache as a new row, left-padding whichever side is shorter."""
        width = max(self.columns, mask.shape[1])
        if not self.rows:
            self.past, self.mask = dict(past), mask.astype(np.int64)
            return
        self.past = {name: _stack_rows(_left_pad(self.past[name], width), _left_pad(past[name], width))
                     for name in self.past}
        self.mask = np.concatenate([_left_pad(self.mask, width), _left_pad(mask.astype(np.int64), width)])

    def _drop(self, indices: list[int]) -> None:
        if not indices:
            return
        keep = [i for i in range(len(self.rows)) if i not in set(indices)]
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.past, self.mask = {}, np.zeros((0, 0), dtype=np.int64)
            return
        start = self.columns - int(self.mask[keep].sum(axis=1).max())  # columns that are padding in every row left
        self.past = {name: value[keep, :, start:] for name, value in self.past.items()}
        self.mask = np.take(self.mask[:, start:], keep, axis=0)


def _left_pad(array: np.ndarray, width: int) -> np.ndarray:
    """Zero-pad the sequence axis (2 for a cache [b, h, t, d], 1 for a mask [b, t]) on the left to `width`."""
    axis = 2 if array.ndim == 4 else 1
    missing = width - array.shape[axis]
    if missing == 0:
        return array
    if not isinstance(array, np.ndarray):  # a runner's device cache: a torch tensor (imported only then)
        from torch.nn.functional import pad

        return pad(array, (0, 0, missing, 0) if axis == 2 else (missing, 0))
    pad = [(0, 0)] * array.ndim
    pad[axis] = (missing, 0)
    return np.pad(array, pad)


def _stack_rows(first, second):
    """Concatenate two caches along the batch axis (numpy arrays, or a runner's torch tensors)."""
    if isinstance(first, np.ndarray):
        return np.concatenate([first, second])
    import torch

    return torch.cat([first, second])


def generate_batch(runner: Runner, sequences: list[Sequence], max_batch: int | None = None,
                   on_update: Callable[[Update], None] | None = None) -> list[Sequence]:
    """Run every sequence to the end, at most `max_batch` at a time, each joining as soon as a row is free.
    `on_update` sees every token as it is chosen (for streaming)."""
    batch = BatchedGeneration(runner)
    limit = max_batch or max(1, len(sequences))
    waiting = list(sequences)[::-1]
    while waiting or batch.rows:
        updates = []
        while waiting and batch.batch_size < limit:
            updates.append(batch.join(waiting.pop()))
        updates += batch.step()
        for update in updates if on_update else ():
            on_update(update)
    return sequences


__all__ = ["BatchedGeneration", "Sequence", "Update", "generate_batch"]
