"""The batched KV loop against batch-1 generation (generate_tokens over KVSession), tiny model, fp32, greedy:
staggered joins (shorter and longer prompts than the batch's width), several prompts of different lengths
prefilled together in one call, leaves at different steps (stop ids, max_new_tokens, the context limit,
cancellation, the first token), one runner call per step and per join. Every test also runs with the cache held
as torch tensors (TorchCacheRunner), the way the TensorRT runner keeps it on the GPU."""

from __future__ import annotations

import numpy as np
import pytest

from llama_export import io_spec
from llama_export.exporter.artifacts import load_manifest
from llama_export.exporter.checkpoints import load_model
from llama_export.validate.batching import BatchedGeneration, Sequence, generate_batch
from llama_export.validate.generation import Sampling, generate_tokens
from llama_export.validate.pipeline import reference_checkpoint
from llama_export.validate.runners import KVSession, OrtRunner, TorchRunner

TEXTS = ["The for statement", "x", "Dictionaries are sometimes found in other languages as associative memories",
         "def f(", "The while loop executes as long as the condition", "import"]


class CountingRunner:
    """The real runner, counting calls and the batch size of each (one call per step is the contract)."""

    def __init__(self, runner):
        self.runner, self.name, self.args, self.kv_dtype = runner, runner.name, runner.args, runner.kv_dtype
        self.batches: list[int] = []
        self.shapes: list[tuple[int, int]] = []  # (rows, tokens per row) of each call

    def run(self, feeds):
        self.batches.append(feeds[io_spec.INPUT_IDS].shape[0])
        self.shapes.append(feeds[io_spec.INPUT_IDS].shape)
        return self.runner.run(feeds)


class TorchCacheRunner:
    """ONNX Runtime with its KV cache returned as torch tensors and taken back as such, as engine/runtime's
    TensorRTRunner returns torch CUDA tensors: the loops must carry a runner's own cache type (padding, stacking
    and dropping rows included) without turning it into numpy. Records the past it was last fed and the type of
    every past it is fed."""

    def __init__(self, runner):
        self.runner, self.name, self.args, self.kv_dtype = runner, "ort-torch-cache", runner.args, runner.kv_dtype
        self.past_types: set[type] = set()
        self.last_past: dict = {}

    def run(self, feeds):
        import torch

        past = self.last_past = {name: feeds[name] for name in io_spec.past_names(self.args.n_layers)}
        if next(iter(past.values())).shape[2]:  # prefill's empty past is the loop's own (numpy) zeros
            self.past_types |= {type(value) for value in past.values()}
        outputs = self.runner.run({**feeds, **{name: value.numpy() if isinstance(value, torch.Tensor) else value
                                               for name, value in past.items()}})
        return {name: torch.from_numpy(value) if name.startswith("present.") else value
                for name, value in outputs.items()}


@pytest.fixture(scope="module", params=["ort", "torch", "ort-torch-cache"])
def runner(request, fp32_dir):
    built = load_manifest(fp32_dir)
    if request.param.startswith("ort"):
        ort = OrtRunner(built.model_path, built.args)
        yield TorchCacheRunner(ort) if request.param == "ort-torch-cache" else ort
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batch-1 steps: more threads only add synchronisation on a shared machine
    yield TorchRunner(load_model(reference_checkpoint(built)).eval())
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts(fp32_dir):
    tokenizer = load_manifest(fp32_dir).tokenizer()
    return [tokenizer.encode(text) for text in TEXTS], tokenizer.eos_id


def _reference(runner, sequence: Sequence) -> list[int]:
    return list(generate_tokens(runner, sequence.prompt_ids, sequence.max_new_tokens, sequence.sampling,
                                sequence.stop_ids, sequence.max_length))


def test_staggered_joins_and_leaves_equal_batch_1(runner, prompts):
    ids, eos = prompts
    budgets = [24, 5, 18, 30, 9, 14, 1, 0]
    # 6 and 7 join with 5: the longest prompt of that prefill, finished by its first token (it never takes a
    # row, so the batch must not widen for it), and one that asks for no token at all.
    ids = [*ids, ids[2] + ids[4], ids[1]]
    sequences = [Sequence(p, n, stop_ids=frozenset({eos})) for p, n in zip(ids, budgets)]
    sequences[3].max_length = len(ids[3]) + 11  # the context limit ends this one before max_new_tokens
    references = [_reference(runner, s) for s in sequences]
    # A stop id that the reference meets mid-way: that sequence leaves early, without emitting it.
    stop_at = references[2][7]
    sequences[2].stop_ids = frozenset({eos, stop_at})
    references[2] = references[2][:references[2].index(stop_at)]

    counting = CountingRunner(runner)
    batch = BatchedGeneration(counting)
    # step -> sequences joining before it: staggered single joins, and prompts of different lengths joining
    # together (0 and 1 into an empty batch, 3 and 4 into a running one, 5-7 with two that never take a row).
    schedule = {0: [0, 1], 2: [2], 3: [3, 4], 6: [5, 6, 7]}
    assert len({len(ids[i]) for i in (0, 1)}) == 2 and len({len(ids[i]) for i in (3, 4)}) == 2
    cancel_at, cancelled = 8, sequences[0]
    step, widths = 0, []
    while step in schedule or batch.rows or step < max(schedule):
        joining = [sequences[i] for i in schedule.get(step, [])]
        calls = len(counting.batches)
        updates = batch.join_many(joining)
        assert [u.sequence for u in updates] == joining
        prefilled = [s for s in joining if s.max_new_tokens > 0]
        assert counting.shapes[calls:] == ([(len(prefilled), max(len(s.prompt_ids) for s in prefilled))]
                                           if prefilled else []), "one prefill call for all the joiners"
        if step == cancel_at:
            batch.cancel(cancelled)
        calls = len(counting.batches)
        live = batch.batch_size
        # The cache is exactly as wide as its longest row (the pending tokens are not in it yet).
        assert batch.columns == max((s.length - 1 for s in batch.rows), default=0)
        widths.append(batch.columns)
        batch.step()
        assert len(counting.batches) - calls == (1 if live else 0), "one runner call per step"
        if live:
            assert counting.batches[-1] == live
        step += 1

    for index, (sequence, expected) in enumerate(zip(sequences, references)):
        if sequence is cancelled:
            assert sequence.finish_reason == "cancelled"
            assert sequence.tokens == expected[:len(sequence.tokens)] and 0 < len(sequence.tokens) < len(expected)
        else:
            assert sequence.tokens == expected, f"sequence {index} ({sequence.finish_reason})"
    assert sequences[2].finish_reason == "stop" and sequences[3].finish_reason == "length"
    assert len(sequences[3].tokens) == 11 < sequences[3].max_new_tokens
    assert len(sequences[6].tokens) == 1 and sequences[7].tokens == [] and sequences[7].finish_reason == "length"
    assert batch.rows == [] and batch.columns == 0, "every sequence left and freed its row"
    assert widths[3] == len(ids[2]) + 1 > widths[2], "a longer newcomer widens the batch"


