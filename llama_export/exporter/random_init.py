"""Random weights for a named size: RandomCheckpoint and the generator behind it (uniform_init).

Each tensor is drawn from its own seed (the checkpoint's seed and the tensor's name), so streaming one tensor
gives the same values as building the whole model; norm weights are ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..config import ModelArgs
from .checkpoints import Buffers, Checkpoint, expected_shapes

INIT_STD = 0.02
RANDOM_CHUNK = 1 << 22  # values per independently seeded stream of a random tensor
CACHE_STEP = 1 << 18  # values converted at a time within a chunk (1 MB of fp32: fits in L2)


def uniform_init(shape: tuple[int, ...], seed: int, std: float = INIT_STD,
                 dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """Values uniform on 2^16 evenly spaced points in [-√3·std, √3·std): the std of N(0, std), like
    nn.Linear's own (uniform) init.

    Why 16-bit draws: random init is what a 7B export benchmark spends its CPU on (6.7 G values). Each value
    is one int16 from SFC64's raw output times √3·std/2^15 (one numpy multiply into fp32), several times
    the rate of numpy's float32 `random` (PCG64) scaled and rounded, which was the export's largest CPU cost
    once its writes bypassed the page cache (docs/BENCHMARKS.md, "Export memory and time"). 2^16 levels is
    finer than fp16's own spacing over most of the range. Each RANDOM_CHUNK-sized piece has its own stream
    (SFC64 seeded with [seed, chunk]), so pieces fill in parallel and the values do not depend on the number of
    threads.
    Other dtypes get the fp32 values rounded, piece by piece (the same values as converting the fp32 tensor).
    `out`: a flat contiguous `dtype` buffer of at least that many values to draw into (the result is a view).
    """
    n = math.prod(shape)
    out = torch.empty(n, dtype=dtype) if out is None else out[:n]
    direct = out.numpy() if dtype == torch.float32 else None
    step = np.float32(math.sqrt(3.0) * std / 32768)

    def fill(chunk: int) -> None:
        stream = np.random.SFC64([seed, chunk])
        # Cache-sized steps through the chunk (the same stream, so the same values): faster than whole chunks,
        # whose intermediates spill out of L2.
        for lo in range(chunk * RANDOM_CHUNK, min(n, (chunk + 1) * RANDOM_CHUNK), CACHE_STEP):
            hi = min(n, lo + CACHE_STEP)
            bits = stream.random_raw(-(-(hi - lo) // 4)).view(np.int16)[: hi - lo]
            piece = direct[lo:hi] if direct is not None else _scratch(hi - lo)
            np.multiply(bits, step, out=piece)  # numpy and torch release the GIL: pieces run in parallel
            if direct is None:
                out[lo:hi].copy_(torch.from_numpy(piece))

    chunks = range(-(-n // RANDOM_CHUNK))
    if len(chunks) == 1:
        fill(0)
    else:
        with ThreadPoolExecutor(min(len(chunks), os.cpu_count() or 1)) as pool:
            list(pool.map(fill, chunks))
    return out.view(shape)


_SCRATCH = threading.local()


def _scratch(size: int) -> np.ndarray:
    """A per-thread fp32 buffer reused across pieces (a fresh one per piece would page-fault every time)."""
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = _SCRATCH.buffer = np.empty(CACHE_STEP, dtype=np.float32)
    return buffer[:size]


class RandomCheckpoint(Checkpoint):
    def __init__(self, args: ModelArgs, seed: int = 0):
        self.args, self.seed = args, seed
        self.description = f"random-init seed={seed}"

    def tensor(self, name: str, dtype: torch.dtype = torch.float32, buffers: Buffers | None = None) -> torch.Tensor:
        shape = expected_shapes(self.args)[name]
        if len(shape) == 1:  # norm weights
            return torch.ones(shape, dtype=dtype)
        out = buffers(math.prod(shape), dtype) if buffers is not None else None
        return uniform_init(shape, self.seed * 1_000_003 + zlib.crc32(name.encode()), dtype=dtype, out=out)

    def iter_tensors(self, dtype: torch.dtype | None = None,
                     buffers: Buffers | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names():
            yield name, self.tensor(name, dtype or torch.float32, buffers)

    def source(self) -> dict:
        from ..config import size_name

        return {"format": "random", "size": size_name(self.args), "seed": self.seed}  # the shape itself is the manifest's args

    def fingerprint(self) -> str:
        # "init" names the generator: the same seed under another generator is other weights.
        payload = json.dumps({"random_init": self.seed, "init": "uniform_init/sfc64-int16", "args": self.args.to_dict()},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


__all__ = ["INIT_STD", "RANDOM_CHUNK", "RandomCheckpoint", "uniform_init"]
