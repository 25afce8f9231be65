"""Weights → `model.onnx.data`, one tensor at a time, overlapped with tracing.

The data file does not depend on the graph (tensor names, shapes and order come from the checkpoint), so it is
written in the background (a thread, or for big models a child process: stream_process.py) while the main
thread traces and rewrites the graph (its weights are PendingWeight placeholders until then): wall time is
max(trace + passes, read + write) rather than their sum.
Within the stream, preparing tensor i+1 overlaps writing tensor i and hashing it (three threads; torch
kernels, file writes and hashlib release the GIL). At most two converted tensors are alive at once, so memory is
bounded by the largest tensor, not the model. The bytes are hashed on the way out (artifacts.remember_sha256),
so the manifest never reads the data file back. The file is written around the page cache (datafile.py), from
page-aligned buffers. At the end, `attach` points each initializer at its bytes.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch

from ..pending_weights import is_meta
from .artifacts import remember_sha256
from .checkpoints import Checkpoint, check_finite, check_float, expected_shapes
from .datafile import ALIGN, DataFile, aligned_empty

IR_DTYPES = {torch.float32: ir.DataType.FLOAT, torch.float16: ir.DataType.FLOAT16,
             torch.bfloat16: ir.DataType.BFLOAT16, torch.int8: ir.DataType.INT8, torch.int4: ir.DataType.INT4}
# A transform maps one checkpoint tensor to the tensors the graph holds for it (graphs.quantize.WeightTransform:
# a linear weight becomes an int8 weight and its scales). Default: the tensor cast to the model dtype.
Transform = Callable[[str, torch.Tensor], list[tuple[str, torch.Tensor]]]


@dataclass(frozen=True)
class Placement:
    offset: int
    length: int
    shape: tuple[int, ...]
    dtype: torch.dtype | None = None  # None: the model dtype


class Interrupted(Exception):
    """The stream was told to stop (the export failed or was interrupted elsewhere)."""


def stream_weights(checkpoint: Checkpoint, dtype: torch.dtype, path: Path, stop: threading.Event,
                   progress: Callable[[str], None] | None = None,
                   transform: Transform | None = None) -> tuple[dict[str, Placement], str]:
    """Write every checkpoint tensor, converted to `dtype` (or by `transform`), to `path` (fsynced).
    Returns where each written tensor lies, and the file's sha256."""
    layout: dict[str, Placement] = {}
    offset = 0
    digest = hashlib.sha256()  # updated by the hash thread only, in file order
    with DataFile(path) as f, ThreadPoolExecutor(1, thread_name_prefix="weights-write") as writer, \
            ThreadPoolExecutor(1, thread_name_prefix="weights-hash") as hasher:
        pending: list[Future] = []
        # Two alternating buffers are enough: tensor i is written and hashed (its jobs awaited) before i+1 is
        # submitted, and i+2 is made while i+1 is in flight. One pair for tensors the checkpoint makes (random
        # init), one for the conversions to `dtype`.
        made, conversions = AlternatingBuffers(), AlternatingBuffers()
        check_values = not checkpoint.allow_nonfinite
        for name, tensor in map(check_float, checkpoint.iter_tensors(None if transform else dtype, made)):
            if stop.is_set():
                raise Interrupted
            outputs = [(name, _convert(tensor, dtype, conversions))] if transform is None else transform(name, tensor)
            del tensor  # the source copy goes before the next one is read
            for job in pending:
                job.result()  # bounded: one tensor in flight (written and hashed) while the next is prepared
            pads = []
            for out_name, converted in outputs:
                pad = -offset % ALIGN  # page-aligned: runtimes mmap each tensor in place, O_DIRECT writes it
                data, shape, out_dtype = _bytes_of(converted)
                nbytes = data.numel() * data.element_size()
                layout[out_name] = Placement(offset + pad, nbytes, shape, out_dtype)
                offset += pad + nbytes
                pads.append(pad)
            chunks = _chunks(pads, outputs)
            # Writing is disk-bound and hashing CPU-bound: separate threads, so one does not wait for the other.
            # (Letting two tensors be in flight, with three buffers, was measured: no gain, the stream is CPU-bound.)
            # The finite check runs in the write thread: it waits on the disk, so the pass over the bytes is free.
            pending = [writer.submit(_write_all, f, chunks, name, progress, outputs if check_values else ()),
                       hasher.submit(_hash_all, digest, chunks)]
            del outputs, chunks
        for job in pending:
            job.result()
    return layout, digest.hexdigest()


