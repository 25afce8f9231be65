"""The batched KV loop: sequences join and leave between decode steps, one runner call per step for all of them.

Cache layout: one batch cache [batch, n_kv_heads, columns, head_dim] per past tensor, LEFT-padded, rows
right-aligned. Every row's real tokens are the last `length` columns; the columns before them are padding with
`attention_mask` 0, and `position_ids` count real tokens only (so a row sees the positions it would alone).
Why padding + mask and not slots sized to `max_seq_len`: the exported graph appends each step's key/value at
the END of the past it is fed (present = Concat(past, new)), so right-aligned rows stay aligned by construction,
and the attention over `columns` = the longest live row costs what that row costs alone — slots would attend
over `max_seq_len` columns every step. The price is a copy of the cache when sequences join (their prefilled
cache padded to the batch's width, or the batch padded to a longer newcomer) or leave (their rows dropped and the
all-padding columns on the left trimmed); the graph copies the cache every step anyway (Concat).

Sequences join through `join_many()` (or `join()` for one): ONE runner call prefills all of them, their prompts
left-padded to the longest with attention_mask 0 and per-row position_ids (left_padded_position_ids), then each
picks its first token and decodes in the next `step()`. Every `step()` runs all live rows through the runner once
and picks each row's next token. A row leaves the moment it finishes (a stop id, max_new_tokens, the context
limit) or `cancel()` is called. The padding columns of a batched prefill hold whatever the graph computed for the
pad tokens (finite: attention_bias lets every query see itself), not zeros; nothing reads them, because the
graph's attention honours the mask anywhere in the cache (tests/graphs/test_masked_cache.py checks it with large
garbage in the masked slots, for every fusion target).

Numerics: a padded row is not bit-identical to its batch-1 run. Masked keys add exact zeros to the softmax, but
the real scores sit at other offsets of a longer reduction, and a GEMM over several rows may block differently
from one over a single row, so logits move in the last float bits (fp32, tiny model: under 1e-6 of the logits'
scale, ORT and torch) — as every decode step of a batch already does. Greedy (and seeded sampling) picks the
same token unless two logits tie to that precision. tests/validate/test_batching.py bounds the prefill logits'
distance and checks tokens equal batch-1 for staggered joins and for prompts of different lengths joining in
one prefill, with the ORT and torch runners. A single joiner is a plain batch-1 prefill (batch-1's logits).

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
        """`join_many` for one sequence: a batch-1 prefill."""
        return self.join_many([sequence])[0]

    def join_many(self, sequences: list[Sequence]) -> list[Update]:
        """Prefill `sequences` in one runner call (left-padded to the longest prompt), pick each one's first token
        and add those it did not finish to the batch. One update per sequence, in order (a sequence that asks for
        no token finishes without a prefill). If the runner call raises, the batch and every prefilled sequence
        are as they were, so the caller may retry them."""
        updates: list[Update | None] = [None] * len(sequences)
        prefill = []  # indices into sequences
        for index, sequence in enumerate(sequences):
            if sequence.max_new_tokens <= 0:
                sequence.finish_reason = "length"
                updates[index] = Update(sequence, None)
            else:
                prefill.append(index)
        if not prefill:
            return updates
        ids, mask = left_padded_prompts([sequences[i].prompt_ids for i in prefill])
        session = KVSession(self.runner)
        logits = session.prefill(ids, mask)[:, -1]
        for row, index in enumerate(prefill):
            updates[index] = self._advance(sequences[index], logits[row])
        keep = [row for row, index in enumerate(prefill) if not sequences[index].finished]
        if keep:
            self._merge(*_take_rows(session.past, session.attention_mask, keep))
            self.rows += [sequences[prefill[row]] for row in keep]
        return updates

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
        """Append a cache block (one or more rows) below the batch, left-padding whichever side is narrower."""
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
        self.past, self.mask = _take_rows(self.past, self.mask, keep)


def left_padded_prompts(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) [len(prompts), longest]: each prompt right-aligned, pad id 0 masked out."""
    width = max(len(prompt) for prompt in prompts)
    ids = np.zeros((len(prompts), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def _take_rows(past: dict, mask: np.ndarray, keep: list[int]):
    """Rows `keep` of a right-aligned cache (numpy arrays, or a runner's torch tensors) and its mask, without the
    columns that are padding in all of them."""
    start = mask.shape[1] - int(mask[keep].sum(axis=1).max())
    if start == 0 and keep == list(range(mask.shape[0])):
        return past, mask
    return ({name: value[keep, :, start:] for name, value in past.items()},
            np.take(mask[:, start:], keep, axis=0))


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
    """Run every sequence to the end, at most `max_batch` at a time; whenever rows are free, the waiting
    sequences that fit join together (one prefill call) before the next step. `on_update` sees every token as
    it is chosen (for streaming)."""
    batch = BatchedGeneration(runner)
    limit = max_batch or max(1, len(sequences))
    waiting = list(sequences)
    while waiting or batch.rows:
        free = limit - batch.batch_size
        joining, waiting = waiting[:free], waiting[free:]
        updates = batch.join_many(joining) if joining else []
        updates += batch.step()
        for update in updates if on_update else ():
            on_update(update)
    return sequences


__all__ = ["BatchedGeneration", "Sequence", "Update", "generate_batch", "left_padded_prompts"]
