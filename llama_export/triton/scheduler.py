"""In-flight batching for the generation front end: requests join and leave the running batch between steps.

Pure Python (no Triton import), so the front end vendors it and tests drive it without a server. The front end
turns each request into a `Job` whose callbacks send responses; `InFlightScheduler.submit()` queues it and
returns at once, and one scheduler thread runs the batched KV loop (validate/batching.py). `run()` drives the
same loop synchronously: the unary sibling (one execute call's requests) and the serial mode use it.

Each iteration, at a step boundary: drop cancelled jobs; take the queued jobs that fit, in arrival order, and
prefill them together in ONE runner call (BatchedGeneration.join_many); then one decode step for every row.
Limits: `max_batch` rows; `max_tokens` reserved KV tokens (prompt + max_new_tokens per job, capped by the
context) over the running and joining jobs; `max_prefill_tokens` padded tokens in one prefill call (joiners x
longest joining prompt; the repository's setting, by default the longest prompt the front end accepts). Any
call fits an engine's prefill profile: at most max_batch rows, no prompt longer than the profile's input. The
first job in the queue goes alone if it is longer than the budget. What does not fit waits in the queue
(arrival order: a long job is never overtaken for ever by short ones); a job that could never fit is refused
at submit.

Why prefill first (time to first token before the next decode step), bounded to one call per step boundary:
a burst of joiners waits for one call, not for a queue of batch-1 prefills (the last of eight used to wait for
seven prefills before its own), and the call reads the weights once for all of them: where a prefill is bound by
reading weights (short prompts, GPUs) the call costs little more than one prefill; where it is bound by compute
(CPUs) it costs about the sum of theirs, so the last joiner gains little and the first ones wait for the whole
call (time-to-first-token p99 vs p50; `max_prefill_tokens` sets the trade). Bounding it to one call of at most
`max_prefill_tokens` between two decode steps keeps the running rows from starving: their inter-token gap grows
by at most one such prefill (by default as long as the longest prompt, which a single request may always cost),
and joiners beyond the budget wait one decode step, then go. Mixing prefill and decode rows in one
call (chunked prefill) does not fit this graph: one call has one sequence length for all rows (decode rows would
be padded to the prompt's length), and an engine's prefill and decode profiles are separate shapes (past 0 vs
seq 1).

A failed prefill call is retried one job at a time, so a request that breaks the runner fails alone.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..validate.batching import BatchedGeneration, Sequence, Update
from .streaming import TextStreamer


class RequestError(ValueError):
    """A request the client got wrong (or one that can never fit); its message goes back as the error."""


class Metrics:
    """What the scheduler reports; the front end's subclass forwards to Triton custom metrics. No-op here."""

    def queued(self, length: int) -> None: ...

    def running(self, batch_size: int) -> None: ...

    def generated(self, tokens: int) -> None: ...

    def first_token(self, seconds: float) -> None: ...


@dataclass(eq=False)
class Job:
    """One request: its sequence, text streamer and the callbacks that answer the client.

    respond(text, token_ids, final) sends one response; fail(message) ends the request with an error;
    cancelled() says whether the client went away. stream=False sends everything in one final response."""

    sequence: Sequence
    streamer: TextStreamer
    respond: Callable[[str, list[int], bool], None]
    fail: Callable[[str], None]
    cancelled: Callable[[], bool] = lambda: False
    stream: bool = True
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    _pending_text: list[str] = field(default_factory=list)
    _pending_ids: list[int] = field(default_factory=list)

    @property
    def reserved_tokens(self) -> int:
        """KV tokens this job may hold at most: its prompt plus every token it may generate."""
        total = len(self.sequence.prompt_ids) + self.sequence.max_new_tokens
        limit = self.sequence.max_length
        return total if limit is None else min(total, limit)


