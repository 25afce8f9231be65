"""Memory planning: what each stage will need at its peak, against what this machine (or cgroup) allows.

A stage that does not fit is skipped or refused up front, in one line naming the need, the limit and the way
out, instead of being killed by the kernel's OOM killer an hour in. The needs are host-memory peaks (anonymous
memory, which is what the OOM killer counts; mmapped weight files are page cache and can be evicted) computed
from the model's size with factors measured on this project's machines; docs/BENCHMARKS.md ("Memory planning")
lists each measurement behind them.

The limit is the smallest of: LLAMA_EXPORT_MEMORY_LIMIT (bytes, or with a K/M/G/T suffix: for tests and for
users who want to leave room for other work), the headroom of every cgroup v2 ancestor with a memory.max
(memory.max − memory.current), and /proc/meminfo's MemAvailable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .config import ModelArgs
from .errors import UserError

LIMIT_ENV = "LLAMA_EXPORT_MEMORY_LIMIT"
GB = 1e9
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

# Measured factors (docs/BENCHMARKS.md, "Memory planning"). Bytes are host anonymous memory at the stage's peak.
RUNTIME_BASE = 0.5 * GB  # torch + onnxruntime (+ the builder's) libraries and the graph, before any weight
EXPORT_LARGEST_TENSOR_COPIES = 2  # the stream keeps two fp32 buffers of the largest tensor (AlternatingBuffers)
ENGINE_WEIGHT_FACTOR = {"tensorrt-rtx": 4.4, "tensorrt": 4.4}  # builder peak / weight bytes of the ONNX file
WHOLE_VALIDATION_FP32_FACTOR = 1.17  # whole-model validation peak / fp32 weight bytes (one side at a time)
# Layer-major validation: one block of every side at once (fp32 reference + candidate-dtype noise model + the
# ORT piece, which casts fp16 weights to fp32 on CPU) and, before and after the blocks, the embedding / output
# matrices in fp32 (+ the candidate dtype).
STREAMED_BLOCK_FACTOR = 2.5  # × one block's fp32 weight bytes
STREAMED_TABLE_FACTOR = 1.5  # × the output matrix's fp32 bytes


@dataclass(frozen=True)
class Limit:
    bytes: int
    source: str  # what set it, for the one-line message

    def __str__(self) -> str:
        return f"{self.bytes / GB:.1f} GB ({self.source})"


@dataclass(frozen=True)
class Need:
    stage: str
    bytes: int
    basis: str  # how it was estimated, for the message

    def fits(self, limit: Limit) -> bool:
        return self.bytes <= limit.bytes

    def shortfall(self, limit: Limit, way_out: str) -> str:
        return (f"{self.stage} needs ~{self.bytes / GB:.1f} GB of memory ({self.basis}) but the limit is {limit}; "
                f"{way_out}")


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise UserError(f"{LIMIT_ENV}={text!r} is not a size; write bytes or e.g. 8G, 512M")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _cgroup_headroom() -> tuple[int, str] | None:
    """The smallest memory.max − memory.current over this process's cgroup v2 and its ancestors."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    path = next((line.split("::", 1)[1] for line in lines if line.startswith("0::")), None)
    if path is None:
        return None
    best = None
    folder = Path("/sys/fs/cgroup") / path.lstrip("/")
    while True:
        try:
            maximum = (folder / "memory.max").read_text().strip()
            current = int((folder / "memory.current").read_text())
        except (OSError, ValueError):
            maximum = "max"
        if maximum != "max":
            headroom = int(maximum) - current
            if best is None or headroom < best[0]:
                source = f"cgroup {folder} memory.max {int(maximum) / GB:.1f} GB, {current / GB:.1f} GB in use"
                best = (headroom, source)
        if folder == Path("/sys/fs/cgroup") or folder.parent == folder:
            return best
        folder = folder.parent


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_limit() -> Limit:
    candidates = []
    if os.environ.get(LIMIT_ENV):
        candidates.append(Limit(parse_size(os.environ[LIMIT_ENV]), LIMIT_ENV))
    if (headroom := _cgroup_headroom()) is not None:
        candidates.append(Limit(*headroom))
    if (available := _mem_available()) is not None:
        candidates.append(Limit(available, "MemAvailable"))
    return min(candidates, key=lambda limit: limit.bytes) if candidates else Limit(1 << 62, "unknown")


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def export_need(args: ModelArgs) -> Need:
    largest = 4 * args.vocab_size * args.dim
    return Need("the export", int(RUNTIME_BASE * 2 + EXPORT_LARGEST_TENSOR_COPIES * largest),
                f"graph + 2 processes + {EXPORT_LARGEST_TENSOR_COPIES}× the largest tensor {_gb(largest)}")


def engine_need(weight_bytes: int, builder: str) -> Need:
    factor = ENGINE_WEIGHT_FACTOR.get(builder, max(ENGINE_WEIGHT_FACTOR.values()))
    return Need(f"the {builder} engine build", int(RUNTIME_BASE + factor * weight_bytes),
                f"{factor}× the {_gb(weight_bytes)} of weights, measured")


def whole_validation_need(args: ModelArgs) -> Need:
    fp32 = 4 * args.n_params
    return Need("whole-model validation", int(RUNTIME_BASE + WHOLE_VALIDATION_FP32_FACTOR * fp32),
                f"{WHOLE_VALIDATION_FP32_FACTOR}× the fp32 weights {_gb(fp32)}")


def streamed_validation_need(args: ModelArgs) -> Need:
    block = 4 * (args.n_params - 2 * args.vocab_size * args.dim) // args.n_layers
    table = 4 * args.vocab_size * args.dim
    peak = max(STREAMED_BLOCK_FACTOR * block, STREAMED_TABLE_FACTOR * table)
    return Need("layer-major validation", int(RUNTIME_BASE + peak),
                f"one block {_gb(block)} × {STREAMED_BLOCK_FACTOR} or the output matrix {_gb(table)} × "
                f"{STREAMED_TABLE_FACTOR}, fp32")


__all__ = ["LIMIT_ENV", "Limit", "Need", "engine_need", "export_need", "memory_limit", "parse_size",
           "streamed_validation_need", "whole_validation_need"]
