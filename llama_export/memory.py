"""Memory planning: what each stage will need at its peak, against what this machine (or cgroup) allows.

A stage that does not fit is skipped or refused up front, in one line naming the need, the limit and the way
out, instead of being killed by the kernel's OOM killer an hour in. The needs are host-memory peaks (anonymous
memory, which is what the OOM killer counts; mmapped weight files are page cache and can be evicted) computed
from the model's size with factors measured on this project's machines; docs/BENCHMARKS.md ("Memory planning")
lists each measurement behind them.

The limit is the smallest of: LLAMA_EXPORT_MEMORY_LIMIT (bytes, or with a K/M/G/T suffix: for tests and for
users who want to leave room for other work), the headroom of this process's memory cgroup and its ancestors
(v2: memory.max − memory.current; v1: memory.limit_in_bytes − memory.usage_in_bytes; in both, the cgroup's file
page cache counts as free, since the kernel reclaims it before it OOM-kills), and /proc/meminfo's MemAvailable.
"""

from __future__ import annotations

import ctypes
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
# TensorRT-RTX 1.7 builder on CPU, both profiles: peak RssAnon ≈ ENGINE_BASE + factor × the ONNX weight bytes, a
# line through `small` fp16 (1.19 GB for 0.25 GB) and 2-layer 7B fp16 (4.11 GB for 1.33 GB); docs/ENGINES.md
# "Builder host memory" (no option that runs on CPU lowers it by more than a fifth). Full TensorRT: not
# installable here, assumed the same.
ENGINE_BASE = 0.5 * GB
ENGINE_WEIGHT_FACTOR = {"tensorrt-rtx": 2.7, "tensorrt": 2.7}
WHOLE_VALIDATION_FP32_FACTOR = 1.17  # whole-model validation peak / fp32 weight bytes (one side at a time)
# Layer-major validation: one block of every side at once (fp32 reference + candidate-dtype noise model + the
# ORT piece, which casts fp16 weights to fp32 on CPU) and, before and after the blocks, the embedding / output
# matrices in fp32 (+ the candidate dtype).
STREAMED_BLOCK_FACTOR = 1.7  # × one block's fp32 weight bytes (measured 1.28 for 7B shapes, 1.58 for llama2-70b)
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
    """The smallest limit − usage over this process's memory cgroup and its ancestors: cgroup v2 (memory.max,
    memory.current) or v1 (memory.limit_in_bytes, memory.usage_in_bytes; "unlimited" is a huge number there).
    Usage leaves out the cgroup's file page cache (memory.stat): hashing a 13 GB export fills a 4 GB cgroup with
    cache that the kernel reclaims on demand, and counting it as used refused validation for want of memory."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1 = next((line.split(":", 2)[2] for line in lines if line.split(":")[1:2] == ["memory"]), None)
    if v1 is not None:
        root, files = Path("/sys/fs/cgroup/memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes")
        cache_keys, path = ("total_active_file", "total_inactive_file"), v1
    else:
        root, files = Path("/sys/fs/cgroup"), ("memory.max", "memory.current")
        cache_keys = ("active_file", "inactive_file")
        path = next((line.split("::", 1)[1] for line in lines if line.startswith("0::")), None)
        if path is None:
            return None
    best = None
    folder = root / path.lstrip("/")
    while True:
        try:
            maximum, current = ((folder / name).read_text().strip() for name in files)
            maximum, current = (None if maximum == "max" else int(maximum)), int(current)
        except (OSError, ValueError):
            maximum = None
        if maximum is not None and maximum < 1 << 60:
            in_use = max(0, current - _file_cache(folder / "memory.stat", cache_keys))
            headroom = maximum - in_use
            if best is None or headroom < best[0]:
                best = (headroom, f"cgroup {folder.name} limit {maximum / GB:.1f} GB, {in_use / GB:.1f} GB in use")
        if folder == root or folder.parent == folder:
            return best
        folder = folder.parent


def _file_cache(stat: Path, keys: tuple[str, ...]) -> int:
    """Bytes of file page cache charged to a cgroup (the LRU file lists; tmpfs/shmem pages are on the anon lists)."""
    try:
        fields = dict(line.split() for line in stat.read_text().splitlines() if line.count(" ") == 1)
        return sum(int(fields.get(key, 0)) for key in keys)
    except (OSError, ValueError):
        return 0


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


_WEIGHT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8-wo": 1, "int8": 1, "int4-wo": 0.5}


def estimated_weight_bytes(args: ModelArgs, precision: str) -> int:
    """The exported weights' size before the export exists: quantized precisions quantize the blocks' matrices;
    the embedding and output matrices stay in the float dtype (2 bytes assumed)."""
    tables = (1 if args.tie_embeddings else 2) * args.vocab_size * args.dim
    if precision in ("fp32", "fp16", "bf16"):
        return int(_WEIGHT_BYTES[precision] * args.n_params)
    return int(_WEIGHT_BYTES.get(precision, 2) * (args.n_params - tables) + 2 * tables)


def export_need(args: ModelArgs) -> Need:
    largest = 4 * args.vocab_size * args.dim
    return Need("the export", int(RUNTIME_BASE * 2 + EXPORT_LARGEST_TENSOR_COPIES * largest),
                f"graph + 2 processes + {EXPORT_LARGEST_TENSOR_COPIES}× the largest tensor {_gb(largest)}")


def engine_need(weight_bytes: int, builder: str) -> Need:
    factor = ENGINE_WEIGHT_FACTOR.get(builder, max(ENGINE_WEIGHT_FACTOR.values()))
    return Need(f"the {builder} engine build", int(ENGINE_BASE + factor * weight_bytes),
                f"{ENGINE_BASE / GB:.1f} GB + {factor}× the {_gb(weight_bytes)} of weights, measured")


def whole_validation_need(args: ModelArgs) -> Need:
    fp32 = 4 * args.n_params
    return Need("whole-model validation", int(RUNTIME_BASE + WHOLE_VALIDATION_FP32_FACTOR * fp32),
                f"{WHOLE_VALIDATION_FP32_FACTOR}× the fp32 weights {_gb(fp32)}")


def streamed_validation_need(args: ModelArgs) -> Need:
    block = 4 * (args.n_params - (1 if args.tie_embeddings else 2) * args.vocab_size * args.dim) // args.n_layers
    table = 4 * args.vocab_size * args.dim
    peak = max(STREAMED_BLOCK_FACTOR * block, STREAMED_TABLE_FACTOR * table)
    return Need("layer-major validation", int(RUNTIME_BASE + peak),
                f"one block {_gb(block)} × {STREAMED_BLOCK_FACTOR} or the output matrix {_gb(table)} × "
                f"{STREAMED_TABLE_FACTOR}, fp32")


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere). Torch frees a
    CPU tensor to malloc, and glibc keeps freed chunks below its mmap threshold (which grows to 32 MB as large
    chunks are freed) in the heap, where fragments pin whole pages: a long loop of mid-size temporaries, such
    as AWQ's per-layer search, otherwise grows RssAnon from one iteration to the next (measured after each of
    four 7B-shape AWQ layers: 1.06, 1.28, 1.64, 2.07 GB without this call, 0.528 to 0.531 GB with it)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


__all__ = ["LIMIT_ENV", "Limit", "Need", "engine_need", "estimated_weight_bytes", "export_need", "memory_limit", "parse_size",
           "release_free_heap", "streamed_validation_need", "whole_validation_need"]
