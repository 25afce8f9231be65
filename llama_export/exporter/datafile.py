"""An append-only file written around the page cache (O_DIRECT), for the multi-GB external-data file.

Why: a buffered `write()` copies every byte into the page cache in the kernel, and on a machine with few cores
that copy *is* the write's cost, system time that competes with weight generation and hashing for the CPU. With
O_DIRECT the disk DMAs straight from our buffer (docs/BENCHMARKS.md, "Export memory and time": both measured).
The cost: the new file is not in the page cache, so a stage that reads it right after reads it from disk.

O_DIRECT wants the file offset, the length and the memory address of each write aligned (ALIGN = 4096 covers
every block device's logical block size). The exporter lays tensors out at 4096-aligned offsets and makes its
own buffers page-aligned (`aligned_empty`), so tensor bodies go straight to the disk; anything else (tensor
tails, padding, tensors made elsewhere) is copied through a small aligned staging buffer. Where the platform or
filesystem refuses O_DIRECT (no os.O_DIRECT, EINVAL from open or write), the file falls back to plain buffered
writes, with the same bytes.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path
from typing import Self

import numpy as np
import torch

ALIGN = 4096
STAGE = 16 << 20  # staging buffer: bytes that cannot go to the disk straight from where they are
MAX_WRITE = 1 << 30  # Linux writes at most ~2 GiB per call


def aligned_empty(nbytes: int) -> torch.Tensor:
    """A uint8 tensor of nbytes whose data starts on an ALIGN boundary (torch's allocator aligns to 64 B)."""
    raw = torch.empty(nbytes + ALIGN, dtype=torch.uint8)
    start = -raw.data_ptr() % ALIGN
    return raw[start:start + nbytes]


class DataFile:
    """Appends bytes to a new file, bypassing the page cache where it can. Use as a context manager: `close`
    (on success) writes what is staged, trims the alignment padding and fsyncs."""

    def __init__(self, path: Path, direct: bool = True):
        flag = getattr(os, "O_DIRECT", 0) if direct else 0
        base = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(path, base | flag, 0o644)
        except OSError as exc:
            if not flag or exc.errno != errno.EINVAL:
                raise
            flag, self.fd = 0, os.open(path, base, 0o644)  # e.g. an old tmpfs
        self.direct = bool(flag)
        self.size = 0  # bytes appended so far (written or staged)
        self._stage_map = mmap.mmap(-1, STAGE)  # anonymous maps are page-aligned
        self._stage = np.frombuffer(self._stage_map, dtype=np.uint8)
        self._staged = 0

    def write(self, chunk: np.ndarray) -> None:
        """Append a contiguous uint8 array."""
        chunk = chunk.reshape(-1)
        self.size += chunk.size
        if not self.direct:
            self._write(chunk)
            return
        while chunk.size:
            if self._staged % ALIGN == 0 and _aligned(chunk) and chunk.size >= ALIGN:
                self._flush_stage()  # whole blocks only, so the file offset stays aligned
                body = chunk.size - chunk.size % ALIGN
                self._write(chunk[:body])
                chunk = chunk[body:]
            else:
                n = min(chunk.size, STAGE - self._staged)
                self._stage[self._staged:self._staged + n] = chunk[:n]
                self._staged += n
                chunk = chunk[n:]
                if self._staged == STAGE:
                    self._flush_stage()

    def close(self) -> None:
        try:
            if self._staged:
                padded = -(-self._staged // ALIGN) * ALIGN if self.direct else self._staged
                self._stage[self._staged:padded] = 0
                self._write(self._stage[:padded])
                self._staged = 0
            os.ftruncate(self.fd, self.size)  # drop the last block's padding
            os.fsync(self.fd)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close without flushing (the caller is discarding the file)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._stage = None  # the map can only close once no array views it
        self._stage_map.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _flush_stage(self) -> None:
        if self._staged:
            self._write(self._stage[:self._staged])
            self._staged = 0

    def _write(self, data: np.ndarray) -> None:
        view = memoryview(data)
        while len(view):
            try:
                n = os.write(self.fd, view[:MAX_WRITE])
            except OSError as exc:
                if not (self.direct and exc.errno == errno.EINVAL):
                    raise
                self._go_buffered()  # a filesystem that opens O_DIRECT but refuses the write
                continue
            view = view[n:]

    def _go_buffered(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False


def _aligned(chunk: np.ndarray) -> bool:
    return chunk.ctypes.data % ALIGN == 0


__all__ = ["ALIGN", "DataFile", "aligned_empty"]
