"""The front end's in-flight scheduler without a server: the real ORT runner on the tiny export, jobs submitted
from client threads, every job's tokens equal to its batch-1 generation; waiting jobs prefilled together within
the limits, queueing, cancellation, a client that disappears and a request that breaks the runner."""

from __future__ import annotations

import itertools
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from llama_export import io_spec
from llama_export.exporter.artifacts import load_manifest
from llama_export.triton.scheduler import InFlightScheduler, Job, Metrics, RequestError
from llama_export.triton.streaming import TextStreamer
from llama_export.validate.batching import Sequence
from llama_export.validate.generation import generate_tokens
from llama_export.validate.runners import OrtRunner

PROMPTS = ["The for statement", "x = [", "Dictionaries are sometimes found in other languages", "def", "import os"]


class Recorder(Metrics):
    def __init__(self):
        self.queue, self.batch, self.tokens, self.ttft = [], [], 0, []

    def queued(self, length):
        self.queue.append(length)

    def running(self, batch_size):
        self.batch.append(batch_size)

    def generated(self, tokens):
        self.tokens += tokens

    def first_token(self, seconds):
        self.ttft.append(seconds)


class Client:
    """One request's receiving end: every response, the error, and a flag when the final one arrived."""

    def __init__(self, sequence, tokenizer, stream=True, cancel_after=None, vanish_after=None):
        self.sequence, self.pieces, self.error, self.done = sequence, [], None, threading.Event()
        self.cancel_after, self.vanish_after = cancel_after, vanish_after
        self.job = Job(sequence, TextStreamer(tokenizer.decode, sequence.prompt_ids), self.respond, self.fail,
                       self.cancelled, stream=stream)

    def respond(self, text, ids, final):
        if self.vanish_after is not None and len(self.ids) >= self.vanish_after:
            raise ConnectionError("client gone")
        self.pieces.append((text, ids, final))
        if final:
            self.done.set()

    def fail(self, message):
        self.error = message
        self.done.set()

    def cancelled(self):
        return self.cancel_after is not None and len(self.ids) >= self.cancel_after

    @property
    def ids(self):
        return [t for _, ids, _ in self.pieces for t in ids]


class CallLog:
    """The real runner, logging each call as ("prefill" | "decode", rows, tokens per row)."""

    def __init__(self, runner):
        self.runner, self.name, self.args, self.kv_dtype = runner, runner.name, runner.args, runner.kv_dtype
        self.calls: list[tuple[str, int, int]] = []

    def run(self, feeds):
        rows, tokens = feeds[io_spec.INPUT_IDS].shape
        kind = "prefill" if feeds[io_spec.past_key(0)].shape[2] == 0 else "decode"
        self.calls.append((kind, rows, tokens))
        return self.runner.run(feeds)

    def prefills(self):
        return [(rows, tokens) for kind, rows, tokens in self.calls if kind == "prefill"]


@pytest.fixture(scope="module")
def setup(tiny_dir):
    built = load_manifest(tiny_dir)
    tokenizer = built.tokenizer()
    runner = OrtRunner(built.model_path, built.args)
    return runner, tokenizer, built.args.max_seq_len


def _sequence(tokenizer, max_seq, i, max_new):
    return Sequence(tokenizer.encode(f"{PROMPTS[i % len(PROMPTS)]} {i}"), max_new,
                    stop_ids=tokenizer.stop_ids, max_length=max_seq)


def _reference(runner, sequence):
    return list(generate_tokens(runner, sequence.prompt_ids, sequence.max_new_tokens, sequence.sampling,
                                sequence.stop_ids, sequence.max_length))


def test_jobs_from_many_threads_equal_batch_1(setup):
    runner, tokenizer, max_seq = setup
    rng = random.Random(0)
    clients = [Client(_sequence(tokenizer, max_seq, i, rng.randint(1, 20)), tokenizer, stream=i % 3 != 0)
               for i in range(12)]
    metrics = Recorder()
    scheduler = InFlightScheduler(runner, max_batch=4, max_tokens=10_000, metrics=metrics)
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda c: scheduler.submit(c.job), clients))
        for client in clients:
            assert client.done.wait(60), "every job ends with a final response"
    finally:
        scheduler.shutdown()
    for client in clients:
        assert client.error is None
        assert client.ids == _reference(runner, client.sequence)
        assert [final for *_, final in client.pieces].count(True) == 1 and client.pieces[-1][2]
        if not client.job.stream:
            assert len(client.pieces) == 1, "stream=False answers with one response"
        text = "".join(t for t, _, _ in client.pieces)
        assert text == tokenizer.decode(client.sequence.prompt_ids + client.ids)[
            len(tokenizer.decode(client.sequence.prompt_ids)):]
    assert max(metrics.batch) == 4 and max(metrics.queue) > 0, "more jobs than rows: a queue, a full batch"
    assert metrics.tokens == sum(len(c.ids) for c in clients) and len(metrics.ttft) == len(clients)