def test_batched_prefill_logits_are_batch_1_logits_to_float_rounding(runner, prompts):
    """Left padding moves the real tokens to other offsets of longer reductions: last-bit differences only, far
    below the gaps greedy decoding depends on (the token tests above)."""
    ids, _ = prompts
    batch_1 = np.stack([KVSession(runner).prefill(np.asarray([p]))[0, -1] for p in ids])
    width = max(len(p) for p in ids)
    padded = np.asarray([[0] * (width - len(p)) + p for p in ids])
    mask = np.asarray([[0] * (width - len(p)) + [1] * len(p) for p in ids])
    together = KVSession(runner).prefill(padded, mask)[:, -1]
    scale = np.abs(batch_1).max()
    assert np.abs(together - batch_1).max() <= 1e-5 * scale, np.abs(together - batch_1).max() / scale
    assert (together.argmax(-1) == batch_1.argmax(-1)).all()


def test_generate_batch_with_fewer_rows_than_sequences(runner, prompts):
    ids, eos = prompts
    sampling = Sampling(temperature=0.8, top_p=0.9, seed=3)  # each row has its own seeded generator
    sequences = [Sequence(p, 12, sampling if i % 2 else Sampling(), frozenset({eos})) for i, p in enumerate(ids)]
    streamed: dict[int, list[int]] = {}
    counting = CountingRunner(runner)
    generate_batch(counting, sequences, max_batch=4,
                   on_update=lambda u: u.token is not None and streamed.setdefault(id(u.sequence), []).append(u.token))
    assert counting.shapes[0] == (4, max(len(p) for p in ids[:4])), "the first four are prefilled in one call"
    for sequence in sequences:
        assert sequence.tokens == _reference(runner, sequence)
        assert streamed.get(id(sequence), []) == sequence.tokens


def test_rows_leave_and_the_cache_shrinks(runner, prompts):
    ids, _ = prompts
    long, short = Sequence(ids[2], 3), Sequence(ids[1], 10)
    batch = BatchedGeneration(runner)
    batch.join(long)
    batch.join(short)
    assert batch.columns == len(ids[2]) and batch.mask[1].sum() == len(ids[1])
    for _ in range(2):
        batch.step()
    assert long.finished and batch.rows == [short]
    assert batch.columns == short.length - 1, "all-padding columns are trimmed when the longest row leaves"
    assert next(iter(batch.past.values())).shape[0] == 1
    zero = Sequence(ids[0], 0)
    assert batch.join(zero).token is None and zero.finish_reason == "length" and batch.rows == [short]


def test_a_runners_own_cache_type_is_carried_untouched(fp32_dir, prompts):
    import torch

    built = load_manifest(fp32_dir)
    ort = OrtRunner(built.model_path, built.args)
    cached = TorchCacheRunner(ort)
    session = KVSession(cached)
    session.prefill([prompts[0][0]])
    for token in (5, 6):
        returned = dict(session.past)
        session.step([token])
        assert all(cached.last_past[name] is returned[name] for name in returned), "fed back as returned"
        assert all(isinstance(value, torch.Tensor) for value in session.past.values())

    ids, eos = prompts
    plain = [Sequence(p, 8, stop_ids=frozenset({eos})) for p in ids[:4]]
    torch_cached = [Sequence(p, 8, stop_ids=frozenset({eos})) for p in ids[:4]]
    generate_batch(ort, plain, max_batch=3)
    generate_batch(cached, torch_cached, max_batch=3)
    assert [s.tokens for s in torch_cached] == [s.tokens for s in plain]
    assert cached.past_types == {torch.Tensor}, "the batched loop turned the runner's cache into numpy"


def test_cli_generate_runs_several_prompts_as_one_batch(fp32_dir):
    from click.testing import CliRunner

    from llama_export.cli import main

    options = [str(fp32_dir), "--backend", "ort", "--max-new-tokens", "12"]
    alone = [CliRunner().invoke(main, ["generate", *options, "--prompt", text]) for text in TEXTS[:3]]
    together = CliRunner().invoke(main, ["generate", *options, *(a for t in TEXTS[:3] for a in ("--prompt", t))])
    assert together.exit_code == 0 and all(r.exit_code == 0 for r in alone), together.output
    assert together.output == "".join(r.output for r in alone)
    assert all(r.output.startswith(text) and len(r.output) > len(text) + 1 for r, text in zip(alone, TEXTS))