class AlternatingBuffers:
    """Two reusable flat buffers handed out in turn, for tensors the stream makes (random init, conversions).

    Why: a fresh tensor page-faults on every 4 KB page, and while the export fills the page cache each fault
    has to reclaim a page first; reusing two buffers removes most faults and the system time they cost
    (docs/BENCHMARKS.md, "Figures behind the code"). Valid only for a consumer that is done with tensor i
    before tensor i+2 is requested (stream_weights). Page-aligned, so DataFile writes them without staging."""

    def __init__(self):
        self.slots: list[torch.Tensor | None] = [None, None]
        self.turn = 0

    def __call__(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        nbytes = numel * dtype.itemsize
        slot, self.turn = self.turn, 1 - self.turn
        if self.slots[slot] is None or self.slots[slot].numel() < nbytes:
            self.slots[slot] = None  # free the smaller one before allocating
            self.slots[slot] = aligned_empty(nbytes)
        return self.slots[slot][:nbytes].view(dtype)


def _convert(tensor: torch.Tensor, dtype: torch.dtype, buffers: AlternatingBuffers) -> torch.Tensor:
    """`tensor` as contiguous `dtype` in page-aligned memory: itself if it already is, else a copy into
    `buffers` (a reused buffer: a fresh tensor per weight would page-fault on every page)."""
    if tensor.dtype == dtype and tensor.is_contiguous() and tensor.data_ptr() % ALIGN == 0:
        return tensor
    out = buffers(tensor.numel(), dtype).view(tensor.shape)
    out.copy_(tensor)
    return out


def _bytes_of(tensor) -> tuple[torch.Tensor, tuple[int, ...], torch.dtype]:
    """(the bytes to write, the logical shape, the dtype the graph declares) of a transform's output."""
    from ..graphs.int4 import PackedInt4

    if isinstance(tensor, PackedInt4):
        return tensor.data, tensor.shape, torch.int4
    return tensor, tuple(tensor.shape), tensor.dtype


def _chunks(pads: list[int], outputs: list[tuple[str, torch.Tensor]]) -> list:
    """The bytes to append, in order, as uint8 arrays: zero padding, then each tensor's raw bytes (views)."""
    chunks = []
    for pad, (_, tensor) in zip(pads, outputs):
        if pad:
            chunks.append(np.zeros(pad, dtype=np.uint8))
        chunks.append(_bytes_of(tensor)[0].reshape(-1).view(torch.uint8).numpy())
    return chunks


_SHORT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}  # as --precision says


def _write_all(f, chunks: list, name: str, progress: Callable[[str], None] | None,
               check: list[tuple[str, torch.Tensor]] | tuple = ()) -> None:
    for out_name, tensor in check:
        if isinstance(tensor, torch.Tensor):  # not PackedInt4: integers (a NaN weight shows in its block's scale)
            check_finite(out_name, tensor, _SHORT_NAMES.get(tensor.dtype, str(tensor.dtype)))
    for chunk in chunks:
        f.write(chunk)
    if progress is not None:
        progress(name)


def _hash_all(digest, chunks: list) -> None:
    for chunk in chunks:
        digest.update(chunk)  # hashlib releases the GIL for large buffers


class WeightStreamer(threading.Thread):
    """stream_weights in a background thread; `result()` joins it and re-raises its error."""

    def __init__(self, checkpoint: Checkpoint, dtype: torch.dtype, path: Path,
                 progress: Callable[[str], None] | None = None, transform: Transform | None = None):
        super().__init__(name="weights-stream", daemon=True)  # daemon: never keeps an interrupted process alive
        self.stop = threading.Event()
        self._job = (checkpoint, dtype, path, progress, transform)
        self._done: tuple[dict[str, Placement], str] | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        checkpoint, dtype, path, progress, transform = self._job
        try:
            self._done = stream_weights(checkpoint, dtype, path, self.stop, progress, transform)
        except BaseException as exc:  # noqa: BLE001 -- handed to the main thread by result()
            self._error = exc

    def result(self) -> dict[str, Placement]:
        self.join()
        if self._error is not None:
            raise self._error
        assert self._done is not None
        layout, sha256 = self._done
        remember_sha256(self._job[2], sha256)
        return layout

    def cancel(self) -> None:
        self.stop.set()
        self.join()


# Below this many weight bytes a thread streams them: starting a process (importing torch) costs more.
PROCESS_MIN_BYTES = 2 << 30


def start_streamer(checkpoint: Checkpoint, dtype: torch.dtype, path: Path,
                   progress: Callable[[str], None] | None = None, transform: Transform | None = None):
    """A started streamer: a child process for big models (stream_process.py says why), a thread for small."""
    n_bytes = sum(math.prod(shape) for shape in expected_shapes(checkpoint.args).values()) * dtype.itemsize
    if n_bytes >= PROCESS_MIN_BYTES:
        from .stream_process import ProcessWeightStreamer

        streamer = ProcessWeightStreamer(checkpoint, dtype, path, progress, transform)
    else:
        streamer = WeightStreamer(checkpoint, dtype, path, progress, transform)
    streamer.start()
    return streamer


def attach(model: ir.Model, layout: dict[str, Placement], dtype: torch.dtype, folder: Path,
           data_file: str) -> None:
    """Point each weight initializer at its bytes in `data_file` (a location relative to the model)."""
    initializers = model.graph.initializers
    weights = {name for name, value in initializers.items() if is_meta(value.const_value)}
    if weights != set(layout):
        missing, extra = sorted(weights - set(layout)), sorted(set(layout) - weights)
        raise RuntimeError(f"graph weights and checkpoint tensors differ: graph-only {missing[:4]}, "
                           f"checkpoint-only {extra[:4]}")
    for name, where in layout.items():
        value = initializers[name]
        if where.shape != tuple(value.shape.numpy()):
            raise RuntimeError(f"{name}: checkpoint shape {where.shape} != graph shape {value.shape}")
        value.const_value = ir.ExternalTensor(data_file, where.offset, where.length, IR_DTYPES[where.dtype or dtype],
                                              shape=ir.Shape(where.shape), name=name, base_dir=folder)


def embed_constants(model: ir.Model) -> None:
    """Tensors the tracer lifted out of forward (the RoPE inverse frequencies) are real, small CPU tensors:
    keep them inside model.onnx as plain numpy-backed initializers."""
    for name, value in model.graph.initializers.items():
        if value.const_value is not None and not is_meta(value.const_value):
            value.const_value = ir.tensor(value.const_value.numpy().copy(), name=name)


__all__ = ["Placement", "WeightStreamer", "attach", "embed_constants", "start_streamer", "stream_weights"]