def test_token_limit_queues_and_refuses_what_never_fits(setup):
    runner, tokenizer, max_seq = setup
    sequences = [_sequence(tokenizer, max_seq, i, 8) for i in (0, 5, 10)]  # the same prompt, numbered
    budget = max(len(s.prompt_ids) + 8 for s in sequences) + 2
    assert 2 * min(len(s.prompt_ids) + 8 for s in sequences) > budget  # room for one job at a time
    metrics = Recorder()
    scheduler = InFlightScheduler(runner, max_batch=8, max_tokens=budget, metrics=metrics)
    too_big = Client(_sequence(tokenizer, max_seq, 0, budget), tokenizer)
    with pytest.raises(RequestError, match="tokens in flight"):
        scheduler.submit(too_big.job)
    clients = [Client(s, tokenizer) for s in sequences]
    scheduler.run([c.job for c in clients])
    assert all(c.ids == _reference(runner, c.sequence) for c in clients)
    assert max(metrics.batch) == 1, "the token budget admits one job at a time"


def test_cancelled_and_vanished_clients_leave_while_others_finish(setup):
    runner, tokenizer, max_seq = setup
    steady = Client(_sequence(tokenizer, max_seq, 0, 16), tokenizer)
    cancelling = Client(_sequence(tokenizer, max_seq, 1, 16), tokenizer, cancel_after=3)
    vanishing = Client(_sequence(tokenizer, max_seq, 2, 16), tokenizer, vanish_after=2)
    scheduler = InFlightScheduler(runner, max_batch=4, max_tokens=10_000)
    for client in (steady, cancelling, vanishing):
        scheduler.submit(client.job)
    try:
        assert steady.done.wait(60) and cancelling.done.wait(60)
    finally:
        scheduler.shutdown()
    assert steady.ids == _reference(runner, steady.sequence) and steady.error is None
    assert cancelling.error == "the request was cancelled" and 3 <= len(cancelling.ids) < 16
    assert cancelling.sequence.finish_reason == "cancelled"
    assert len(vanishing.ids) == 2 and vanishing.sequence.finished
    assert scheduler.batch.rows == [] and scheduler.jobs == {}


def test_a_job_whose_text_cannot_be_decoded_fails_alone(setup):
    runner, tokenizer, max_seq = setup
    steady = Client(_sequence(tokenizer, max_seq, 0, 12), tokenizer)
    broken = Client(_sequence(tokenizer, max_seq, 1, 12), tokenizer)
    prompt_len = len(broken.sequence.prompt_ids)

    def decode(ids):
        if len(ids) > prompt_len + 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "stand-in for a broken tokenizer")
        return tokenizer.decode(ids)

    broken.job.streamer = TextStreamer(decode, broken.sequence.prompt_ids)
    scheduler = InFlightScheduler(runner, max_batch=4, max_tokens=10_000)
    for client in (steady, broken):
        scheduler.submit(client.job)
    try:
        assert steady.done.wait(60) and broken.done.wait(60)
    finally:
        scheduler.shutdown()
    assert "UnicodeDecodeError" in broken.error and len(broken.ids) == 3
    assert steady.error is None and steady.ids == _reference(runner, steady.sequence)


def test_waiting_jobs_are_prefilled_together_within_the_limits(setup):
    runner, tokenizer, max_seq = setup
    rng = random.Random(1)
    sequences = [_sequence(tokenizer, max_seq, i, rng.randint(2, 9)) for i in range(9)]
    budget = 2 * max(len(s.prompt_ids) for s in sequences)  # at least two per prefill, and not all four rows
    long_prompt = tokenizer.encode(" ".join(PROMPTS * 4))
    assert budget < len(long_prompt) < max_seq - 10
    sequences.insert(4, Sequence(long_prompt, 6, stop_ids=tokenizer.stop_ids, max_length=max_seq))
    clients = [Client(s, tokenizer) for s in sequences]
    log = CallLog(runner)
    scheduler = InFlightScheduler(log, max_batch=4, max_tokens=10_000, max_prefill_tokens=budget)
    scheduler.run([c.job for c in clients])
    for client in clients:
        assert client.error is None and client.ids == _reference(runner, client.sequence)
    prefills = log.prefills()
    assert len(prefills) < len(clients) and max(rows for rows, _ in prefills) > 1, "joiners share a prefill"
    assert all(rows == 1 or rows * tokens <= budget for rows, tokens in prefills), prefills
    assert (1, len(long_prompt)) in prefills, "a prompt longer than the budget is prefilled alone"
    assert max(rows for _, rows, _ in log.calls) <= 4
    kinds = [kind for kind, *_ in log.calls]
    assert ("prefill", "prefill") not in itertools.pairwise(kinds), "a decode step between two prefills"


def test_a_request_that_breaks_the_shared_prefill_fails_alone(setup):
    runner, tokenizer, max_seq = setup
    clients = [Client(_sequence(tokenizer, max_seq, i, 6), tokenizer) for i in range(3)]
    broken = clients[1]
    broken.sequence.prompt_ids = [runner.args.vocab_size + 7]  # an id outside the embedding: the runner raises
    log = CallLog(runner)
    InFlightScheduler(log, max_batch=4, max_tokens=10_000).run([c.job for c in clients])
    assert log.prefills()[:4] == [(3, max(len(c.sequence.prompt_ids) for c in clients)),
                                  *((1, len(c.sequence.prompt_ids)) for c in clients)], "together, then alone"
    assert broken.error and "Gather" in broken.error and broken.ids == []
    for client in (clients[0], clients[2]):
        assert client.error is None and client.ids == _reference(runner, client.sequence)
