"""Weights → `model.onnx.data`, one tensor at a time, overlapped with tracing.

The data file does not depend on the graph (tensor names, shapes and order come from the checkpoint), so it is
written by a background thread while the main thread traces: wall time is max(trace, read + write) rather than
their sum. Within the stream, reading/converting tensor i+1 overlaps writing tensor i (torch kernels and file
writes release the GIL). At most two converted tensors are alive at once, so memory is bounded by the largest
tensor, not the model. The writer hashes the bytes it writes (artifacts.remember_sha256), so the manifest never
reads the data file back. After tracing, `attach` points each graph initializer at its bytes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir
import torch

from .artifacts import remember_sha256
from .checkpoints import Checkpoint

# Offsets are page-aligned so runtimes can mmap each tensor in place.
ALIGNMENT = 4096
IR_DTYPES = {torch.float32: ir.DataType.FLOAT, torch.float16: ir.DataType.FLOAT16,
             torch.bfloat16: ir.DataType.BFLOAT16, torch.int8: ir.DataType.INT8}
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
                   transform: Transform | None = None) -> dict[str, Placement]:
    """Write every checkpoint tensor, converted to `dtype` (or by `transform`), to `path` (fsynced).
    Returns where each written tensor lies."""
    layout: dict[str, Placement] = {}
    offset = 0
    digest = hashlib.sha256()  # updated by the writer thread only, in file order
    with open(path, "wb") as f, ThreadPoolExecutor(1, thread_name_prefix="weights-write") as writer:
        pending: Future | None = None
        for name, tensor in checkpoint.iter_tensors():
            if stop.is_set():
                raise Interrupted
            outputs = [(name, tensor.to(dtype).contiguous())] if transform is None else transform(name, tensor)
            del tensor  # the source copy goes before the next one is read
            if pending is not None:
                pending.result()  # bounded: at most one write in flight while the next tensor is prepared
            pads = []
            for out_name, converted in outputs:
                pad = -offset % ALIGNMENT
                nbytes = converted.numel() * converted.element_size()
                layout[out_name] = Placement(offset + pad, nbytes, tuple(converted.shape), converted.dtype)
                offset += pad + nbytes
                pads.append(pad)
            pending = writer.submit(_write_all, f, digest, pads, outputs, name, progress)
            del outputs
        if pending is not None:
            pending.result()
        f.flush()
        os.fsync(f.fileno())
    remember_sha256(path, digest.hexdigest())
    return layout


def _write_all(f, digest, pads: list[int], outputs: list[tuple[str, torch.Tensor]], name: str,
               progress: Callable[[str], None] | None) -> None:
    for pad, (_, tensor) in zip(pads, outputs):
        if pad:
            f.write(b"\0" * pad)
            digest.update(b"\0" * pad)
        data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        f.write(data)
        digest.update(data)  # hashlib releases the GIL for large buffers
    if progress is not None:
        progress(name)


class WeightStreamer(threading.Thread):
    """stream_weights in a background thread; `result()` joins it and re-raises its error."""

    def __init__(self, checkpoint: Checkpoint, dtype: torch.dtype, path: Path,
                 progress: Callable[[str], None] | None = None, transform: Transform | None = None):
        super().__init__(name="weights-stream", daemon=True)  # daemon: never keeps an interrupted process alive
        self.stop = threading.Event()
        self._job = (checkpoint, dtype, path, progress, transform)
        self._layout: dict[str, Placement] | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        checkpoint, dtype, path, progress, transform = self._job
        try:
            self._layout = stream_weights(checkpoint, dtype, path, self.stop, progress, transform)
        except BaseException as exc:  # noqa: BLE001 -- handed to the main thread by result()
            self._error = exc

    def result(self) -> dict[str, Placement]:
        self.join()
        if self._error is not None:
            raise self._error
        assert self._layout is not None
        return self._layout

    def cancel(self) -> None:
        self.stop.set()
        self.join()


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


def meta_initializer(graph: ir.Graph, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> ir.Value:
    """Declare a weight initializer without data (a meta tensor, like the tracer's); `attach` gives it bytes."""
    tensor = ir.tensor_adapters.TorchTensor(torch.empty(shape, dtype=dtype, device="meta"), name=name)
    value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def is_meta(tensor) -> bool:
    raw = getattr(tensor, "raw", None)
    return isinstance(raw, torch.Tensor) and raw.device.type == "meta"


__all__ = ["ALIGNMENT", "Placement", "WeightStreamer", "attach", "embed_constants", "meta_initializer",
           "stream_weights"]