class InFlightScheduler:
    def __init__(self, runner, max_batch: int, max_tokens: int, metrics: Metrics | None = None,
                 max_prefill_tokens: int | None = None):
        self.batch = BatchedGeneration(runner)
        self.max_batch, self.max_tokens, self.max_prefill_tokens = max_batch, max_tokens, max_prefill_tokens
        self.metrics = _Changes(metrics or Metrics())
        self.jobs: dict[int, Job] = {}  # id(sequence) -> its job, for the rows of the batch
        self.queue: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- submission (any thread) ------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job for the scheduler thread (started on first use)."""
        self.check_fits(job)
        with self._wake:
            if self._stopping:
                raise RequestError("the model is shutting down")
            self.queue.append(job)
            self.metrics.queued(len(self.queue))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="in-flight-scheduler", daemon=True)
                self._thread.start()
            self._wake.notify()

    def check_fits(self, job: Job) -> None:
        if job.reserved_tokens > self.max_tokens:
            raise RequestError(f"the request needs up to {job.reserved_tokens} tokens (prompt + max_new_tokens) "
                               f"but this model holds at most {self.max_tokens} tokens in flight; "
                               "lower max_new_tokens or shorten the prompt")

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the thread after the current step; fail every job still queued or running."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        for job in [*self.queue, *self.jobs.values()]:
            _safe(job.fail, "the model is shutting down")
        self.queue.clear()
        self.jobs.clear()

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self, jobs: list[Job]) -> None:
        """Run `jobs` to the end on the calling thread (unary and serial modes)."""
        for job in jobs:
            try:
                self.check_fits(job)
                self.queue.append(job)
            except RequestError as exc:
                _safe(job.fail, str(exc))
        while self.queue or self.batch.rows:
            self._iterate()

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self.queue or self.batch.rows):
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                self._iterate()
            except Exception as exc:  # noqa: BLE001 - a bug here must fail the batch, not leave clients hanging
                for job in list(self.jobs.values()):
                    _safe(job.fail, f"{type(exc).__name__}: {exc}")
                    self._leave(job)

    def _iterate(self) -> None:
        """Drop cancelled jobs, prefill the queued ones that fit in one call, then one decode step for the batch."""
        for job in [j for j in self.jobs.values() if _safe(j.cancelled)]:
            self._cancel(job)
        self._admit(self._joining())
        self.metrics.running(self.batch.batch_size)
        if not self.batch.rows:
            return
        try:
            updates = self.batch.step()
        except Exception as exc:  # noqa: BLE001 - a failed step takes down the batch, never the thread
            for job in list(self.jobs.values()):
                _safe(job.fail, f"{type(exc).__name__}: {exc}")
                self._leave(job)
            self.metrics.running(0)
            return
        # Metrics before the responses: a client that reads the metrics endpoint once its final response came
        # must see its tokens counted and its row gone (rows that finished in this step have left already).
        self.metrics.generated(sum(update.token is not None for update in updates))
        self.metrics.running(self.batch.batch_size)
        for update in updates:
            self._deliver_or_fail(self.jobs[id(update.sequence)], update)
        self.metrics.running(self.batch.batch_size)  # rows a stop string or a gone client ended

    def _joining(self) -> list[Job]:
        """Take from the queue, in order, the jobs of the next prefill call (see the module docstring)."""
        group, cancelled = [], []
        with self._wake:
            while self.queue:
                job = self.queue[0]
                if _safe(job.cancelled):
                    cancelled.append(self.queue.popleft())
                    continue
                if not self._fits(job, group):
                    break
                group.append(self.queue.popleft())
            self.metrics.queued(len(self.queue))
        for job in cancelled:
            self._cancel(job)
        return group

    def _fits(self, job: Job, group: list[Job]) -> bool:
        """Whether `job` can join with `group` (already joining) in this prefill call."""
        rows = self.batch.batch_size + len(group) + 1
        tokens = sum(j.reserved_tokens for j in (*self.jobs.values(), *group, job))
        width = max(len(j.sequence.prompt_ids) for j in (*group, job))
        budget = self.max_prefill_tokens
        prefill_fits = not group or budget is None or (len(group) + 1) * width <= budget
        return rows <= self.max_batch and tokens <= self.max_tokens and prefill_fits

    def _admit(self, group: list[Job]) -> None:
        if not group:
            return
        try:
            updates = self.batch.join_many([job.sequence for job in group])
        except Exception as exc:  # noqa: BLE001 - a prefill failed: retry alone, so only the culprit fails
            if len(group) > 1:
                for job in group:
                    self._admit([job])
            else:
                _safe(group[0].fail, f"{type(exc).__name__}: {exc}")
            return
        for job, update in zip(group, updates):
            if not job.sequence.finished:
                self.jobs[id(job.sequence)] = job
            self._deliver_or_fail(job, update)

    def _cancel(self, job: Job) -> None:
        """The client went away: end its request (Triton still wants a final response) and free its row."""
        self._leave(job)
        _safe(job.fail, "the request was cancelled")

    def _leave(self, job: Job) -> None:
        self.batch.cancel(job.sequence)
        self.jobs.pop(id(job.sequence), None)

    def _deliver_or_fail(self, job: Job, update: Update) -> None:
        try:
            self._deliver(job, update)
        except Exception as exc:  # noqa: BLE001 - e.g. a token the tokenizer cannot decode: this job fails alone
            self._leave(job)
            _safe(job.fail, f"{type(exc).__name__}: {exc}")

    def _deliver(self, job: Job, update: Update) -> None:
        """Stream the new text (or hold it for the final response); finish the job when its sequence ended."""
        if update.token is not None:
            if job.first_token_at is None:  # the token chosen from its prefill: counted here, not per step
                job.first_token_at = time.perf_counter()
                self.metrics.first_token(job.first_token_at - job.submitted)
                self.metrics.generated(1)
            text = job.streamer.push(update.token)
            if job.streamer.stopped:  # a stop string: the sequence ends here
                self._leave(job)
            if not self._send(job, text, [update.token], final=False):
                return
        if job.sequence.finished or job.streamer.stopped:
            self.jobs.pop(id(job.sequence), None)
            self._send(job, job.streamer.finish(), [], final=True)

    def _send(self, job: Job, text: str, ids: list[int], final: bool) -> bool:
        if not job.stream:
            job._pending_text.append(text)
            job._pending_ids += ids
            if not final:
                return True
            text, ids = "".join(job._pending_text), job._pending_ids
        elif not (text or ids or final):
            return True
        try:
            job.respond(text, ids, final)
            return True
        except Exception:  # noqa: BLE001 - the client is gone: drop it, keep the batch going
            self._leave(job)
            return False


class _Changes:
    """Forwards to the front end's metrics only what changed: each Triton metric update is a message from the
    backend stub to the server, and a step with 16 rows would otherwise send dozens."""

    def __init__(self, metrics: Metrics):
        self.metrics, self.last = metrics, {}

    def queued(self, length: int) -> None:
        self._gauge("queued", length)

    def running(self, batch_size: int) -> None:
        self._gauge("running", batch_size)

    def generated(self, tokens: int) -> None:
        if tokens:
            self.metrics.generated(tokens)

    def first_token(self, seconds: float) -> None:
        self.metrics.first_token(seconds)

    def _gauge(self, name: str, value: int) -> None:
        if self.last.get(name) != value:
            self.last[name] = value
            getattr(self.metrics, name)(value)


def _safe(call, *args):
    """Run a client callback; a client that went away must not stop the scheduler."""
    try:
        return call(*args)
    except Exception:  # noqa: BLE001
        return None


__all__ = ["InFlightScheduler", "Job", "Metrics", "RequestError"]
